"""Cross-facility reads as clinics see them: Consent-gated $everything and $match, audited on
both sides (fakes only: the in-memory store, patient index and audit trail)."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest

from ehr.api.fhir_api import build_fhir_api
from ehr.api.http import HttpRequest
from ehr.api.routes import INSTANCE, TYPE
from ehr.bootstrap import bootstrap_fhir
from ehr.fhir.cursors import CursorCodec
from ehr.security.audit import InMemoryAuditSink
from ehr.security.tenancy import InMemoryTenantDirectory, new_tenant
from ehr.settings import FhirApiSettings
from ehr.sharing.consent import TENANT_SYSTEM, sharing_consent, tenant_organization
from ehr.sharing.mpi import InMemoryPatientIndex, MasterPatientIndex
from ehr.store.memory import InMemoryRecordStore

A, B, C = "clinic-a", "clinic-b", "clinic-c"
SSN = "http://hl7.org/fhir/sid/us-ssn"
EVERYTHING = INSTANCE + "/{operation}"
SOURCE = "urn:ehr:source-tenant"


class World:
    def __init__(self, auth_settings, issuer) -> None:
        tables = {"records_table": "r", "audit_table": "a", "cursor_secret_name": "unused"}
        settings = FhirApiSettings(**auth_settings.model_dump(), **tables)
        self.audit = InMemoryAuditSink()
        self.store = InMemoryRecordStore()
        self.mpi = MasterPatientIndex(InMemoryPatientIndex(), lambda: b"k" * 32)
        tenants = [new_tenant(t, "clinic", f"Clinic {t[-1].upper()}") for t in (A, B, C)]
        self.services = bootstrap_fhir(
            settings,
            tenants=InMemoryTenantDirectory(tenants),
            store=self.store,
            cursors=CursorCodec(b"0123456789abcdef0123456789abcdef"),
            audit=self.audit,
            mpi=self.mpi,
        )
        self.api = build_fhir_api(self.services)
        self.issuer = issuer
        self.admin = {t: issuer.mint(tenant=t, scope="user/*.cruds") for t in (A, B, C)}
        self.org = {}
        for tenant in (A, B, C):
            for other in (A, B, C):
                _, org = self.create(tenant, tenant_organization(other, f"Clinic {other[-1].upper()}"))
                self.org[(tenant, other)] = org["id"]

    def call(self, tenant, method, resource, token=None, *, params=None, body=None, query=None, headers=None):
        path_params = {"tenant": tenant, **(params or {})}
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
                "authorization": f"Bearer {token or self.admin[tenant]}",
                "content-type": "application/fhir+json",
                **(headers or {}),
            },
            body=json.dumps(body).encode() if body is not None else b"",
            base_url="https://x",
        )
        response = self.api.handle(request)
        return response.status, (json.loads(response.body) if response.body else None)

    def create(self, tenant, resource):
        status, body = self.call(
            tenant, "POST", TYPE, params={"type": resource["resourceType"]}, body=resource
        )
        assert status == 201, body
        if resource["resourceType"] == "Patient":  # what the change publisher does from the stream
            self.mpi.record(tenant, body["id"], int(body["meta"]["versionId"]), body)
        return status, body

    def update(self, tenant, resource):
        status, body = self.call(
            tenant,
            "PUT",
            INSTANCE,
            params={"type": resource["resourceType"], "id": resource["id"]},
            body=resource,
        )
        assert status in (200, 201), body
        return body

    def everything(self, tenant, patient_id, token=None, *, query=None, headers=None):
        return self.call(
            tenant,
            "GET",
            EVERYTHING,
            token,
            params={"type": "Patient", "id": patient_id, "operation": "$everything"},
            query=query,
            headers=headers,
        )

    def consent(self, owner, patient_id, receiver, **provision):
        body = sharing_consent(patient_id, self.org[(owner, receiver)], **provision)
        return self.create(owner, body)[1]


def person(given, *, ssn="123-45-6789", mrn=None):
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": SSN, "value": ssn}],
        "name": [{"family": "Rivera", "given": [given]}],
        "gender": "female",
        "birthDate": "1980-04-12",
        "address": [{"postalCode": "02139"}],
    }
    if mrn:
        patient["identifier"].append({"system": "urn:mrn", "value": mrn})
    return patient


def observation(patient_id, code="718-7"):
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {"value": 13.2, "unit": "g/dL"},
    }


@pytest.fixture
def world(auth_settings, issuer):
    w = World(auth_settings, issuer)
    _, w.pa = w.create(A, person("Ana", mrn="A1"))
    _, w.pb = w.create(B, person("Ana", mrn="B1"))
    _, w.obs_a = w.create(A, observation(w.pa["id"]))
    _, w.cond_a = w.create(
        A,
        {
            "resourceType": "Condition",
            "code": {"text": "asthma"},
            "subject": {"reference": f"Patient/{w.pa['id']}"},
        },
    )
    _, w.obs_b = w.create(B, observation(w.pb["id"], "2345-7"))
    w.audit.records.clear()
    return w


def sources(bundle):
    """(tenant of the entry, resource type, id) of every resource in a searchset."""
    found = []
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        tags = [t["code"] for t in resource.get("meta", {}).get("tag", []) if t["system"] == SOURCE]
        found.append((tags[0] if tags else "own", resource["resourceType"], resource.get("id")))
    return found


def test_the_index_links_the_same_person_across_facilities(world):
    assert world.mpi.enterprise_id(A, world.pa["id"]) == world.mpi.enterprise_id(B, world.pb["id"])


def test_without_consent_b_sees_only_its_own_records(world):
    status, bundle = world.everything(B, world.pb["id"])
    assert status == 200
    assert {s[0] for s in sources(bundle)} == {"own"}
    assert ("own", "Observation", world.obs_b["id"]) in sources(bundle)
    assert not [r for r in world.audit.records if r.tenant == A]


def test_with_consent_b_sees_a_records_labelled_and_audited_on_both_sides(world):
    consent = world.consent(A, world.pa["id"], B)
    world.audit.records.clear()
    status, bundle = world.everything(B, world.pb["id"])
    assert status == 200
    found = sources(bundle)
    assert (A, "Observation", world.obs_a["id"]) in found
    assert (A, "Condition", world.cond_a["id"]) in found
    assert (A, "Patient", world.pa["id"]) in found
    assert ("own", "Observation", world.obs_b["id"]) in found
    shared = next(e for e in bundle["entry"] if e["resource"].get("id") == world.obs_a["id"])
    assert shared["fullUrl"] == f"https://x/tenants/{A}/fhir/Observation/{world.obs_a['id']}"
    # A's trail: who at B read which of A's records, and why.
    owner = [r for r in world.audit.records if r.tenant == A]
    assert len(owner) == 1
    assert owner[0].requesting_tenant == B
    assert owner[0].purpose_of_use == "TREAT"
    assert f"Observation/{world.obs_a['id']}" in owner[0].entities
    assert owner[0].patients == (world.pa["id"],)
    assert consent["id"]  # the consent exists in A's store, not B's
    # B's trail: the same read, A's resources as absolute references.
    receiver = [r for r in world.audit.records if r.tenant == B]
    assert len(receiver) == 1
    assert f"https://x/tenants/{A}/fhir/Observation/{world.obs_a['id']}" in receiver[0].entities
    assert receiver[0].purpose_of_use == "TREAT"


def test_a_consent_for_another_facility_shares_nothing_with_b(world):
    world.consent(A, world.pa["id"], C)
    _, bundle = world.everything(B, world.pb["id"])
    assert {s[0] for s in sources(bundle)} == {"own"}


def test_resource_classes_limit_what_is_shared(world):
    world.consent(
        A,
        world.pa["id"],
        B,
        **{"class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]},
    )
    _, bundle = world.everything(B, world.pb["id"])
    shared = {(t, i) for s, t, i in sources(bundle) if s == A}
    assert shared == {("Observation", world.obs_a["id"])}


def test_a_nested_deny_excludes_a_class(world):
    world.consent(
        A,
        world.pa["id"],
        B,
        provision=[
            {"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]}
        ],
    )
    _, bundle = world.everything(B, world.pb["id"])
    shared = {t for s, t, _ in sources(bundle) if s == A}
    assert "Observation" in shared and "Condition" not in shared


def test_revoking_takes_effect_at_once(world):
    consent = world.consent(A, world.pa["id"], B)
    assert any(s[0] == A for s in sources(world.everything(B, world.pb["id"])[1]))
    world.update(A, {**consent, "status": "inactive"})
    _, bundle = world.everything(B, world.pb["id"])
    assert {s[0] for s in sources(bundle)} == {"own"}


def test_an_expired_period_shares_nothing(world):
    world.consent(A, world.pa["id"], B, period={"start": "2020-01-01", "end": "2021-01-01"})
    _, bundle = world.everything(B, world.pb["id"])
    assert {s[0] for s in sources(bundle)} == {"own"}


def test_purpose_of_use_must_be_one_the_consent_allows(world):
    world.consent(
        A,
        world.pa["id"],
        B,
        purpose=[{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
    )
    _, research = world.everything(B, world.pb["id"], headers={"x-purpose-of-use": "HRESCH"})
    assert {s[0] for s in sources(research)} == {"own"}
    _, treatment = world.everything(B, world.pb["id"], headers={"x-purpose-of-use": "TREAT"})
    assert any(s[0] == A for s in sources(treatment))


def test_a_deny_consent_wins_over_a_permit(world):
    world.consent(A, world.pa["id"], B)
    world.consent(A, world.pa["id"], B, type="deny")
    _, bundle = world.everything(B, world.pb["id"])
    assert {s[0] for s in sources(bundle)} == {"own"}


def test_paging_walks_the_own_then_the_shared_compartment_and_rechecks_consent(world):
    consent = world.consent(A, world.pa["id"], B)
    seen = []
    status, bundle = world.everything(B, world.pb["id"], query={"_count": ["1"]})
    pages = 1
    while True:
        assert status == 200
        seen += sources(bundle)
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            break
        cursor = following[0].split("_cursor=")[1]
        status, bundle = world.everything(
            B, world.pb["id"], query={"_count": ["1"], "_cursor": [unquote(cursor)]}
        )
        pages += 1
        assert pages < 20
    assert {(s, t) for s, t, _ in seen} >= {("own", "Patient"), (A, "Observation"), (A, "Condition")}
    # A cursor issued while the consent was active reads nothing of A's after revocation.
    _, first = world.everything(B, world.pb["id"], query={"_count": ["2"]})
    cursor = next(link["url"] for link in first["link"] if link["relation"] == "next").split("_cursor=")[1]
    world.update(A, {**consent, "status": "inactive"})
    _, after = world.everything(B, world.pb["id"], query={"_count": ["2"], "_cursor": [unquote(cursor)]})
    assert not [s for s in sources(after) if s[0] == A]


def test_a_patient_context_token_for_b_patient_sees_the_shared_records(world):
    world.consent(A, world.pa["id"], B)
    token = world.issuer.mint(tenant=B, scope="patient/*.rs", patient=world.pb["id"])
    status, bundle = world.everything(B, world.pb["id"], token)
    assert status == 200
    assert (A, "Observation", world.obs_a["id"]) in sources(bundle)


def test_type_filter_is_the_federated_compartment_search(world):
    world.consent(A, world.pa["id"], B)
    _, bundle = world.everything(B, world.pb["id"], query={"_type": ["Observation"]})
    assert sorted((s, i) for s, t, i in sources(bundle)) == sorted(
        [("own", world.obs_b["id"]), (A, world.obs_a["id"])]
    )
    status, bad = world.everything(B, world.pb["id"], query={"_type": ["Nonsense"]})
    assert (status, bad["issue"][0]["code"]) == (400, "invalid")


def test_owner_audit_failure_withholds_the_page(world):
    world.consent(A, world.pa["id"], B)
    world.audit.fail = True
    status, body = world.everything(B, world.pb["id"])
    assert status == 503
    assert body["resourceType"] == "OperationOutcome"
    assert "Observation" not in json.dumps(body)


def match(world, tenant, patient, **params):
    parameters = [{"name": "resource", "resource": patient}]
    parameters += [{"name": k, **v} for k, v in params.items()]
    return world.call(
        tenant,
        "POST",
        TYPE + "/{id}",
        params={"type": "Patient", "id": "$match"},
        body={"resourceType": "Parameters", "parameter": parameters},
    )


def test_match_reveals_another_facility_only_as_a_match_without_consent(world):
    status, bundle = match(world, B, person("Ana"))
    assert status == 200
    entries = bundle["entry"]
    own = [e for e in entries if e["resource"].get("id") == world.pb["id"]]
    assert own and own[0]["search"]["extension"][0]["valueCode"] == "certain"
    hidden = [e for e in entries if e["resource"].get("id") is None]
    assert len(hidden) == 1
    text = json.dumps(hidden[0])
    assert world.pa["id"] not in text and A not in text and "Rivera" not in text
    assert hidden[0]["search"]["extension"][0]["valueCode"] == "certain"


def test_match_shows_a_consented_facility_record(world):
    world.consent(A, world.pa["id"], B)
    world.audit.records.clear()
    _, bundle = match(world, B, person("Ana"))
    shared = [e for e in bundle["entry"] if e["resource"].get("id") == world.pa["id"]]
    assert shared and shared[0]["fullUrl"].startswith(f"https://x/tenants/{A}/fhir/Patient/")
    assert [r for r in world.audit.records if r.tenant == A and r.requesting_tenant == B]


def test_match_rejects_bad_input_with_an_operation_outcome(world):
    status, body = world.call(
        B,
        "POST",
        TYPE + "/{id}",
        params={"type": "Patient", "id": "$match"},
        body={"resourceType": "Parameters"},
    )
    assert (status, body["issue"][0]["code"]) == (400, "invalid")
    status, body = match(world, B, {"resourceType": "Patient"})
    assert (status, body["issue"][0]["code"]) == (400, "invalid")
    status, body = match(world, B, person("Ana"), count={"valueInteger": 0})
    assert (status, body["issue"][0]["code"]) == (400, "invalid")


def test_the_tenant_organization_identifier(world):
    status, bundle = world.call(
        A, "GET", TYPE, params={"type": "Organization"}, query={"identifier": [f"{TENANT_SYSTEM}|{B}"]}
    )
    assert status == 200 and len(bundle["entry"]) == 1


def test_narrowing_the_server_does_not_evaluate_is_read_the_safe_way(world):
    world.consent(
        A, world.pa["id"], B, data=[{"meaning": "instance", "reference": {"reference": "Observation/x"}}]
    )
    _, bundle = world.everything(B, world.pb["id"])
    assert {s[0] for s in sources(bundle)} == {"own"}


def test_equal_scores_never_order_by_the_facility_that_holds_the_record():
    from ehr.sharing.federation import disclosure_order
    from ehr.sharing.mpi import Match

    for hidden in ("aaa-clinic", "zzz-clinic"):  # sorting before and after the caller's own id
        ordered = disclosure_order(
            [Match(hidden, "p1", 1.0, "certain", "e1"), Match(B, "p2", 1.0, "certain", "e1")], B
        )
        assert [m.tenant for m in ordered] == [B, hidden]
