"""The fan-out of committed changes: Subscriptions of the owning tenant, cross-facility events and
the receiving facility's Subscriptions under an active Consent — against a real loopback webhook
receiver (in-memory store, patient index and bus)."""

from __future__ import annotations

import json

import pytest

from ehr.events.changes import Change, InMemoryEventPublisher, events
from ehr.events.schema import CROSS_FACILITY_RECORD_UPDATED
from ehr.fhir.cursors import CursorCodec
from ehr.fhir.searching import SearchEngine
from ehr.fhir.service import FhirService
from ehr.security.identity import Identity, Scope
from ehr.security.scopes import AccessPolicy
from ehr.sharing.consent import sharing_consent, tenant_organization
from ehr.sharing.mpi import InMemoryPatientIndex, MasterPatientIndex
from ehr.sharing.notify import Notifier
from ehr.sharing.subscriptions import AllowList, InMemoryDeadLetters, SubscriptionDeliverer
from ehr.store.memory import InMemoryRecordStore
from infra.local.webhook_receiver import WebhookReceiver

A, B = "clinic-a", "clinic-b"
SECRETS = {A: b"a" * 32, B: b"b" * 32}


class Setup:
    def __init__(self, receiver_url: str) -> None:
        self.store = InMemoryRecordStore()
        self.mpi = MasterPatientIndex(InMemoryPatientIndex(), lambda: b"k" * 32)
        policy = AllowList({}, allow_loopback_http=True)
        self.fhir = FhirService(self.store, subscriptions=policy)
        self.search = SearchEngine(self.store, CursorCodec(b"0" * 32))
        self.dead = InMemoryDeadLetters()
        self.bus = InMemoryEventPublisher()
        self.naps: list[float] = []
        self.notifier = Notifier(
            fhir=self.fhir,
            search=self.search,
            mpi=self.mpi,
            deliverer=SubscriptionDeliverer(SECRETS.__getitem__, policy, attempts=3, sleep=self.naps.append),
            dead_letters=self.dead,
            publisher=self.bus,
            bus="bus",
            clock=lambda: "2026-11-21T12:00:00Z",
        )
        self.url = receiver_url
        self.orgs = {}
        for t in (A, B):
            for o in (A, B):
                stored = self.fhir.create(t, "Organization", tenant_organization(o, o)).stored
                assert stored is not None
                self.orgs[(t, o)] = stored.id

    def client(self, tenant: str) -> AccessPolicy:
        scope = Scope.parse("user/*.cruds")
        assert scope is not None
        return AccessPolicy(Identity(tenant, "admin", None, (scope,), ()))

    def patient(self, tenant: str) -> str:
        body = {
            "resourceType": "Patient",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-11-2222"}],
            "name": [{"family": "Okafor", "given": ["Chidi"]}],
            "birthDate": "1975-02-03",
            "gender": "male",
        }
        stored = self.fhir.create(tenant, "Patient", body).stored
        assert stored is not None and stored.body is not None
        self.mpi.record(tenant, stored.id, stored.version, stored.body)
        return stored.id

    def subscribe(self, tenant: str, criteria: str, *, payload: str | None = None) -> str:
        channel = {"type": "rest-hook", "endpoint": self.url}
        if payload:
            channel["payload"] = payload
        body = {"resourceType": "Subscription", "status": "requested", "reason": "test", "criteria": criteria}
        body["channel"] = channel
        stored = self.fhir.create(tenant, "Subscription", body, access=self.client(tenant)).stored
        assert stored is not None and stored.body is not None
        assert stored.body["status"] == "active"
        return stored.id

    def consent(self, owner: str, patient_id: str, receiver: str) -> dict:
        body = sharing_consent(patient_id, self.orgs[(owner, receiver)])
        stored = self.fhir.create(owner, "Consent", body).stored
        assert stored is not None and stored.body is not None
        return stored.body

    def observe(self, tenant: str, patient_id: str, code: str = "718-7"):
        body = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "valueQuantity": {"value": 7.1},
        }
        stored = self.fhir.create(tenant, "Observation", body).stored
        assert stored is not None
        return stored, self.changed(tenant, stored)

    def changed(self, tenant, stored):
        """The ResourceChanged event the change publisher puts on the bus for this version."""
        change = Change(
            tenant=tenant,
            resource_type=stored.resource_type,
            resource_id=stored.id,
            version=stored.version,
            operation=stored.operation,
            last_updated=stored.last_updated,
            patients=tuple(sorted(stored.compartments)),
            body=stored.body,
            previous=None,
        )
        entry = events(change, bus="bus")[0]
        return {
            "detail-type": entry["DetailType"],
            "source": entry["Source"],
            "detail": json.loads(entry["Detail"]),
        }


@pytest.fixture
def receiver():
    with WebhookReceiver(reject_bad_signatures=False) as hook:
        yield hook


@pytest.fixture
def world(receiver):
    return Setup(receiver.url)


def test_an_own_subscription_gets_a_signed_empty_notification(world, receiver):
    patient = world.patient(A)
    world.subscribe(A, f"Observation?patient={patient}&code=http://loinc.org|718-7")
    _stored, event = world.observe(A, patient)
    report = world.notifier.handle(event)
    assert len(report.delivered) == 1
    [delivery] = receiver.wait_for(1)
    assert receiver.verify(delivery, SECRETS[A])
    assert delivery.body == b""


def test_criteria_that_do_not_match_send_nothing(world, receiver):
    patient = world.patient(A)
    world.subscribe(A, f"Observation?patient={patient}&code=http://loinc.org|2345-7")
    _, event = world.observe(A, patient)
    assert world.notifier.handle(event).delivered == []
    assert receiver.deliveries == []


def test_an_id_only_payload_names_the_resource_and_carries_no_content(world, receiver):
    patient = world.patient(A)
    world.subscribe(A, f"Observation?patient={patient}", payload="application/fhir+json")
    stored, event = world.observe(A, patient)
    world.notifier.handle(event)
    [delivery] = receiver.wait_for(1)
    text = delivery.body.decode()
    assert f"Observation/{stored.id}" in text
    assert "valueQuantity" not in text and "Okafor" not in text


def test_b_subscription_fires_for_a_change_at_a_while_consent_is_active(world, receiver):
    pa, pb = world.patient(A), world.patient(B)
    world.subscribe(B, f"Observation?patient={pb}")
    consent = world.consent(A, pa, B)
    _, event = world.observe(A, pa)
    report = world.notifier.handle(event)
    assert report.delivered == [f"{B}/Subscription/{report.delivered[0].rsplit('/', 1)[1]}"]
    [delivery] = receiver.wait_for(1)
    assert receiver.verify(delivery, SECRETS[B])
    published = [
        json.loads(e["Detail"]) for e in world.bus.events if e["DetailType"] == CROSS_FACILITY_RECORD_UPDATED
    ]
    assert published == [
        {
            "tenant": B,
            "patient": f"Patient/{pb}",
            "sourceTenant": A,
            "resourceType": "Observation",
            "id": event["detail"]["id"],
            "versionId": "1",
            "consents": [consent["id"]],
        }
    ]
    # Revoked: B hears nothing more about A's records of the patient.
    world.fhir.update(A, "Consent", consent["id"], {**consent, "status": "inactive"})
    receiver.reset()
    world.bus.events.clear()
    _, later = world.observe(A, pa)
    assert world.notifier.handle(later).delivered == []
    assert receiver.deliveries == [] and world.bus.events == []


def test_without_consent_b_gets_nothing(world, receiver):
    pa, pb = world.patient(A), world.patient(B)
    world.subscribe(B, f"Observation?patient={pb}")
    _, event = world.observe(A, pa)
    report = world.notifier.handle(event)
    assert report.delivered == [] and report.events == []
    assert receiver.deliveries == []


def test_a_failing_endpoint_is_retried_then_dead_lettered_and_shown_on_the_subscription(world, receiver):
    patient = world.patient(A)
    subscription_id = world.subscribe(A, f"Observation?patient={patient}")
    receiver.fail(times=3, status=503)
    _, event = world.observe(A, patient)
    report = world.notifier.handle(event)
    assert report.failed == [f"{A}/Subscription/{subscription_id}"]
    assert len(receiver.wait_for(3)) == 3
    assert len(world.naps) == 2 and world.naps[1] > world.naps[0]  # back-off grows
    assert len(world.dead) == 1
    stored = world.store.current(A, "Subscription", subscription_id)
    assert stored is not None and stored.body is not None
    assert stored.body["status"] == "error" and "503" in stored.body["error"]
    # The next delivery succeeds: the subscription is active again.
    _, event = world.observe(A, patient)
    assert world.notifier.handle(event).delivered
    stored = world.store.current(A, "Subscription", subscription_id)
    assert stored is not None and stored.body is not None
    assert stored.body["status"] == "active" and "error" not in stored.body


def test_a_subscription_to_another_tenant_endpoint_is_refused(world):
    from ehr.fhir.outcome import OperationOutcomeError

    strict = FhirService(world.store, subscriptions=AllowList({A: ("https://hooks.example.org/a/",)}))
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "x",
        "criteria": "Observation?code=1",
        "channel": {"type": "rest-hook", "endpoint": "https://evil.example.com/a/"},
    }
    with pytest.raises(OperationOutcomeError) as refused:
        strict.create(A, "Subscription", body, access=world.client(A))
    assert refused.value.status == 422
