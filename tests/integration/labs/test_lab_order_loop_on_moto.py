"""The lab-order loop in-process: FHIR API → records stream → change publisher → bus → the real
ASL on Step Functions (moto) → the real workflow handler → a lab's webhook → ORU on the HL7
endpoint → results in the clinic's chart → the workflow completes.

The lab here is a small webhook in the test (it checks the HMAC signature and answers AA or AR);
the full simulator plays it in the e2e tests.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest

from ehr.hl7v2 import er7
from ehr.labs import webhook
from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer
from infra.local.platform import LocalPlatform, seed_lab_partner

CLINIC = "clinic-a"
SCOPE = "user/*.cruds"


class StubLab:
    """A lab webhook: verifies the signature, records the ORM, answers with ``self.answer``."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.orders: list[er7.Message] = []
        self.answer = "AA"
        lab = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not webhook.verify(
                    lab.secret,
                    self.headers.get(webhook.TIMESTAMP_HEADER, ""),
                    body,
                    self.headers.get(webhook.SIGNATURE_HEADER, ""),
                ):
                    self.send_response(401)
                    self.end_headers()
                    return
                message = er7.parse(body.decode())
                lab.orders.append(message)
                text = "" if lab.answer == "AA" else "Test not offered"
                ack = f"MSH|^~\\&|ACMELAB|acme-lab|EHR|x|20260101||ACK^O01^ACK|A{len(lab.orders)}|P|2.5.1\r"
                ack += f"MSA|{lab.answer}|{message.control_id}|{text}"
                payload = ack.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/orders"


@pytest.fixture(scope="module")
def lab(platform: LocalPlatform) -> Iterator[StubLab]:
    stub = StubLab(secrets.token_bytes(16).hex().encode())
    assert platform.resources is not None
    seed_lab_partner(platform.resources, stub.url, stub.secret)
    yield stub
    stub.server.shutdown()


def call(gateway: LocalGateway, token: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
    payload = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    result = gateway.handle(
        method,
        path,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/fhir+json",
            "Host": "localhost",
        }
        | headers,
        body=payload,
    )
    return result.status, (
        json.loads(result.body) if result.body[:1] in (b"{", b"[") else result.body.decode()
    )


def wait_for(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def place_order(gateway: LocalGateway, token: str, note: str = "") -> tuple[str, str]:
    def create(resource: dict[str, Any]) -> str:
        status, body = call(
            gateway, token, "POST", f"/tenants/{CLINIC}/fhir/{resource['resourceType']}", resource
        )
        assert status == 201, body
        return str(body["id"])

    mrn = uuid.uuid4().hex[:10]
    patient = create(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:test:mrn", "value": mrn}],
            "name": [{"family": "Looptest", "given": ["Lab"]}],
            "birthDate": "1975-05-05",
            "gender": "male",
        }
    )
    doctor = create(
        {
            "resourceType": "Practitioner",
            "name": [{"family": "Orderer"}],
            "identifier": [{"system": "urn:test:npi", "value": mrn}],
        }
    )
    _, found = call(
        gateway, token, "GET", f"/tenants/{CLINIC}/fhir/Organization?identifier=urn:ehr:partner|acme-lab"
    )
    lab_org = found["entry"][0]["resource"]["id"]
    order = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "requester": {"reference": f"Practitioner/{doctor}"},
        "performer": [{"reference": f"Organization/{lab_org}"}],
    }
    if note:
        order["note"] = [{"text": note}]
    return create(order), mrn


def task_of(gateway: LocalGateway, token: str, sr: str) -> dict[str, Any] | None:
    _, bundle = call(gateway, token, "GET", f"/tenants/{CLINIC}/fhir/Task?identifier=urn:ehr:lab-order|{sr}")
    entries = bundle.get("entry") or []
    return entries[0]["resource"] if entries else None


def oru(placer: str, mrn: str, *, status: str = "F", flag: str = "N", value: str = "92") -> bytes:
    control = uuid.uuid4().hex[:16]
    return "\r".join(
        [
            f"MSH|^~\\&|ACMELAB|acme-lab|EHR|{CLINIC}|20260101120000||ORU^R01^ORU_R01|{control}|P|2.5.1",
            f"PID|1||{mrn}^^^LAB^MR||LOOPTEST^LAB||19750505|M",
            f"ORC|RE|{placer}^{CLINIC}|F-{placer[:8]}^ACME",
            f"OBR|1|{placer}^{CLINIC}|F-{placer[:8]}^ACME|2345-7^Glucose^LN|||20260101110000|||||||||||||||20260101120000|||{status}",
            f"OBX|1|NM|2345-7^Glucose^LN||{value}|mg/dL|70-99|{flag}|||{status}|||20260101110000",
        ]
    ).encode()


class Listener:
    """Everything the platform publishes on its bus, through an SQS queue rule (as a subscriber would)."""

    def __init__(self, platform: LocalPlatform) -> None:
        assert platform.resources is not None
        self.sqs = boto3.client("sqs")
        self.url = self.sqs.create_queue(QueueName=f"listener-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        bus = boto3.client("events")
        rule = f"listener-{uuid.uuid4().hex[:8]}"
        bus.put_rule(
            Name=rule,
            EventBusName=platform.resources.event_bus_name,
            EventPattern=json.dumps({"source": ["ehr.platform"]}),
        )
        bus.put_targets(
            Rule=rule, EventBusName=platform.resources.event_bus_name, Targets=[{"Id": "q", "Arn": arn}]
        )
        self.events: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        while True:
            batch = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return self.events
            for message in batch:
                self.events.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])

    def of(self, detail_type: str, **detail: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.drain()
            if e["detail-type"] == detail_type and all(e["detail"].get(k) == v for k, v in detail.items())
        ]


@pytest.fixture(scope="module")
def listener(platform: LocalPlatform) -> Listener:
    return Listener(platform)


@pytest.fixture(scope="module")
def clinic_token(issuer: DevIssuer) -> str:
    return issuer.mint(tenant=CLINIC, scope=SCOPE)


@pytest.fixture(scope="module")
def lab_token(issuer: DevIssuer) -> str:
    return issuer.mint(tenant="acme-lab", scope="system/*.cruds", client_id="acme-lab-system")


def test_an_order_goes_to_the_lab_and_its_results_come_back_into_the_chart(
    gateway: LocalGateway,
    lab: StubLab,
    clinic_token: str,
    lab_token: str,
    platform: LocalPlatform,
    listener: Listener,
) -> None:
    # Given a lab order placed through the FHIR API
    sr, mrn = place_order(gateway, clinic_token)
    # Then exactly one ORM reaches the lab, naming the order
    orm = wait_for(lambda: next((o for o in lab.orders if o.first("OBR").get(2) == sr), None))
    assert orm.first("ORC").get(1) == "NW"
    wait_for(lambda: (task_of(gateway, clinic_token, sr) or {}).get("status") == "in-progress")
    # When the lab sends the result to its own HL7 endpoint
    status, ack = call(
        gateway,
        lab_token,
        "POST",
        "/tenants/acme-lab/hl7v2",
        oru(sr, mrn),
        **{"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert status == 200 and "MSA|AA" in ack, ack
    # Then the clinic's chart has the report, based on the order, on the order's patient
    _, reports = call(
        gateway, clinic_token, "GET", f"/tenants/{CLINIC}/fhir/DiagnosticReport?based-on=ServiceRequest/{sr}"
    )
    report = reports["entry"][0]["resource"]
    _, order = call(gateway, clinic_token, "GET", f"/tenants/{CLINIC}/fhir/ServiceRequest/{sr}")
    assert report["subject"] == order["subject"]
    # And the workflow completes the order and its Task
    wait_for(lambda: (task_of(gateway, clinic_token, sr) or {}).get("status") == "completed")
    _, order = call(gateway, clinic_token, "GET", f"/tenants/{CLINIC}/fhir/ServiceRequest/{sr}")
    assert order["status"] == "completed"
    assert len([o for o in lab.orders if o.first("OBR").get(2) == sr]) == 1
    # And no second patient was made from the lab's copy of the demographics
    _, patients = call(gateway, clinic_token, "GET", f"/tenants/{CLINIC}/fhir/Patient?identifier={mrn}")
    assert len(patients.get("entry", [])) == 1
    executions = boto3.client("stepfunctions").list_executions(
        stateMachineArn=platform.resources.lab_order_state_machine_arn  # type: ignore[union-attr]
    )["executions"]
    assert any(e["status"] == "SUCCEEDED" for e in executions)
    # And the bus carried the order's story: requested, the result available; ids only
    assert listener.of("LabOrderRequested", tenant=CLINIC, serviceRequestId=sr)
    available = wait_for(lambda: listener.of("LabResultAvailable", tenant=CLINIC, serviceRequestId=sr))
    assert available[0]["detail"]["diagnosticReportId"] == report["id"]
    changed = listener.of("ResourceChanged", tenant=CLINIC, resourceType="DiagnosticReport", id=report["id"])
    assert changed and changed[0]["detail"]["patients"] == [order["subject"]["reference"]]
    assert "Looptest" not in json.dumps(listener.events)  # no PHI on the bus


def test_a_critical_result_escalates_and_is_announced(
    gateway: LocalGateway, lab: StubLab, clinic_token: str, lab_token: str, listener: Listener
) -> None:
    sr, mrn = place_order(gateway, clinic_token)
    wait_for(lambda: (task_of(gateway, clinic_token, sr) or {}).get("status") == "in-progress")
    status, ack = call(
        gateway,
        lab_token,
        "POST",
        "/tenants/acme-lab/hl7v2",
        oru(sr, mrn, flag="HH", value="600"),
        **{"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert status == 200 and "MSA|AA" in ack, ack
    critical = wait_for(lambda: listener.of("CriticalLabResult", tenant=CLINIC, serviceRequestId=sr))
    report_id = critical[0]["detail"]["diagnosticReportId"]
    _, tasks = call(
        gateway,
        clinic_token,
        "GET",
        f"/tenants/{CLINIC}/fhir/Task?identifier=urn:ehr:critical-result|{report_id}",
    )
    assert tasks["entry"][0]["resource"]["priority"] == "stat"


def test_a_rejected_order_is_revoked_with_the_labs_reason(
    gateway: LocalGateway, lab: StubLab, clinic_token: str, listener: Listener
) -> None:
    lab.answer = "AR"
    try:
        sr, _ = place_order(gateway, clinic_token)
        wait_for(lambda: (task_of(gateway, clinic_token, sr) or {}).get("status") == "rejected")
    finally:
        lab.answer = "AA"
    _, order = call(gateway, clinic_token, "GET", f"/tenants/{CLINIC}/fhir/ServiceRequest/{sr}")
    assert order["status"] == "revoked"
    assert "Test not offered" in order["note"][-1]["text"]
    assert wait_for(lambda: listener.of("LabOrderRejected", tenant=CLINIC, serviceRequestId=sr))


def test_a_result_that_matches_no_order_is_kept_for_review(gateway: LocalGateway, lab_token: str) -> None:
    placer = uuid.uuid4().hex
    status, ack = call(
        gateway,
        lab_token,
        "POST",
        "/tenants/acme-lab/hl7v2",
        oru(placer, "nobody"),
        **{"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert status == 200 and "MSA|AA" in ack
    assert "no order" in ack
    _, tasks = call(
        gateway,
        lab_token,
        "GET",
        f"/tenants/acme-lab/fhir/Task?identifier=urn:ehr:unmatched-result|F-{placer[:8]}",
    )
    assert len(tasks.get("entry", [])) == 1


def test_resent_results_and_results_from_another_tenant_do_not_touch_the_chart_twice(
    gateway: LocalGateway, lab: StubLab, clinic_token: str, lab_token: str, issuer: DevIssuer
) -> None:
    sr, mrn = place_order(gateway, clinic_token)
    wait_for(lambda: (task_of(gateway, clinic_token, sr) or {}).get("status") == "in-progress")
    message = oru(sr, mrn)
    hl7 = {"Content-Type": "x-application/hl7-v2+er7"}
    first = call(gateway, lab_token, "POST", "/tenants/acme-lab/hl7v2", message, **hl7)
    again = call(gateway, lab_token, "POST", "/tenants/acme-lab/hl7v2", message, **hl7)
    assert first == again  # the lab's resend gets the original ACK
    # a tenant the order was not sent to uses the same placer number on its own endpoint
    other = issuer.mint(tenant="clinic-b", scope="system/*.cruds")
    status, ack = call(gateway, other, "POST", "/tenants/clinic-b/hl7v2", oru(sr, mrn, value="999"), **hl7)
    assert status == 200 and "MSA|AA" in ack
    wait_for(lambda: (task_of(gateway, clinic_token, sr) or {}).get("status") == "completed")
    _, reports = call(
        gateway, clinic_token, "GET", f"/tenants/{CLINIC}/fhir/DiagnosticReport?based-on=ServiceRequest/{sr}"
    )
    assert len(reports["entry"]) == 1
    _, observations = call(
        gateway, clinic_token, "GET", f"/tenants/{CLINIC}/fhir/Observation?based-on=ServiceRequest/{sr}"
    )
    assert [o["resource"]["valueQuantity"]["value"] for o in observations["entry"]] == [92]
