"""SMART scopes and the audit trail, as a client sees them (fakes only, no network)."""

from __future__ import annotations

import json

import pytest

from ehr.api.fhir_api import build_fhir_api
from ehr.api.http import HttpRequest
from ehr.api.routes import INSTANCE, TYPE
from ehr.bootstrap import bootstrap_fhir
from ehr.fhir.cursors import CursorCodec
from ehr.security.audit import InMemoryAuditSink
from ehr.security.tenancy import InMemoryTenantDirectory, new_tenant
from ehr.settings import FhirApiSettings
from ehr.store.memory import InMemoryRecordStore

T = "clinic-a"


@pytest.fixture
def world(auth_settings, issuer):
    tables = {"records_table": "r", "audit_table": "a", "cursor_secret_name": "unused"}
    settings = FhirApiSettings(**auth_settings.model_dump(), **tables)
    audit = InMemoryAuditSink()
    services = bootstrap_fhir(
        settings,
        tenants=InMemoryTenantDirectory([new_tenant(T, "clinic", "A")]),
        store=InMemoryRecordStore(),
        cursors=CursorCodec(b"0123456789abcdef0123456789abcdef"),
        audit=audit,
    )
    api = build_fhir_api(services)

    def call(method, resource, token, *, params=None, body=None, query=None, headers=None):
        path_params = {"tenant": T, **(params or {})}
        path = resource
        for key, value in path_params.items():
            path = path.replace("{" + key + "}", value)
        request = HttpRequest(
            method=method,
            resource=resource,
            path=path,
            path_params=path_params,
            query={k: tuple(v) for k, v in (query or {}).items()},
            headers={
                "authorization": f"Bearer {token}",
                "content-type": "application/fhir+json",
                **(headers or {}),
            },
            body=json.dumps(body).encode() if body is not None else b"",
            base_url="https://x",
        )
        response = api.handle(request)
        return response.status, (json.loads(response.body) if response.body else None)

    admin = issuer.mint(tenant=T, scope="user/*.cruds")
    patient = {"type": "Patient"}
    _, p1 = call("POST", TYPE, admin, params=patient, body={"resourceType": "Patient", "gender": "male"})
    _, p2 = call("POST", TYPE, admin, params=patient, body={"resourceType": "Patient", "gender": "female"})
    observations = {}
    for patient, category in ((p1, "laboratory"), (p1, "vital-signs"), (p2, "laboratory")):
        _, obs = call(
            "POST",
            TYPE,
            admin,
            params={"type": "Observation"},
            body={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": category,
                            }
                        ]
                    }
                ],
                "subject": {"reference": f"Patient/{patient['id']}"},
            },
        )
        observations[(patient["id"], category)] = obs["id"]
    audit.records.clear()
    return call, issuer, p1["id"], p2["id"], observations, audit


def test_a_patient_context_token_reads_its_patient_and_not_another(world):
    call, issuer, p1, p2, _, _ = world
    token = issuer.mint(tenant=T, scope="patient/*.rs", patient=p1)
    assert call("GET", INSTANCE, token, params={"type": "Patient", "id": p1})[0] == 200
    status, body = call("GET", INSTANCE, token, params={"type": "Patient", "id": p2})
    assert (status, body["issue"][0]["code"]) == (403, "forbidden")


def test_a_patient_context_search_only_returns_the_compartment_with_a_warning(world):
    call, issuer, p1, _, observations, _ = world
    token = issuer.mint(tenant=T, scope="patient/*.rs", patient=p1)
    status, bundle = call("GET", TYPE, token, params={"type": "Observation"})
    matches = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert status == 200
    assert sorted(matches) == sorted(v for (p, _), v in observations.items() if p == p1)
    assert outcome and outcome[0]["resource"]["issue"][0]["code"] == "suppressed"


def test_a_granular_scope_filters_by_its_query(world):
    call, issuer, p1, _, observations, _ = world
    scope = (
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category"
        "|laboratory"
    )
    token = issuer.mint(tenant=T, scope=scope, patient=p1)
    _, bundle = call("GET", TYPE, token, params={"type": "Observation"})
    assert [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"] == [
        observations[(p1, "laboratory")]
    ]
    vital = observations[(p1, "vital-signs")]
    assert call("GET", INSTANCE, token, params={"type": "Observation", "id": vital})[0] == 403


def test_letters_decide_the_interaction(world):
    call, issuer, p1, _, _, _ = world
    read_only = issuer.mint(tenant=T, scope="user/*.rs")
    body = {"resourceType": "Patient", "gender": "other"}
    assert call("POST", TYPE, read_only, params={"type": "Patient"}, body=body)[0] == 403
    assert call("DELETE", INSTANCE, read_only, params={"type": "Patient", "id": p1})[0] == 403
    v1 = issuer.mint(tenant=T, scope="user/Patient.read user/Patient.write")  # SMART v1 aliases
    assert call("POST", TYPE, v1, params={"type": "Patient"}, body=body)[0] == 201
    assert call("GET", TYPE, v1, params={"type": "Observation"})[0] == 403


def test_a_patient_token_cannot_write_into_another_patients_compartment(world):
    call, issuer, p1, p2, _, _ = world
    token = issuer.mint(tenant=T, scope="patient/*.cruds", patient=p1)
    foreign = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{p2}"},
    }
    assert call("POST", TYPE, token, params={"type": "Observation"}, body=foreign)[0] == 403
    own = {**foreign, "subject": {"reference": f"Patient/{p1}"}}
    assert call("POST", TYPE, token, params={"type": "Observation"}, body=own)[0] == 201


def test_every_request_leaves_exactly_one_audit_record(world):
    call, issuer, p1, p2, _, audit = world
    token = issuer.mint(tenant=T, scope="patient/*.rs", patient=p1, client_id="app-1")
    statuses = [
        call("GET", INSTANCE, token, params={"type": "Patient", "id": p1})[0],
        call("GET", INSTANCE, token, params={"type": "Patient", "id": p2})[0],
        call("GET", TYPE, token, params={"type": "Observation"}, query={"code": ["x"]})[0],
    ]
    assert statuses == [200, 403, 200]
    assert [(r.subtype, r.outcome, r.client_id) for r in audit.records] == [
        ("read", "0", "app-1"),
        ("read", "4", "app-1"),
        ("search-type", "0", "app-1"),
    ]
    assert audit.records[0].patients == (p1,)
    assert audit.records[2].query == "code=x"


def test_no_data_leaves_without_its_audit_record(world):
    call, issuer, p1, _, _, audit = world
    audit.fail = True
    status, body = call(
        "GET", INSTANCE, issuer.mint(tenant=T, scope="user/*.rs"), params={"type": "Patient", "id": p1}
    )
    assert (status, body["issue"][0]["code"]) == (503, "transient")
    assert "gender" not in json.dumps(body)


def test_the_audit_trail_is_read_with_an_explicit_scope_and_never_written(world):
    call, issuer, p1, _, _, _ = world
    clinician = issuer.mint(tenant=T, scope="user/*.cruds")
    call("GET", INSTANCE, clinician, params={"type": "Patient", "id": p1})
    # A wildcard does not reach AuditEvent; an explicit scope does
    assert call("GET", TYPE, clinician, params={"type": "AuditEvent"}, query={"patient": [p1]})[0] == 403
    admin = issuer.mint(tenant=T, scope="user/AuditEvent.rs")
    trail = {"type": "AuditEvent"}
    status, bundle = call("GET", TYPE, admin, params=trail, query={"patient": [p1]})
    assert status == 200
    assert bundle["entry"][0]["resource"]["resourceType"] == "AuditEvent"
    assert call("POST", TYPE, admin, params=trail, body={"resourceType": "AuditEvent"})[0] == 405
