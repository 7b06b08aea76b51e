"""The CapabilityStatement over HTTP: what it lists is what the server really does."""

from __future__ import annotations

import pytest
import requests
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

CORE_TYPES = (
    "AllergyIntolerance",
    "CarePlan",
    "Condition",
    "Consent",
    "Coverage",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Immunization",
    "Location",
    "Medication",
    "MedicationRequest",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "ServiceRequest",
    "Specimen",
    "Subscription",
    "Task",
)
RESOURCE_INTERACTIONS = {"read", "vread", "update", "delete", "history-instance", "create", "search-type"}
# A syntactically valid value for each searchable parameter type.
DUMMY_VALUES = {
    "token": "http://example.org/codes|dummy",
    "string": "dummy",
    "date": "ge2020-01-01",
    "reference": "dummy-id",
    "quantity": "5.4|http://unitsofmeasure.org|mg",
    "number": "gt0.5",
    "uri": "http://example.org/dummy",
}


@pytest.fixture(scope="module")
def session(local_server) -> requests.Session:
    # The shared server is stopped by the last test of test_local_platform.py; this module runs first.
    assert local_server.process.poll() is None, "the ehr local server was stopped before these tests"
    http = requests.Session()
    # AuditEvent is never covered by a wildcard scope: reading the trail needs its own.
    token = local_server.token("--tenant", "clinic-a", "--scope", "user/*.cruds user/AuditEvent.rs")
    http.headers["Authorization"] = f"Bearer {token}"
    return http


@pytest.fixture(scope="module")
def base(local_server) -> str:
    return f"{local_server.base}/tenants/clinic-a/fhir"


@pytest.fixture(scope="module")
def statement(session: requests.Session, base: str) -> dict:
    response = session.get(f"{base}/metadata")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    return response.json()


@pytest.fixture(scope="module")
def resources(statement: dict) -> dict[str, dict]:
    (rest,) = statement["rest"]
    return {r["type"]: r for r in rest["resource"]}


def test_the_statement_is_a_valid_r4_capability_statement(statement: dict) -> None:
    CapabilityStatement.model_validate(statement)
    assert (statement["fhirVersion"], statement["kind"], statement["rest"][0]["mode"]) == (
        "4.0.1",
        "instance",
        "server",
    )
    assert "json" in statement["format"]


def test_every_clinical_core_type_is_listed_with_its_interactions(resources: dict[str, dict]) -> None:
    for resource_type in CORE_TYPES:
        listed = resources.get(resource_type)
        assert listed is not None, f"{resource_type} is not in the CapabilityStatement"
        assert {i["code"] for i in listed["interaction"]} >= RESOURCE_INTERACTIONS, resource_type
        assert listed.get("searchParam"), f"{resource_type} lists no search parameters"


def search_each(session: requests.Session, base: str, types: list[str]) -> dict[str, str]:
    """The status of ``GET Type?_count=1`` for each type, asked in one batch."""
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"{t}?_count=1"}} for t in types],
    }
    response = session.post(base, json=batch, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 200, response.text
    return {t: e["response"]["status"][:3] for t, e in zip(types, response.json()["entry"], strict=True)}


def test_every_listed_type_answers_a_search(session: requests.Session, base: str, resources: dict) -> None:
    # When every type listed as searchable is searched (one batch of GETs)
    searchable = sorted(
        t for t, r in resources.items() if "search-type" in {i["code"] for i in r["interaction"]}
    )
    statuses = search_each(session, base, searchable)

    # Then each answers 200
    assert {t: s for t, s in statuses.items() if s != "200"} == {}
    assert len(statuses) > 100


def test_audit_event_is_listed_with_only_what_the_server_does(resources: dict[str, dict]) -> None:
    listed = resources["AuditEvent"]
    interactions = {i["code"] for i in listed["interaction"]}
    assert "search-type" in interactions
    assert interactions.isdisjoint({"create", "update", "patch", "delete"})
    assert {p["name"] for p in listed.get("searchParam", [])} <= {"patient", "date"}


def test_a_type_not_listed_is_unknown_to_the_server(
    session: requests.Session, base: str, resources: dict
) -> None:
    assert "Spaceship" not in resources
    response = session.get(f"{base}/Spaceship")
    assert (response.status_code, response.json()["issue"][0]["code"]) == (404, "not-found")


def test_transaction_and_batch_are_system_interactions(statement: dict) -> None:
    assert {"transaction", "batch"} <= {i["code"] for i in statement["rest"][0]["interaction"]}


def test_patient_everything_is_listed(resources: dict[str, dict]) -> None:
    operations = {o["name"]: o["definition"] for o in resources["Patient"].get("operation", [])}
    assert operations.get("everything") == "http://hl7.org/fhir/OperationDefinition/Patient-everything"


def test_listed_search_parameters_have_types_the_server_searches(resources: dict[str, dict]) -> None:
    listed_types = {p["type"] for r in resources.values() for p in r.get("searchParam", [])}
    assert listed_types <= set(DUMMY_VALUES), listed_types - set(DUMMY_VALUES)


def test_every_observation_search_parameter_is_accepted(
    session: requests.Session, base: str, resources: dict[str, dict]
) -> None:
    # Given the search parameters the statement lists for Observation
    parameters = resources["Observation"]["searchParam"]
    assert len(parameters) > 20

    # When each is searched with a well-formed value, refusing anything unknown
    refused = {}
    for parameter in parameters:
        response = session.get(
            f"{base}/Observation",
            params={parameter["name"]: DUMMY_VALUES[parameter["type"]]},
            headers={"Prefer": "handling=strict"},
        )
        if response.status_code != 200:
            refused[parameter["name"]] = (response.status_code, response.text[:200])

    # Then none is refused
    assert refused == {}
