"""Each step of the lab-order workflow on fakes: what the chart, the Task and the lab see.

The lab is a recording double of its webhook (the external system); everything else is real:
the FHIR service, transactions and search on the in-memory store.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from ehr.fhir.bundles import BundleProcessor
from ehr.fhir.cursors import CursorCodec
from ehr.fhir.searching import SearchEngine
from ehr.fhir.service import FhirService
from ehr.hl7v2 import er7
from ehr.labs import webhook
from ehr.labs.ports import InMemoryLabOrders, InMemoryPartners, Partner, RecordingSignals
from ehr.labs.workflow import TASK_SYSTEM, DeliveryError, LabWorkflow
from ehr.store.memory import InMemoryRecordStore

TENANT = "clinic-a"
SECRET = b"partner-secret"


class Lab:
    """The lab's webhook as the workflow meets it: records what it got, answers as told."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes, str]] = []
        self.answer = "AA"
        self.down = False

    def __call__(
        self, url: str, body: bytes, *, secret: bytes, delivery_id: str, timeout: float = 10.0
    ) -> webhook.DeliveryResult:
        if self.down:
            raise webhook.DeliveryError("the partner could not be reached (ConnectionRefusedError)")
        assert secret == SECRET
        self.received.append((url, body, delivery_id))
        reason = "" if self.answer == "AA" else "Test not offered"
        return webhook.DeliveryResult(self.answer == "AA", self.answer, reason, 200)


class World:
    def __init__(self) -> None:
        self.store = InMemoryRecordStore()
        fhir = FhirService(self.store)
        self.search = SearchEngine(self.store, CursorCodec(b"unit-test-cursor-secret-32-bytes!!"))
        self.bundles = BundleProcessor(fhir, self.search)
        self.fhir = fhir
        self.orders = InMemoryLabOrders()
        self.partners = InMemoryPartners()
        self.partners.register(TENANT, Partner("acme-lab", "https://lab.example/orders", "acme-secret"))
        self.signals = RecordingSignals()
        self.lab = Lab()
        self.workflow = LabWorkflow(
            store=self.store,
            bundles=self.bundles,
            orders=self.orders,
            partners=self.partners,
            signals=self.signals,
            secret=lambda name: SECRET,
            result_timeout_seconds=3600,
            deliver=self.lab,
            clock=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        )

    def create(self, resource: dict[str, Any]) -> str:
        stored = self.fhir.create(TENANT, resource["resourceType"], resource).stored
        assert stored is not None
        return stored.id

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        stored = self.store.current(TENANT, resource_type, resource_id)
        assert stored is not None and stored.body is not None
        return stored.body

    def task(self, sr_id: str) -> dict[str, Any]:
        found = self.search.find(TENANT, "Task", f"identifier={TASK_SYSTEM}|{sr_id}", limit=2, header="t")
        assert len(found) == 1
        assert found[0].body is not None
        return found[0].body

    def order(self, **changes: Any) -> str:
        patient = self.create(
            {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:test:mrn", "value": uuid.uuid4().hex[:8]}],
                "name": [{"family": "Labtest", "given": ["Pat"]}],
                "birthDate": "1980-01-01",
                "gender": "female",
            }
        )
        doctor = self.create(
            {
                "resourceType": "Practitioner",
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
                "name": [{"family": "Orderer", "given": ["Dana"]}],
            }
        )
        lab = self.create(
            {
                "resourceType": "Organization",
                "identifier": [{"system": "urn:ehr:partner", "value": "acme-lab"}],
                "name": "ACME Laboratory",
            }
        )
        request = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://snomed.info/sct",
                            "code": "108252007",
                            "display": "Laboratory procedure",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "requester": {"reference": f"Practitioner/{doctor}"},
            "performer": [{"reference": f"Organization/{lab}"}],
            "authoredOn": "2026-01-02T03:00:00Z",
        } | changes
        return self.create({k: v for k, v in request.items() if v is not None})

    def event(self, step: str, sr_id: str, **extra: Any) -> dict[str, Any]:
        return {
            "step": step,
            "order": {"tenant": TENANT, "serviceRequestId": sr_id, "timeoutSeconds": 3600},
            **extra,
        }


@pytest.fixture
def world() -> World:
    return World()


def claim(world: World, sr_id: str, execution: str = "exec-1") -> dict[str, Any]:
    return world.workflow.run(
        {"step": "claim", "tenant": TENANT, "serviceRequestId": sr_id, "execution": execution}
    )


def test_claim_validates_the_order_and_opens_its_task(world: World) -> None:
    sr = world.order()
    answer = claim(world, sr)
    assert answer["outcome"] == "ok"
    assert answer["timeoutSeconds"] == 3600
    task = world.task(sr)
    assert task["status"] == "requested"
    assert task["focus"]["reference"] == f"ServiceRequest/{sr}"
    assert task["id"] == answer["taskId"]


def test_a_second_execution_for_the_same_order_is_a_duplicate(world: World) -> None:
    sr = world.order()
    assert claim(world, sr, "exec-1")["outcome"] == "ok"
    assert claim(world, sr, "exec-2")["outcome"] == "duplicate"
    assert claim(world, sr, "exec-1")["outcome"] == "ok"  # a retry of the first execution's step


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "draft"}, "status"),
        ({"code": {"text": "glucose"}}, "LOINC"),
        ({"category": [{"text": "imaging"}]}, "laboratory"),
        ({"performer": None}, "performer"),
    ],
)
def test_an_invalid_order_fails_with_the_reason_on_its_task(
    world: World, changes: dict[str, Any], reason: str
) -> None:
    sr = world.order(**changes)
    answer = claim(world, sr)
    assert answer["outcome"] == "invalid"
    assert reason in answer["reason"]
    task = world.task(sr)
    assert task["status"] == "failed"
    assert reason in task["statusReason"]["text"]
    assert world.lab.received == []


def test_send_delivers_one_orm_that_names_the_order_and_a_retry_sends_the_same(world: World) -> None:
    sr = world.order()
    claim(world, sr)
    first = world.workflow.run(world.event("send", sr))
    world.workflow.run(world.event("send", sr))  # a retry of the step
    assert first["accepted"] is True
    assert first["placer"] == sr
    (url, body, delivery), (_, body2, delivery2) = world.lab.received
    assert url == "https://lab.example/orders"
    assert body == body2 and delivery == delivery2  # same control id and delivery id on a retry
    message = er7.parse(body.decode())
    assert (message.message_type, message.trigger_event) == ("ORM", "O01")
    assert message.first("ORC").get(1) == "NW"
    assert message.first("OBR").get(2) == sr
    assert message.first("OBR").get(4) == "2345-7"
    assert world.orders.by_placer("acme-lab", sr) is not None
    assert world.task(sr)["status"] == "accepted"


def test_an_unreachable_lab_raises_delivery_error_for_the_state_machine_to_retry(world: World) -> None:
    sr = world.order()
    claim(world, sr)
    world.lab.down = True
    with pytest.raises(DeliveryError):
        world.workflow.run(world.event("send", sr))


def test_a_rejection_revokes_the_order_with_the_labs_reason(world: World) -> None:
    sr = world.order()
    claim(world, sr)
    world.lab.answer = "AR"
    sent = world.workflow.run(world.event("send", sr))
    assert sent["accepted"] is False
    world.workflow.run(world.event("revoke", sr, reason=sent["reason"]))
    request = world.read("ServiceRequest", sr)
    assert request["status"] == "revoked"
    assert "Test not offered" in request["note"][-1]["text"]
    assert world.task(sr)["status"] == "rejected"


def test_await_keeps_the_token_and_a_result_resumes_it(world: World) -> None:
    sr = world.order()
    claim(world, sr)
    world.workflow.run(world.event("send", sr))
    world.workflow.run(world.event("await", sr, token="token-1"))
    assert world.task(sr)["status"] == "in-progress"
    entry = world.orders.by_placer("acme-lab", sr)
    assert entry is not None
    assert world.workflow.result_arrived(entry, {"status": "final", "critical": False, "reportId": "r1"})
    assert world.signals.sent == [
        ("token-1", {"event": "result", "status": "final", "critical": False, "reportId": "r1"})
    ]
    # a second copy of the result resumes nothing: the step it would resume has already moved on
    world.workflow.result_arrived(entry, {"status": "final", "critical": False, "reportId": "r1"})
    assert len(world.signals.sent) == 1


def test_a_result_that_arrives_before_the_wait_resumes_the_wait_at_once(world: World) -> None:
    sr = world.order()
    claim(world, sr)
    world.workflow.run(world.event("send", sr))
    entry = world.orders.by_placer("acme-lab", sr)
    assert entry is not None
    world.workflow.result_arrived(entry, {"status": "final", "critical": True, "reportId": "r2"})
    assert world.signals.sent == []
    answer = world.workflow.run(world.event("await", sr, token="late-token"))
    assert answer == {"waiting": False}
    assert world.signals.sent == [
        ("late-token", {"event": "result", "status": "final", "critical": True, "reportId": "r2"})
    ]


def test_complete_closes_the_order_and_a_critical_result_escalates(world: World) -> None:
    sr = world.order()
    claim(world, sr)
    done = world.workflow.run(
        world.event("complete", sr, result={"status": "final", "critical": True, "reportId": "r9"})
    )
    assert done == {"critical": True, "reportId": "r9"}
    assert world.read("ServiceRequest", sr)["status"] == "completed"
    task = world.task(sr)
    assert task["status"] == "completed"
    assert task["output"][0]["valueReference"]["reference"] == "DiagnosticReport/r9"
    world.workflow.run(world.event("escalate", sr, reportId="r9"))
    world.workflow.run(world.event("escalate", sr, reportId="r9"))  # retried: still one escalation
    escalations = world.search.find(
        TENANT, "Task", "identifier=urn:ehr:critical-result|r9", limit=5, header="t"
    )
    assert len(escalations) == 1
    body = escalations[0].body or {}
    assert body["priority"] == "stat"
    assert body["owner"]["reference"].startswith("Practitioner/")


def test_hold_and_cancel(world: World) -> None:
    sr = world.order()
    claim(world, sr)
    world.workflow.run(world.event("hold", sr))
    assert world.read("ServiceRequest", sr)["status"] == "on-hold"
    assert world.task(sr)["status"] == "on-hold"
    other = world.order()
    claim(world, other, "exec-2")
    world.workflow.run(world.event("send", other))
    world.workflow.run(world.event("await", other, token="t-2"))
    assert world.workflow.cancelled(TENANT, other)
    assert world.signals.sent[-1] == ("t-2", {"event": "cancelled"})
    world.workflow.run(world.event("cancel", other))
    cancel_message = er7.parse(world.lab.received[-1][1].decode())
    assert cancel_message.first("ORC").get(1) == "CA"
    assert cancel_message.first("ORC").get(2) == other
    assert world.task(other)["status"] == "cancelled"


def test_a_failed_execution_marks_the_task_failed_with_the_error(world: World) -> None:
    sr = world.order()
    claim(world, sr)
    state = {
        "order": {"tenant": TENANT, "serviceRequestId": sr},
        "error": {"Error": "States.TaskFailed", "Cause": "the store was unavailable"},
    }
    world.workflow.run({"step": "fail", "input": state})
    task = world.task(sr)
    assert task["status"] == "failed"
    assert "States.TaskFailed" in task["statusReason"]["text"]
    # an execution that failed before it knew its order changes nothing and does not fail again
    assert world.workflow.run({"step": "fail", "input": {"detail": {}}}) == {}


def test_an_unknown_step_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown workflow step"):
        World().workflow.run({"step": "teleport"})


def test_an_order_whose_patient_cannot_be_sent_is_invalid_at_claim(world: World) -> None:
    sr = world.order()
    patient = world.read("ServiceRequest", sr)["subject"]["reference"].split("/")[1]
    body = world.read("Patient", patient)
    nameless = {k: v for k, v in body.items() if k not in ("name", "meta")}
    world.fhir.update(TENANT, "Patient", patient, nameless)
    answer = claim(world, sr)
    assert answer["outcome"] == "invalid"
    assert "PID-5" in answer["reason"]
    assert world.task(sr)["status"] == "failed"
    assert world.lab.received == []
