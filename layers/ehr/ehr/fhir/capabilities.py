"""What the FHIR API implements, as the CapabilityStatement lists it: derived from the same
search-parameter definitions and interactions the code uses, never restated by hand."""

from __future__ import annotations

from functools import lru_cache

from ehr.fhir.capability import CapabilityRegistry, ResourceCapability, SearchParam
from ehr.fhir.search import definitions
from ehr.fhir.validation import known_resource_types

INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
NOT_SEARCHABLE = tuple(i for i in INTERACTIONS if i != "search-type")  # no search parameters in R4
EVERYTHING = ("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything")
# POST DocumentReference/{id}/$upload-url: a presigned PUT for the declared content (docs/documents.md).
UPLOAD_URL = ("upload-url", "urn:ehr:fhir:OperationDefinition:DocumentReference-upload-url")
# POST Patient/$match: the master patient index, across facilities (docs/sharing.md).
MATCH = ("match", "http://hl7.org/fhir/OperationDefinition/Patient-match")
OPERATIONS = {"Patient": (EVERYTHING, MATCH), "DocumentReference": (UPLOAD_URL,)}
# The audit trail is written by the server only and read by search (ehr.fhir.auditing).
AUDIT_EVENT = ResourceCapability(
    type="AuditEvent",
    interactions=("search-type",),
    search_params=(
        SearchParam("date", "date", "http://hl7.org/fhir/SearchParameter/AuditEvent-date"),
        SearchParam("patient", "reference", "http://hl7.org/fhir/SearchParameter/AuditEvent-patient"),
    ),
    versioning="no-version",
)


@lru_cache(maxsize=1)
def implemented() -> CapabilityRegistry:
    registry = CapabilityRegistry(system_interactions=["transaction", "batch"])
    searchable = definitions.resource_types()
    for resource_type in sorted(known_resource_types()):
        if resource_type == "AuditEvent":
            registry.resources.append(AUDIT_EVENT)
            continue
        params = definitions.supported_parameters(resource_type) if resource_type in searchable else {}
        interactions = INTERACTIONS if resource_type in searchable else NOT_SEARCHABLE
        registry.resources.append(
            ResourceCapability(
                type=resource_type,
                interactions=interactions,
                search_params=tuple(
                    SearchParam(p.code, p.type, p.url or None)
                    for p in sorted(params.values(), key=lambda p: p.code)
                ),
                versioning="versioned-update",
                # Conditional interactions are searches: only where the type can be searched.
                conditional_create=resource_type in searchable,
                conditional_update=resource_type in searchable,
                conditional_delete="single" if resource_type in searchable else "not-supported",
                operations=OPERATIONS.get(resource_type, ()),
            )
        )
    return registry
