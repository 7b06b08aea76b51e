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
EVERYTHING = ("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything")


@lru_cache(maxsize=1)
def implemented() -> CapabilityRegistry:
    registry = CapabilityRegistry(system_interactions=["transaction", "batch"])
    searchable = definitions.resource_types()
    for resource_type in sorted(known_resource_types()):
        params = definitions.supported_parameters(resource_type) if resource_type in searchable else {}
        registry.resources.append(
            ResourceCapability(
                type=resource_type,
                interactions=INTERACTIONS,
                search_params=tuple(
                    SearchParam(p.code, p.type, p.url or None)
                    for p in sorted(params.values(), key=lambda p: p.code)
                ),
                versioning="versioned-update",
                conditional_create=True,
                conditional_update=True,
                conditional_delete="single",
                operations=(EVERYTHING,) if resource_type == "Patient" else (),
            )
        )
    return registry
