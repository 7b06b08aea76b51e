"""The demo lab (`infra/local/lab_simulator.py`) as the platform sees it.

The simulator runs on a free port against a stand-in for the platform's HL7 v2 endpoint (a small
HTTP server in this module that records every ORU it receives and answers an ACK built with
python-hl7). Orders are real ORM^O01 messages from ``ehr.hl7v2.orm``, signed like the platform
signs them (``ehr.labs.webhook``) and POSTed with urllib. Waiting is by polling; nothing asserts
on how long anything took.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hl7
import jwt
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from ehr.hl7v2.orm import OrderEnvelope, OrderResources, build_cancel_order, build_new_order
from ehr.labs import webhook
from infra.local.lab_simulator import REJECT_REASON, LabSimulator

SECRET = b"test-secret-not-a-real-one"
HL7_TYPE = "x-application/hl7-v2+er7"
DELAY = 0.05
SAFETY_SECONDS = 30  # a broken simulator fails the test instead of hanging it; never asserted on
BIN = Path(sys.executable).parent


# --- the platform's HL7 endpoint, stood in -------------------------------------------------------


@dataclass
class Posted:
    path: str
    authorization: str
    content_type: str
    body: str


@dataclass
class StandInPlatform:
    """Records each ORU; answers `failures` statuses first (one per request), then python-hl7 ACKs."""

    failures: list[int] = field(default_factory=list)
    posted: list[Posted] = field(default_factory=list)

    def __post_init__(self) -> None:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                platform.posted.append(
                    Posted(
                        self.path,
                        self.headers.get("Authorization", ""),
                        self.headers.get("Content-Type", ""),
                        body,
                    )
                )
                if platform.failures:
                    status, payload = platform.failures.pop(0), b"busy"
                else:
                    ack = hl7.parse(body).create_ack("AA", application="EHR", facility="acme-lab")
                    status, payload = 200, str(ack).encode()
                self.send_response(status)
                self.send_header("Content-Type", HL7_TYPE)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def results(self) -> list[hl7.Message]:
        return [hl7.parse(p.body) for p in self.posted]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandInPlatform]:
    fake = StandInPlatform()
    yield fake
    fake.close()


@pytest.fixture
def make_lab(stand_in: StandInPlatform) -> Iterator[Callable[..., LabSimulator]]:
    started: list[LabSimulator] = []

    def make(**options: Any) -> LabSimulator:
        values: dict[str, Any] = {"delay": DELAY, "followup_delay": DELAY, "retry_delays": (0.05, 0.1)}
        lab = LabSimulator(stand_in.base, SECRET, lambda: "lab-token", **(values | options))
        lab.start("127.0.0.1", 0)
        started.append(lab)
        return lab

    yield make
    for lab in started:
        lab.stop()


@pytest.fixture
def lab(make_lab: Callable[..., LabSimulator]) -> LabSimulator:
    return make_lab()


# --- orders, as the platform sends them --------------------------------------------------------


def resources(
    *, note: str | None = None, code: str = "2345-7", sr_id: str = "sr-1", placer: str | None = None
) -> OrderResources:
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": sr_id,
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": "Ordered test"}]},
        "subject": {"reference": "Patient/fake-1"},
        "authoredOn": "2025-03-14T09:00:00-05:00",
    }
    if note is not None:
        request["note"] = [{"text": "Fasting sample."}, {"text": note}]
    if placer is not None:
        request["identifier"] = [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]
                },
                "value": placer,
            }
        ]
    patient = {
        "resourceType": "Patient",
        "id": "fake-1",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-0001"}],
        "name": [{"family": "Testpatient", "given": ["Fakeperson"]}],
        "gender": "female",
        "birthDate": "1990-01-01",
    }
    return OrderResources(service_request=request, patient=patient)


def envelope(control_id: str) -> OrderEnvelope:
    return OrderEnvelope(
        sending_facility="clinic-a",
        receiving_facility="acme-lab",
        receiving_application="ACMELAB",
        message_control_id=control_id,
        clock=lambda: datetime.now(UTC),
    )


def new_order(control_id: str = "ORM-1", **order: Any) -> str:
    return build_new_order(envelope(control_id), resources(**order))


def cancel_order(control_id: str = "ORM-2", **order: Any) -> str:
    return build_cancel_order(envelope(control_id), resources(**order), reason="Ordered in error")


@dataclass
class Reply:
    status: int
    body: str

    @property
    def ack(self) -> tuple[str | None, str]:
        return webhook.read_ack(self.body.encode())


def deliver(
    lab: LabSimulator, message: str, *, secret: bytes = SECRET, delivery: str = "d-1", sign: bool = True
) -> Reply:
    body = message.encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": HL7_TYPE,
        webhook.TIMESTAMP_HEADER: timestamp,
        webhook.DELIVERY_HEADER: delivery,
    }
    if sign:
        headers[webhook.SIGNATURE_HEADER] = webhook.signature(secret, timestamp, body)
    request = urllib.request.Request(lab.url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=SAFETY_SECONDS) as reply:
            return Reply(reply.status, reply.read().decode())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read().decode())


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + SAFETY_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def settled(lab: LabSimulator, count: int) -> bool:
    """`count` results recorded and nothing left scheduled."""
    return len(lab.results) >= count and lab.pending() == 0


def field_of(message: hl7.Message, segment: str, number: int, occurrence: int = 0) -> str:
    return str(message.segments(segment)[occurrence][number])


def placer_of(orm: str) -> str:
    """ORC-2 as the ORM carries it (ER7, all components)."""
    return next(line for line in orm.split("\r") if line.startswith("ORC")).split("|")[2]


# --- the scenarios -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("note", "flag"),
    [(None, "N"), ("simulate=normal", "N"), ("Please SIMULATE=Abnormal", "H"), ("simulate=critical", "HH")],
)
def test_one_final_result_flagged_as_the_scenario_says(
    lab: LabSimulator, stand_in: StandInPlatform, note: str | None, flag: str
) -> None:
    orm = new_order(note=note)
    reply = deliver(lab, orm)
    assert reply.status == 200
    assert reply.ack == ("AA", "Order accepted")
    wait_for(lambda: settled(lab, 1), "the result")
    (oru,) = stand_in.results()
    assert field_of(oru, "MSH", 9) == "ORU^R01^ORU_R01"
    assert field_of(oru, "OBR", 2) == field_of(oru, "ORC", 2) == placer_of(orm) == "sr-1^clinic-a"
    assert field_of(oru, "OBR", 25) == "F"
    assert [field_of(oru, "OBX", 8)] == [flag]
    assert field_of(oru, "OBX", 3) == "2345-7^Glucose [Mass/volume] in Serum or Plasma^LN"
    assert field_of(oru, "OBX", 6).startswith("mg/dL^")
    assert field_of(oru, "OBX", 7) == "70-99"
    assert lab.results[0].flags == (flag,)
    assert lab.results[0].ack_code == "AA"


def test_the_result_message_is_addressed_and_identified_as_a_lab_expects(
    lab: LabSimulator, stand_in: StandInPlatform
) -> None:
    orm = new_order()
    deliver(lab, orm)
    wait_for(lambda: settled(lab, 1), "the result")
    posted = stand_in.posted[0]
    assert posted.path == "/tenants/acme-lab/hl7v2"
    assert posted.authorization == "Bearer lab-token"
    assert posted.content_type == HL7_TYPE
    oru = stand_in.results()[0]
    assert (field_of(oru, "MSH", 3), field_of(oru, "MSH", 4)) == ("ACMELAB", "acme-lab")
    assert (field_of(oru, "MSH", 5), field_of(oru, "MSH", 6)) == ("EHR", "clinic-a")
    assert field_of(oru, "MSH", 12) == "2.5.1"
    assert next(s for s in orm.split("\r") if s.startswith("PID")) in posted.body.split("\r")
    assert field_of(oru, "ORC", 1) == "RE"
    assert field_of(oru, "ORC", 3) == field_of(oru, "OBR", 3) != ""
    assert field_of(oru, "OBR", 4) == "2345-7^Ordered test^LN"
    assert re.fullmatch(r"\d{14}\+0000", field_of(oru, "OBR", 7))
    assert re.fullmatch(r"\d{14}\+0000", field_of(oru, "OBR", 22))
    # A strict reader of HL7 v2.5.1 accepts it as an ORU^R01 with every segment in its place.
    strict = parse_message(posted.body, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert strict.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR.OBR_25.value == "F"


def test_preliminary_then_final_with_the_same_filler_number_and_result_identity(
    lab: LabSimulator, stand_in: StandInPlatform
) -> None:
    orm = new_order(note="simulate=preliminary-final")
    assert deliver(lab, orm).ack[0] == "AA"
    wait_for(lambda: settled(lab, 2), "both results")
    preliminary, final = stand_in.results()
    assert [field_of(m, "OBR", 25) for m in (preliminary, final)] == ["P", "F"]
    assert [field_of(m, "OBX", 11) for m in (preliminary, final)] == ["P", "F"]
    assert field_of(preliminary, "OBR", 3) == field_of(final, "OBR", 3)
    assert field_of(preliminary, "OBX", 3) == field_of(final, "OBX", 3)
    assert field_of(final, "OBR", 2) == placer_of(orm)
    assert field_of(preliminary, "MSH", 10) != field_of(final, "MSH", 10)


def test_a_correction_follows_the_final_with_another_value(
    lab: LabSimulator, stand_in: StandInPlatform
) -> None:
    assert deliver(lab, new_order(note="simulate=corrected")).ack[0] == "AA"
    wait_for(lambda: settled(lab, 2), "the final and the correction")
    final, corrected = stand_in.results()
    assert [field_of(m, "OBR", 25) for m in (final, corrected)] == ["F", "C"]
    assert field_of(corrected, "OBX", 11) == "C"
    assert field_of(final, "OBR", 3) == field_of(corrected, "OBR", 3)
    assert field_of(final, "OBX", 3) == field_of(corrected, "OBX", 3)
    assert field_of(final, "OBX", 5) != field_of(corrected, "OBX", 5)


def test_reject_answers_ar_with_a_reason_and_sends_nothing(
    lab: LabSimulator, stand_in: StandInPlatform
) -> None:
    reply = deliver(lab, new_order(note="simulate=reject"))
    assert reply.status == 200
    code, reason = reply.ack
    assert code == "AR"
    assert reason == REJECT_REASON  # MSA-3 and ERR-8 say the same
    err = hl7.parse(reply.body).segments("ERR")[0]
    assert str(err[8]) == REJECT_REASON
    assert lab.pending() == 0
    assert lab.results == []
    assert stand_in.posted == []


def test_silent_accepts_and_never_answers(lab: LabSimulator, stand_in: StandInPlatform) -> None:
    assert deliver(lab, new_order(note="simulate=silent")).ack == ("AA", "Order accepted")
    assert lab.pending() == 0  # nothing scheduled: no result will ever come
    assert lab.orders[0].scenario == "silent"
    assert stand_in.posted == []


def test_an_unknown_scenario_is_refused_with_the_ones_that_exist(lab: LabSimulator) -> None:
    code, reason = deliver(lab, new_order(note="simulate=critcal")).ack
    assert code == "AR"
    assert "'critcal'" in reason
    assert "preliminary-final" in reason
    assert lab.pending() == 0


def test_a_panel_reports_each_analyte_and_an_unknown_test_a_generic_value(
    lab: LabSimulator, stand_in: StandInPlatform
) -> None:
    deliver(lab, new_order("ORM-1", code="58410-2", sr_id="sr-cbc"), delivery="d-1")
    deliver(lab, new_order("ORM-2", code="99999-9", sr_id="sr-odd"), delivery="d-2")
    wait_for(lambda: settled(lab, 2), "both results")
    by_placer = {field_of(m, "OBR", 2): m for m in stand_in.results()}
    cbc, odd = by_placer["sr-cbc^clinic-a"], by_placer["sr-odd^clinic-a"]
    assert [str(obx[3][0][0]) for obx in cbc.segments("OBX")] == ["6690-2", "718-7", "777-3"]
    assert [str(obx[8]) for obx in cbc.segments("OBX")] == ["N", "N", "N"]
    (obx,) = odd.segments("OBX")
    assert str(obx[3]) == "99999-9^Ordered test^LN"
    assert str(obx[2]) == "NM"
    assert str(obx[6]) and str(obx[7])


def test_a_placer_number_with_delimiters_is_echoed_exactly(
    lab: LabSimulator, stand_in: StandInPlatform
) -> None:
    orm = new_order(placer="PL|7^A&B")
    deliver(lab, orm)
    wait_for(lambda: settled(lab, 1), "the result")
    oru = stand_in.results()[0]
    assert field_of(oru, "OBR", 2) == field_of(oru, "ORC", 2) == placer_of(orm)
    assert str(oru.segments("OBR")[0][2][0][0]) == r"PL\F\7\S\A\T\B"  # escaped, as in the order


# --- signatures, cancellations, resends, retries -------------------------------------------------


@pytest.mark.parametrize(
    "how", [{"secret": b"another-secret"}, {"sign": False}], ids=["wrong-secret", "no-signature"]
)
def test_an_order_without_a_valid_signature_gets_401_and_no_ack(
    lab: LabSimulator, stand_in: StandInPlatform, how: dict[str, Any]
) -> None:
    reply = deliver(lab, new_order(), **how)
    assert reply.status == 401
    assert "MSA" not in reply.body
    assert lab.orders == []
    assert lab.unauthorized == 1
    assert lab.pending() == 0


def test_a_cancellation_drops_the_pending_result(
    make_lab: Callable[..., LabSimulator], stand_in: StandInPlatform
) -> None:
    lab = make_lab(delay=SAFETY_SECONDS * 10)
    assert deliver(lab, new_order(), delivery="d-1").ack[0] == "AA"
    assert lab.pending() == 1
    assert deliver(lab, cancel_order(), delivery="d-2").ack[0] == "AA"
    assert lab.pending() == 0
    assert [o.order_control for o in lab.orders] == ["NW", "CA"]
    assert stand_in.posted == []


def test_a_cancellation_after_the_preliminary_stops_the_final(
    make_lab: Callable[..., LabSimulator], stand_in: StandInPlatform
) -> None:
    lab = make_lab(followup_delay=SAFETY_SECONDS * 10)
    deliver(lab, new_order(note="simulate=preliminary-final"), delivery="d-1")
    wait_for(lambda: lab.results, "the preliminary")
    assert lab.pending() == 1  # the final, waiting
    assert deliver(lab, cancel_order(), delivery="d-2").ack[0] == "AA"
    assert lab.pending() == 0
    assert [field_of(m, "OBR", 25) for m in stand_in.results()] == ["P"]


def test_a_resent_order_gets_the_same_answer_and_no_second_result(
    lab: LabSimulator, stand_in: StandInPlatform
) -> None:
    orm = new_order(note="simulate=abnormal")
    first = deliver(lab, orm, delivery="d-1")
    again = deliver(lab, orm, delivery="d-1")
    also = deliver(lab, new_order("ORM-9", note="simulate=abnormal"), delivery="d-9")  # same placer
    assert first.ack == again.ack == also.ack == ("AA", "Order accepted")
    wait_for(lambda: settled(lab, 1), "the result")
    assert len(stand_in.posted) == 1
    assert [o.duplicate for o in lab.orders] == [False, True, True]


def test_a_platform_answering_503_once_gets_the_same_message_again(
    lab: LabSimulator, stand_in: StandInPlatform
) -> None:
    stand_in.failures.append(503)
    deliver(lab, new_order())
    wait_for(lambda: settled(lab, 1), "the result")
    first, second = stand_in.posted
    assert first.body == second.body  # same MSH-10: the platform can tell it is a resend
    (result,) = lab.results
    assert result.attempts == 2
    assert result.ack_code == "AA"


def test_a_platform_that_stays_down_is_given_up_on_without_stopping_the_lab(
    lab: LabSimulator, stand_in: StandInPlatform
) -> None:
    stand_in.failures.extend([503, 502, 500])  # one first attempt and two retries, all failing
    deliver(lab, new_order(sr_id="sr-lost"), delivery="d-1")
    wait_for(lambda: settled(lab, 1), "giving up")
    (lost,) = lab.results
    assert (lost.attempts, lost.http_status, lost.accepted) == (3, 500, False)
    deliver(lab, new_order("ORM-2", sr_id="sr-next"), delivery="d-2")
    wait_for(lambda: settled(lab, 2), "the next result")
    assert lab.results[1].accepted
    assert field_of(stand_in.results()[-1], "OBR", 2) == "sr-next^clinic-a"


# --- the command -------------------------------------------------------------------------------


def test_the_command_runs_the_lab_with_tokens_from_the_local_issuer(
    stand_in: StandInPlatform, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    env = os.environ | {"EHR_HOME": str(tmp_path / "home")}
    command = [str(BIN / "ehr"), "lab-simulator", "--port", "0", "--platform", stand_in.base]
    command += ["--secret-file", str(secret_file), "--delay", str(DELAY)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        found = re.fullmatch(r"Lab simulator listening on (http://127\.0\.0\.1:\d+/orders) → (\S+)\n", ready)
        assert found, f"unexpected ready line {ready!r}"
        assert found.group(2) == stand_in.base
        lab = LabSimulator("http://unused", SECRET, lambda: "")  # only its url is used to deliver
        lab.url = found.group(1)
        assert deliver(lab, new_order(note="simulate=critical")).ack[0] == "AA"
        wait_for(lambda: stand_in.posted, "the result")
        claims = jwt.decode(
            stand_in.posted[0].authorization.removeprefix("Bearer "), options={"verify_signature": False}
        )
        assert (claims["tenant"], claims["client_id"], claims["scope"]) == (
            "acme-lab",
            "acme-lab-system",
            "system/*.cruds",
        )
        assert field_of(stand_in.results()[0], "OBX", 8) == "HH"
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=SAFETY_SECONDS)
    assert process.returncode == 0
    assert "Stopped." in errors
    assert "Testpatient" not in errors  # log lines carry ids, never names
    assert "order received" in errors
