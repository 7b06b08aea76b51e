"""to_audit_event: the AuditEvent a record becomes is valid FHIR R4 and says what happened, from
identifiers alone."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from ehr.fhir.validation import validate_resource
from ehr.security.audit_fhir import (
    AUDIT_EVENT_TYPE,
    CLIENT_ID_SYSTEM,
    OBSERVER_DISPLAY,
    PURPOSE_OF_USE,
    RESTFUL_INTERACTION,
    to_audit_event,
)
from tests.unit.audit.audit_builders import audit_record

READ = audit_record()
SEARCH = audit_record(
    id="rec-search",
    action="E",
    subtype="search-type",
    entities=("Observation/obs-1", "Observation/obs-2"),
    patients=("pat-1", "pat-2"),
    query="code=http://loinc.org|8867-4&_count=20",
    resource_type="Observation",
)
CREATE = audit_record(
    id="rec-create",
    action="C",
    subtype="create",
    status=201,
    entities=("Observation/obs-9",),
    resource_type="Observation",
    purpose_of_use=None,
)
TRANSACTION = audit_record(
    id="rec-transaction",
    action="E",
    subtype="transaction",
    entities=("Patient/pat-3", "Encounter/enc-1", "Observation/obs-3"),
    patients=("pat-3",),
    resource_type=None,
)
EVERYTHING = audit_record(
    id="rec-everything", action="R", subtype="$everything", entities=("Patient/pat-1", "Condition/c-1")
)
REFUSED = audit_record(
    id="rec-refused",
    outcome="4",
    status=403,
    entities=(),
    patients=(),
    fhir_user=None,
    user=None,
    purpose_of_use=None,
)
ANONYMOUS = audit_record(
    id="rec-anonymous",
    outcome="4",
    status=401,
    client_id=None,
    user=None,
    fhir_user=None,
    request_id=None,
    purpose_of_use=None,
    entities=(),
    patients=(),
)
EVERY_KIND = [READ, SEARCH, CREATE, TRANSACTION, EVERYTHING, REFUSED, ANONYMOUS]


def entities_with_role(event: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [e for e in event.get("entity", []) if e.get("role", {}).get("code") == role]


@pytest.mark.parametrize("record", EVERY_KIND, ids=lambda r: r.id)
def test_every_kind_of_record_is_a_valid_r4_audit_event(record) -> None:
    # Given a record of a read, search, create, transaction, operation or refused request
    # When it becomes an AuditEvent
    event = to_audit_event(record)

    # Then both the fhir.resources R4B model and the server's own R4 validation accept it
    AuditEvent.model_validate(event)
    validate_resource(event)
    assert event["resourceType"] == "AuditEvent" and event["id"] == record.id


@pytest.mark.parametrize("record", EVERY_KIND, ids=lambda r: r.id)
def test_the_event_is_the_same_every_time(record) -> None:
    # Given the same record rendered twice (the archive may rewrite it after a retry)
    # Then the two AuditEvents serialize to the same bytes
    assert json.dumps(to_audit_event(record)) == json.dumps(to_audit_event(record))


def test_a_read_names_the_interaction_who_and_what() -> None:
    event = to_audit_event(READ)

    assert event["type"] == {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
    assert event["subtype"] == [{"system": RESTFUL_INTERACTION, "code": "read", "display": "read"}]
    assert (event["action"], event["recorded"], event["outcome"]) == ("R", READ.recorded, "0")
    assert event["outcomeDesc"] == "HTTP 200 OK"
    assert event["purposeOfEvent"] == [
        {"coding": [{"system": PURPOSE_OF_USE, "code": "TREAT", "display": "treatment"}]}
    ]
    (agent,) = event["agent"]
    assert agent["requestor"] is True
    assert agent["who"] == {
        "reference": "Practitioner/prac-7",
        "identifier": {"system": CLIENT_ID_SYSTEM, "value": "clinic-a-portal"},
    }
    assert agent["altId"] == "user-3f1e9a7c"
    assert agent["network"] == {"address": "198.51.100.23", "type": "2"}
    assert event["source"]["observer"] == {"display": OBSERVER_DISPLAY}
    assert event["source"]["site"] == "clinic-a"
    assert event["source"]["type"][0]["code"] == "4"  # application server
    assert [e["what"]["reference"] for e in entities_with_role(event, "4")] == ["Patient/pat-1"]


def test_each_patient_touched_has_a_patient_entity() -> None:
    event = to_audit_event(SEARCH)

    patients = entities_with_role(event, "1")
    assert [e["what"]["reference"] for e in patients] == ["Patient/pat-1", "Patient/pat-2"]
    assert all(e["type"]["code"] == "1" for e in patients)  # a person


def test_a_search_carries_its_query_base64_encoded() -> None:
    event = to_audit_event(SEARCH)

    (query,) = entities_with_role(event, "24")
    assert base64.b64decode(query["query"]).decode() == SEARCH.query
    assert event["subtype"][0]["code"] == "search-type"
    referenced = [e["what"]["reference"] for e in entities_with_role(event, "4")]
    assert referenced == ["Observation/obs-1", "Observation/obs-2"]


def test_a_search_without_parameters_keeps_its_query_entity_without_an_empty_query() -> None:
    event = to_audit_event(audit_record(subtype="search-type", query="", resource_type="Patient"))

    (query,) = entities_with_role(event, "24")
    assert "query" not in query
    validate_resource(event)


def test_an_operation_is_coded_as_an_operation_with_its_definition() -> None:
    event = to_audit_event(EVERYTHING)

    assert [c["code"] for c in event["subtype"]] == [
        "operation",
        "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    ]


@pytest.mark.parametrize("record", [TRANSACTION, CREATE], ids=lambda r: r.subtype)
def test_transactions_and_creates_use_their_restful_interaction_code(record) -> None:
    event = to_audit_event(record)

    assert event["subtype"] == [
        {"system": RESTFUL_INTERACTION, "code": record.subtype, "display": record.subtype}
    ]
    assert [e["what"]["reference"] for e in entities_with_role(event, "4")] == list(record.entities)


def test_a_refused_request_is_a_minor_failure_with_its_status() -> None:
    event = to_audit_event(REFUSED)

    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "HTTP 403 Forbidden"
    assert entities_with_role(event, "4") == [] and entities_with_role(event, "1") == []


def test_an_anonymous_request_still_has_its_requestor() -> None:
    event = to_audit_event(ANONYMOUS)

    (agent,) = event["agent"]
    assert agent["requestor"] is True
    assert "who" not in agent
    assert agent["network"]["address"] == ANONYMOUS.source_ip


def test_a_fhir_user_that_is_not_a_reference_is_not_put_in_who_reference() -> None:
    event = to_audit_event(audit_record(fhir_user="not a reference"))

    assert "reference" not in event["agent"][0]["who"]


def test_a_base_url_makes_entity_references_absolute() -> None:
    base = "https://api.example/v1/tenants/clinic-a/fhir"
    event = to_audit_event(SEARCH, base_url=base + "/")

    references = [e["what"]["reference"] for e in event["entity"] if "reference" in e.get("what", {})]
    assert references and all(r.startswith(base + "/") for r in references)
    validate_resource(event)


def _leaves(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_leaves(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_leaves(v) for v in value)) if value else set()
    return {str(value)}


def test_nothing_but_the_records_identifiers_varies_between_events() -> None:
    # Given two searches that differ in every identifier and in nothing else
    first = SEARCH
    second = audit_record(
        id="rec-other",
        tenant="clinic-b",
        recorded="2024-06-02T10:00:00Z",
        action="E",
        subtype="search-type",
        client_id="clinic-b-app",
        user="user-0000",
        fhir_user="Practitioner/prac-9",
        source_ip="203.0.113.9",
        request_id="req-9",
        entities=("Observation/obs-8", "Observation/obs-9"),
        patients=("pat-8", "pat-9"),
        query="code=1234-5",
        resource_type="Observation",
    )

    # When both become AuditEvents
    differing = _leaves(to_audit_event(first)) ^ _leaves(to_audit_event(second))

    # Then every value that differs is one of the records' identifiers (or the encoded query):
    # the event carries no data the record did not hold, so it needs no PHI to be built
    identifiers = set()
    for record in (first, second):
        identifiers |= {
            record.id, record.tenant, record.recorded, record.client_id, record.user, record.fhir_user,
            record.source_ip, record.request_id, *record.entities,
            *(f"Patient/{p}" for p in record.patients),
            base64.b64encode((record.query or "").encode()).decode(),
        }  # fmt: skip
    assert differing <= identifiers
