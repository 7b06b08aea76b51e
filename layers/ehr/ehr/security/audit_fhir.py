"""An ``AuditRecord`` as a FHIR R4 AuditEvent (identifiers only, never PHI content).

The shape follows the RESTful-interaction pattern of FHIR's security page and IHE BALP: type
``rest``, the interaction (or operation) as subtype, one requestor agent (the OAuth client,
the user's token subject and ``fhirUser``, the source IP), the server as source, one entity per
resource read or written, one entity per patient whose data was touched (role 1 "Patient"), and
for searches one entity carrying the query (base64, as ``AuditEvent.entity.query`` requires).

The result is a function of the record alone (``id`` is the record's id): the same record always
gives the same AuditEvent, so an archive rewrite or a re-render is byte-identical.
"""

from __future__ import annotations

import base64
import re
from http import HTTPStatus
from typing import Any, Final

from ehr.security.audit import AuditRecord

AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
PURPOSE_OF_USE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
DICOM: Final = "http://dicom.nema.org/resources/ontology/DCM"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
BALP_ENTITY_TYPE: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
URI: Final = "urn:ietf:rfc:3986"

# Identifier systems of this platform (the OAuth client of a request, the API Gateway request id).
CLIENT_ID_SYSTEM: Final = "urn:ehr:oauth-client-id"
REQUEST_ID_SYSTEM: Final = "urn:ehr:request-id"
TENANT_SYSTEM: Final = "urn:ehr:tenant"
OBSERVER_DISPLAY: Final = "Serverless EHR"

RESTFUL_INTERACTIONS: Final = frozenset(
    {
        "read", "vread", "update", "patch", "delete", "history", "history-instance", "history-type",
        "history-system", "create", "search", "search-type", "search-system", "capabilities",
        "transaction", "batch", "operation",
    }
)  # fmt: skip
# Operations of the FHIR core specification this server implements, by name: canonical URL.
CORE_OPERATIONS: Final = {
    "everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    "validate": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    "meta": "http://hl7.org/fhir/OperationDefinition/Resource-meta",
    "export": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
    "match": "http://hl7.org/fhir/OperationDefinition/Patient-match",
}
ACTION_DISPLAY: Final = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "execute"}
# The usual v3 PurposeOfUse codes (HL7 v3 ActReason); others are coded without a display.
PURPOSE_DISPLAY: Final = {
    "TREAT": "treatment",
    "ETREAT": "Emergency Treatment",
    "HPAYMT": "healthcare payment",
    "HOPERAT": "healthcare operations",
    "HRESCH": "healthcare research",
    "PUBHLTH": "public health",
    "PATRQT": "patient requested",
    "FAMRQT": "family requested",
    "PWATRNY": "power of attorney",
    "SUPNWK": "support network",
    "COVERAGE": "coverage under policy or program",
    "HSYSADMIN": "health system administration",
    "SYSDEV": "system development",
    "HLEGAL": "legal",
    "CAREMGT": "care management",
    "BTG": "break the glass",
}
_FHIR_USER = re.compile(
    r"^(?:https?://[^\s]+/)?(?:Patient|Practitioner|PractitionerRole|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}$"
)


def to_audit_event(record: AuditRecord, *, base_url: str | None = None) -> dict[str, Any]:
    """The FHIR R4 AuditEvent of ``record``.

    ``base_url`` (the tenant's FHIR base, ``https://…/tenants/{t}/fhir``) makes the entity
    references absolute; without it they stay relative (``Observation/1``).
    """
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": record.id,
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": _subtype(record),
        "action": record.action,
        "recorded": record.recorded,
        "outcome": record.outcome,
        "outcomeDesc": _outcome_description(record.status),
    }
    if record.purpose_of_use:
        code = record.purpose_of_use
        coding = {"system": PURPOSE_OF_USE, "code": code}
        if code in PURPOSE_DISPLAY:
            coding["display"] = PURPOSE_DISPLAY[code]
        event["purposeOfEvent"] = [{"coding": [coding]}]
    event["agent"] = [_requestor(record)]
    if record.requesting_tenant:
        # Cross-facility read: the requestor works for another facility (tenant) of this server.
        event["agent"].append(
            {
                "type": {"coding": [{"system": DICOM, "code": "110152", "display": "Destination Role ID"}]},
                "who": {
                    "identifier": {"system": TENANT_SYSTEM, "value": record.requesting_tenant},
                    "display": f"Facility {record.requesting_tenant}",
                },
                "requestor": False,
            }
        )
    event["source"] = {
        "site": record.tenant,
        "observer": {"display": OBSERVER_DISPLAY},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    entities = _entities(record, base_url)
    if entities:
        event["entity"] = entities
    return event


def _subtype(record: AuditRecord) -> list[dict[str, str]]:
    code = record.subtype
    if code in RESTFUL_INTERACTIONS:
        return [{"system": RESTFUL_INTERACTION, "code": code, "display": code}]
    name = code.removeprefix("$")
    codings = [{"system": RESTFUL_INTERACTION, "code": "operation", "display": "operation"}]
    canonical = CORE_OPERATIONS.get(name)
    codings.append(
        {"system": URI, "code": canonical, "display": f"${name}"}
        if canonical
        else {"system": URI, "code": f"urn:ehr:operation:{name}", "display": f"${name}"}
    )
    return codings


def _outcome_description(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _requestor(record: AuditRecord) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": DICOM, "code": "110153", "display": "Source Role ID"}]},
    }
    who: dict[str, Any] = {}
    if record.fhir_user and _FHIR_USER.match(record.fhir_user):
        who["reference"] = record.fhir_user
    if record.client_id:
        who["identifier"] = {"system": CLIENT_ID_SYSTEM, "value": record.client_id}
    if who:
        agent["who"] = who
    if record.user:
        agent["altId"] = record.user
    agent["requestor"] = True
    if record.source_ip:
        agent["network"] = {"address": record.source_ip, "type": "2"}
    return agent


def _reference(reference: str, base_url: str | None) -> str:
    if "://" in reference:
        return reference  # another facility's resource (cross-facility read), already absolute
    return f"{base_url.rstrip('/')}/{reference}" if base_url else reference


def _entities(record: AuditRecord, base_url: str | None) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    for reference in dict.fromkeys(record.entities):
        parts = reference.rstrip("/").split("/")
        resource_type = parts[-2] if "://" in reference and len(parts) >= 2 else parts[0]
        entities.append(
            {
                "what": {"reference": _reference(reference, base_url)},
                "type": {"system": RESOURCE_TYPES, "code": resource_type, "display": resource_type},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            }
        )
    for patient in dict.fromkeys(record.patients):
        entities.append(
            {
                "what": {"reference": _reference(f"Patient/{patient}", base_url)},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    if record.query is not None:
        query: dict[str, Any] = {
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
        }
        if record.resource_type:
            query["description"] = f"{record.resource_type} search"
        if record.query:  # base64Binary cannot be empty: a search without parameters has none
            query["query"] = base64.b64encode(record.query.encode("utf-8")).decode("ascii")
        entities.append(query)
    if record.request_id:
        entities.append(
            {
                "what": {"identifier": {"system": REQUEST_ID_SYSTEM, "value": record.request_id}},
                "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId", "display": "X-Request-Id"},
            }
        )
    return entities
