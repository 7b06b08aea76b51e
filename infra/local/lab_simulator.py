"""A stand-in for the demo lab partner ``acme-lab``: takes orders on a webhook, answers with results.

Local mode only (`ehr local` starts one; `ehr lab-simulator` runs one on its own). The platform
delivers each ORM^O01 to ``POST /orders`` signed with HMAC-SHA256 (``ehr.labs.webhook``); the
simulator checks the signature (401 without a valid one), answers synchronously with an HL7 ACK
and later posts ORU^R01 results to the platform's HL7 endpoint as the lab
(``POST {platform}/tenants/acme-lab/hl7v2`` with the lab's bearer token).

What happens to an order is chosen by ``simulate=<scenario>`` in any of its notes (NTE), see
``SCENARIOS`` and docs/lab-simulator.md. A cancellation (ORC-1 ``CA``) is acknowledged and drops
whatever results of that order are still pending.

Results are sent by one worker thread from a schedule: an order's messages go out in order (a
final never overtakes its preliminary), a message that cannot be posted (connection error, HTTP
5xx/429, AE "being processed") is retried with back-off, byte for byte (same MSH-10, so the
platform recognises a resend), then logged and given up. Log lines carry ids only, never names.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from ehr.hl7v2 import er7
from ehr.hl7v2.ack import AckIssue, build_ack
from ehr.labs import webhook

log = logging.getLogger("ehr_local.lab_simulator")

LAB_TENANT: Final = "acme-lab"
LAB_APPLICATION: Final = "ACMELAB"
ORDERS_PATH: Final = "/orders"
SCENARIOS: Final = (
    "normal",
    "abnormal",
    "critical",
    "preliminary-final",
    "corrected",
    "reject",
    "silent",
)
DEFAULT_SCENARIO: Final = "normal"
REJECT_REASON: Final = "Test not offered by this laboratory"
DEFAULT_RETRY_DELAYS: Final = (0.5, 1.0, 2.0, 4.0, 8.0)
MAX_BODY_BYTES: Final = 1024 * 1024
_SIMULATE: Final = re.compile(r"simulate\s*=\s*([A-Za-z-]+)", re.IGNORECASE)
_TRANSIENT_ACK_ERRORS: Final = frozenset({"206"})  # "being processed right now": retry shortly


# --- what the lab reports for a test ------------------------------------------------------------


@dataclass(frozen=True)
class Analyte:
    """One result line (OBX) the lab reports: its LOINC code, unit, reference range and the
    values each scenario reports (normal, out of range with its flag, critical with its flag,
    and the value a correction changes the normal one to)."""

    code: str
    name: str
    unit: str
    range: str
    normal: str
    abnormal: tuple[str, str]
    critical: tuple[str, str]
    corrected: str


_ANALYTES: Final = {
    a.code: a
    for a in (
        Analyte(
            "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", "70-99", "88",
            ("142", "H"), ("512", "HH"), "94",
        ),
        Analyte(
            "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "12.0-16.0", "13.8",
            ("10.9", "L"), ("6.2", "LL"), "14.1",
        ),
        Analyte(
            "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", "4.0-11.0", "6.8",
            ("14.2", "H"), ("32.5", "HH"), "7.1",
        ),
        Analyte(
            "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", "150-400", "245",
            ("120", "L"), ("18", "LL"), "252",
        ),
        Analyte(
            "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", "3.5-5.1", "4.2",
            ("5.6", "H"), ("6.8", "HH"), "4.4",
        ),
        Analyte(
            "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", "136-145", "140",
            ("131", "L"), ("118", "LL"), "139",
        ),
        Analyte(
            "2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", "98-107", "102",
            ("111", "H"), ("126", "HH"), "101",
        ),
        Analyte(
            "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", "0.6-1.2", "0.9",
            ("1.6", "H"), ("7.4", "HH"), "0.8",
        ),
        Analyte(
            "17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", "8.5-10.2", "9.4",
            ("8.1", "L"), ("5.9", "LL"), "9.6",
        ),
        Analyte(
            "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "4.0-5.6", "5.2",
            ("7.1", "H"), ("14.8", "HH"), "5.4",
        ),
        Analyte(
            "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", "<200", "172",
            ("236", "H"), ("520", "HH"), "181",
        ),
        Analyte(
            "3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "mIU/L", "0.40-4.00", "1.80",
            ("6.20", "H"), ("85.00", "HH"), "1.95",
        ),
    )
}  # fmt: skip
_UCUM_CODES: Final = {"mIU/L": "m[IU]/L"}  # units whose UCUM code differs from how labs print them
# Panels: the analytes reported for the panel's code; an abnormal/critical panel flags the first.
_PANELS: Final = {
    "58410-2": ("6690-2", "718-7", "777-3"),  # CBC panel
    "51990-0": ("2345-7", "2951-2", "2823-3", "2075-0", "2160-0", "17861-6"),  # basic metabolic panel
}


def analytes_for(code: str, name: str = "") -> list[Analyte]:
    """What the lab reports for an ordered test code: its analyte, a panel's analytes, or for a
    code it does not know one generic numeric result under the ordered code."""
    if code in _PANELS:
        return [_ANALYTES[c] for c in _PANELS[code]]
    if code in _ANALYTES:
        return [_ANALYTES[code]]
    return [Analyte(code, name or "Result", "U/L", "10-50", "32", ("68", "H"), ("245", "HH"), "35")]


# --- what the simulator observed (for tests and logs) -----------------------------------------


@dataclass(frozen=True)
class ReceivedOrder:
    """An order message the webhook accepted for processing (signature valid) and its answer."""

    delivery_id: str
    control_id: str  # the ORM's MSH-10
    order_control: str  # ORC-1: NW, CA, ...
    placer: str  # ORC-2 as sent (ER7, all components)
    test_code: str  # OBR-4.1
    scenario: str
    ack_code: str  # AA or AR
    reason: str
    duplicate: bool = False  # a resend of an order already answered


@dataclass(frozen=True)
class PostedResult:
    """One ORU^R01 the simulator posted (or gave up posting) and what the platform answered."""

    placer: str
    filler: str
    control_id: str  # the ORU's MSH-10
    status: str  # OBR-25: P, F or C
    flags: tuple[str, ...]  # OBX-8 of each result
    message: str  # the ER7 text sent
    http_status: int  # 0 when the platform could not be reached
    ack_code: str  # MSA-1 of the platform's answer, "" when there was none
    reason: str
    attempts: int

    @property
    def accepted(self) -> bool:
        return self.ack_code in ("AA", "CA")


@dataclass
class _Order:
    placer: str
    filler: str
    message: er7.Message
    scenario: str
    test_code: str
    ack_code: str
    reason: str
    observed_at: str
    steps: list[tuple[str, list[tuple[Analyte, str, str]]]] = field(default_factory=list)


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    placer: str = field(compare=False)
    step: int = field(compare=False)
    attempt: int = field(compare=False, default=1)
    text: str = field(compare=False, default="")  # built on the first attempt, resent as is


class LabSimulator:
    """The demo lab. ``start(host, port)`` returns the webhook URL; ``stop()`` ends it.

    ``platform`` is the platform's base URL (``http://127.0.0.1:8080``), ``secret`` the HMAC
    secret shared with the platform, ``token`` returns the lab's bearer token (called for every
    post), ``delay`` the seconds between an order and its first result, ``followup_delay`` the
    seconds between a preliminary and its final or a final and its correction (default 3 times
    ``delay``), ``retry_delays`` the back-off between attempts to post a result.

    Observation: ``orders`` (each order message received with a valid signature, and its ACK),
    ``results`` (each ORU posted, with the platform's ACK), ``unauthorized`` (requests refused
    with 401), ``pending()`` (result messages still scheduled).
    """

    def __init__(
        self,
        platform: str,
        secret: bytes,
        token: Callable[[], str],
        delay: float = 1.0,
        *,
        followup_delay: float | None = None,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        tenant: str = LAB_TENANT,
        timeout: float = 30.0,
    ) -> None:
        self.platform = platform.rstrip("/")
        self.endpoint = f"{self.platform}/tenants/{tenant}/hl7v2"
        self.tenant = tenant
        self._secret = secret
        self._token = token
        self.delay = max(0.0, delay)
        self.followup_delay = max(0.0, 3 * self.delay if followup_delay is None else followup_delay)
        self.retry_delays = tuple(retry_delays)
        self.timeout = timeout
        self._lock = threading.Condition()
        self._orders: list[ReceivedOrder] = []
        self._results: list[PostedResult] = []
        self._unauthorized = 0
        self._known: dict[str, _Order] = {}  # by placer number (ER7)
        self._cancelled: set[str] = set()
        self._deliveries: dict[str, tuple[str, str]] = {}  # delivery id -> (ACK code, reason)
        self._queue: list[_Job] = []
        self._seq = itertools.count()
        self._running = False
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.url = ""

    # -- observation ------------------------------------------------------------------------------

    @property
    def orders(self) -> list[ReceivedOrder]:
        with self._lock:
            return list(self._orders)

    @property
    def results(self) -> list[PostedResult]:
        with self._lock:
            return list(self._results)

    @property
    def unauthorized(self) -> int:
        with self._lock:
            return self._unauthorized

    def pending(self) -> int:
        """Result messages scheduled and not yet posted (retries included)."""
        with self._lock:
            return len(self._queue)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port); returns the webhook URL (``…/orders``)."""
        if self._server is not None:
            raise RuntimeError("the lab simulator is already running")
        simulator = self

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        class Handler(_Handler):
            lab = simulator

        self._server = Server((host, port), Handler)
        bound_host, bound_port = self._server.server_address[:2]
        bound = bound_host.decode() if isinstance(bound_host, bytes) else str(bound_host)
        shown = f"[{bound}]" if ":" in bound else bound
        self.url = f"http://{shown}:{bound_port}{ORDERS_PATH}"
        self._running = True
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, args=(0.1,), name="lab-simulator-http", daemon=True
            ),
            threading.Thread(target=self._work, name="lab-simulator-results", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("lab simulator listening url=%s platform=%s", self.url, self.endpoint)
        return self.url

    def stop(self) -> None:
        """Stop listening and drop the results still scheduled. Safe to call twice."""
        with self._lock:
            self._running = False
            self._queue.clear()
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        self._threads = []

    def __enter__(self) -> LabSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the webhook ------------------------------------------------------------------------------

    def handle_order(self, body: bytes, delivery_id: str = "") -> str:
        """The ACK (ER7) for one order message whose signature was checked."""
        try:
            message = er7.parse(er7.decode(body))
        except er7.Er7Error as error:
            log.info("order unreadable delivery=%s ack=AR", delivery_id or "-")
            return _ack(None, "AR", error.reason, [])
        orc, obr = message.first("ORC"), message.first("OBR")
        placer = (orc.first(2).raw if orc else "") or (obr.first(2).raw if obr else "")
        control = orc.get(1).upper() if orc else ""
        test_code = obr.get(4) if obr else ""
        issue: AckIssue | None = None
        scenario = ""
        if message.message_type != "ORM":
            issue = AckIssue(
                f"{message.message_type or 'This'} messages are not accepted here; send ORM^O01 orders.",
                code="200",
                segment="MSH",
                position=1,
                field=9,
            )
        elif not placer:
            issue = AckIssue(
                "The order has no placer order number (ORC-2).", code="101", segment="ORC", field=2
            )
        duplicate = False
        code, reason = "AR", ""
        with self._lock:
            if issue is None and delivery_id and delivery_id in self._deliveries:
                code, reason = self._deliveries[delivery_id]
                duplicate = True
            elif issue is None and control == "CA":
                code, reason = "AA", "Order cancelled"
                self._cancel(placer)
            elif issue is None and control == "NW":
                code, reason, scenario, issue, duplicate = self._new_order(message, placer, test_code)
            elif issue is None:
                issue = AckIssue(
                    f"Order control code {control or '(empty)'} is not supported; send NW or CA.",
                    code="103",
                    segment="ORC",
                    field=1,
                )
            if issue is not None:
                code, reason = "AR", issue.reason
            if delivery_id:
                self._deliveries[delivery_id] = (code, reason)
            self._orders.append(
                ReceivedOrder(
                    delivery_id=delivery_id,
                    control_id=message.control_id,
                    order_control=control,
                    placer=placer,
                    test_code=test_code,
                    scenario=scenario,
                    ack_code=code,
                    reason=reason,
                    duplicate=duplicate,
                )
            )
        log.info(
            "order received delivery=%s control=%s order-control=%s placer=%s test=%s scenario=%s ack=%s%s",
            delivery_id or "-",
            message.control_id or "-",
            control or "-",
            placer or "-",
            test_code or "-",
            scenario or "-",
            code,
            " (resend)" if duplicate else "",
        )
        return _ack(message, code, reason, [issue] if issue is not None else [])

    def _new_order(
        self, message: er7.Message, placer: str, test_code: str
    ) -> tuple[str, str, str, AckIssue | None, bool]:
        """(ACK code, reason, scenario, issue, duplicate) for a new order; called with the lock held."""
        known = self._known.get(placer)
        if known is not None:  # the same order again: the same answer, no second set of results
            return known.ack_code, known.reason, known.scenario, None, True
        if placer in self._cancelled:
            reason = "This placer order number was cancelled; send a new order number."
            return "AR", reason, "", AckIssue(reason, code="205", segment="ORC", field=2), False
        notes = " ".join(seg.text(3) for seg in message.all("NTE"))
        chosen = _SIMULATE.search(notes)
        scenario = chosen.group(1).lower() if chosen else DEFAULT_SCENARIO
        if scenario not in SCENARIOS:
            reason = f"Unknown simulate= scenario {scenario!r}; use one of: {', '.join(SCENARIOS)}."
            return "AR", reason, scenario, AckIssue(reason, code="103", segment="NTE", field=3), False
        if not test_code:
            reason = "The order names no test (OBR-4)."
            return "AR", reason, scenario, AckIssue(reason, code="101", segment="OBR", field=4), False
        if scenario == "reject":
            return (
                "AR",
                REJECT_REASON,
                scenario,
                AckIssue(REJECT_REASON, code="103", segment="OBR", field=4),
                False,
            )
        obr = message.first("OBR")
        order = _Order(
            placer=placer,
            filler=_filler(message.sending_facility, placer),
            message=message,
            scenario=scenario,
            test_code=test_code,
            ack_code="AA",
            reason="Order accepted",
            observed_at=_ts(),
            steps=_steps(scenario, analytes_for(test_code, obr.get(4, 2) if obr else "")),
        )
        self._known[placer] = order
        if order.steps:
            self._schedule(placer, 0, time.monotonic() + self.delay)
        return order.ack_code, order.reason, scenario, None, False

    def _cancel(self, placer: str) -> None:
        """Remember the order as cancelled and drop its pending results; called with the lock held."""
        self._cancelled.add(placer)
        before = len(self._queue)
        self._queue = [job for job in self._queue if job.placer != placer]
        heapq.heapify(self._queue)
        if before != len(self._queue):
            log.info("results dropped placer=%s pending=%d", placer, before - len(self._queue))

    def _unauthorized_request(self) -> None:
        with self._lock:
            self._unauthorized += 1

    # -- posting results --------------------------------------------------------------------------

    def _schedule(self, placer: str, step: int, due: float, attempt: int = 1, text: str = "") -> None:
        heapq.heappush(self._queue, _Job(due, next(self._seq), placer, step, attempt, text))
        self._lock.notify_all()

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running and (not self._queue or self._queue[0].due > time.monotonic()):
                    wait = self._queue[0].due - time.monotonic() if self._queue else None
                    self._lock.wait(wait)
                if not self._running:
                    return
                job = heapq.heappop(self._queue)
                order = self._known[job.placer]
                if job.placer in self._cancelled:
                    continue
            try:
                self._post(order, job)
            except Exception:  # never let one result stop the worker
                log.exception("result failed placer=%s", job.placer)

    def _post(self, order: _Order, job: _Job) -> None:
        status, values = order.steps[job.step]
        text = job.text or build_oru(order, status, values)
        control_id = er7.parse(text).control_id
        http_status, code, reason, transient = self._send(text)
        attempts_left = job.attempt <= len(self.retry_delays)
        with self._lock:
            if not self._running or job.placer in self._cancelled:
                return
            if transient and attempts_left:
                backoff = self.retry_delays[job.attempt - 1]
                log.info(
                    "result retry placer=%s control=%s status=%s attempt=%d http=%s ack=%s in=%.2fs",
                    order.placer, control_id, status, job.attempt, http_status or "-", code or "-", backoff,
                )  # fmt: skip
                self._schedule(job.placer, job.step, time.monotonic() + backoff, job.attempt + 1, text)
                return
            self._results.append(
                PostedResult(
                    placer=order.placer,
                    filler=order.filler,
                    control_id=control_id,
                    status=status,
                    flags=tuple(flag for _, _, flag in values),
                    message=text,
                    http_status=http_status,
                    ack_code=code,
                    reason=reason,
                    attempts=job.attempt,
                )
            )
            if job.step + 1 < len(order.steps):
                self._schedule(job.placer, job.step + 1, time.monotonic() + self.followup_delay)
        outcome = "posted" if code in ("AA", "CA") else "gave up" if transient else "refused"
        log.info(
            "result %s placer=%s filler=%s control=%s status=%s http=%s ack=%s attempts=%d%s",
            outcome, order.placer, order.filler, control_id, status, http_status or "-", code or "-",
            job.attempt, f" reason={reason}" if code not in ("AA", "CA") and reason else "",
        )  # fmt: skip

    def _send(self, text: str) -> tuple[int, str, str, bool]:
        """(HTTP status, ACK code, reason, transient) of one attempt to post ``text``."""
        try:
            token = self._token()
        except Exception as error:  # noqa: BLE001 - whatever the token source raises, retry later
            return 0, "", f"no token ({type(error).__name__})", True
        request = urllib.request.Request(  # noqa: S310 - the platform's URL, given by the operator
            self.endpoint,
            data=text.encode("utf-8"),
            method="POST",
            headers={"Content-Type": webhook.ER7, "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310
                status, answer = reply.status, reply.read(MAX_BODY_BYTES)
        except urllib.error.HTTPError as error:
            status, answer = error.code, error.read(MAX_BODY_BYTES) if error.fp else b""
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
            return 0, "", f"platform unreachable ({type(error).__name__})", True
        code, reason = webhook.read_ack(answer)
        transient = status >= 500 or status == 429
        if code is None:  # a 4xx without an ACK (the token refused, no such tenant) will not improve
            return status, "", f"HTTP {status} without an ACK", transient or status < 400
        if code == "AE" and _ack_error_codes(answer) & _TRANSIENT_ACK_ERRORS:
            transient = True
        return status, code, reason, transient


# --- the HTTP side ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    lab: LabSimulator
    protocol_version = "HTTP/1.1"
    server_version = "acme-lab-simulator"

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != ORDERS_PATH:
            self._reply(404, "text/plain", b"not found; orders go to POST /orders\n")
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._reply(411, "text/plain", b"Content-Length required\n")
            return
        if length > MAX_BODY_BYTES:
            self._reply(413, "text/plain", b"order too large\n", close=True)
            return
        body = self.rfile.read(length)
        timestamp = self.headers.get(webhook.TIMESTAMP_HEADER, "")
        signature = self.headers.get(webhook.SIGNATURE_HEADER, "")
        if not (timestamp and signature and webhook.verify(self.lab._secret, timestamp, body, signature)):
            self.lab._unauthorized_request()
            log.info("order refused: bad or missing signature delivery=%s", self._delivery() or "-")
            self._reply(401, "text/plain", b"invalid or missing X-EHR-Signature\n")
            return
        ack = self.lab.handle_order(body, self._delivery())
        self._reply(200, webhook.ER7, ack.encode("utf-8"))

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/health":
            self._reply(200, "application/json", b'{"status":"ok"}\n')
        else:
            self._reply(
                405 if self.path.split("?", 1)[0] == ORDERS_PATH else 404, "text/plain", b"POST only\n"
            )

    def _delivery(self) -> str:
        return re.sub(r"[^A-Za-z0-9._:-]", "", self.headers.get(webhook.DELIVERY_HEADER, ""))[:100]

    def _reply(self, status: int, content_type: str, payload: bytes, *, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per order/result is logged by the simulator itself


# --- building the ORU^R01 -----------------------------------------------------------------------


def _ack(message: er7.Message | None, code: str, text: str, issues: list[AckIssue]) -> str:
    return build_ack(
        message,
        code,
        control_id=_control_id(),
        text=text,
        issues=issues,
        receiving_application=LAB_APPLICATION,
        receiving_facility=LAB_TENANT,
    )


def _steps(scenario: str, analytes: list[Analyte]) -> list[tuple[str, list[tuple[Analyte, str, str]]]]:
    """The result messages of a scenario: (OBR-25 status, [(analyte, value, OBX-8 flag)])."""
    normal = [(a, a.normal, "N") for a in analytes]
    first, rest = analytes[0], normal[1:]
    if scenario == "abnormal":
        return [("F", [(first, *first.abnormal), *rest])]
    if scenario == "critical":
        return [("F", [(first, *first.critical), *rest])]
    if scenario == "preliminary-final":
        return [("P", normal), ("F", normal)]
    if scenario == "corrected":
        return [("F", normal), ("C", [(first, first.corrected, "N"), *rest])]
    if scenario == "silent":
        return []
    return [("F", normal)]


def build_oru(order: _Order, status: str, values: list[tuple[Analyte, str, str]]) -> str:
    """An ORU^R01 (2.5.1) answering ``order``, written with the order's own delimiters so the
    copied PID and placer number stay exactly as sent."""
    orm = order.message
    enc = orm.encoding
    f, c = enc.field, enc.component

    def esc(value: str) -> str:
        return enc.escape_text(value)

    def segment(name: str, fields: dict[int, str]) -> str:
        last = max((n for n, v in fields.items() if v), default=0)
        return f.join([name, *(fields.get(n, "") for n in range(1, last + 1))])

    msh = orm.msh
    now = _ts()
    header = {
        3: esc(LAB_APPLICATION),
        4: esc(LAB_TENANT),
        5: msh.raw(3),
        6: msh.raw(4),
        7: now,
        9: c.join(["ORU", "R01", "ORU_R01"]),
        10: esc(_control_id()),
        11: msh.raw(11) or "P",
        12: "2.5.1",
        18: msh.raw(18),
    }
    lines = [f.join(["MSH", enc.msh2, *(header.get(n, "") for n in range(3, max(header) + 1))]).rstrip(f)]
    pid = orm.first("PID")
    if pid is not None:
        lines.append(f.join(pid.fields))
    filler = c.join([esc(order.filler), esc(LAB_APPLICATION)])
    ordered = orm.first("OBR")
    lines.append(segment("ORC", {1: "RE", 2: order.placer, 3: filler, 5: "A" if status == "P" else "CM"}))
    lines.append(
        segment(
            "OBR",
            {
                1: "1",
                2: order.placer,
                3: filler,
                4: ordered.first(4).raw if ordered else esc(order.test_code),
                7: order.observed_at,
                22: now,
                25: status,
            },
        )
    )
    if status == "C":
        lines.append(
            segment("NTE", {1: "1", 2: "L", 3: esc("Corrected report: replaces the earlier result.")})
        )
    for n, (analyte, value, flag) in enumerate(values, start=1):
        known = analyte.code in _ANALYTES
        code = c.join([esc(analyte.code), esc(analyte.name), "LN"]) if known else _unknown_code(ordered, esc)
        lines.append(
            segment(
                "OBX",
                {
                    1: str(n),
                    2: "NM",
                    3: code,
                    5: esc(value),
                    6: c.join([esc(_UCUM_CODES.get(analyte.unit, analyte.unit)), esc(analyte.unit), "UCUM"]),
                    7: esc(analyte.range),
                    8: flag,
                    11: status,
                    14: order.observed_at,
                },
            )
        )
    return "\r".join(lines)


def _unknown_code(ordered: er7.Segment | None, esc: Callable[[str], str]) -> str:
    """OBX-3 for a test the lab has no catalogue entry for: the ordered OBR-4 itself."""
    return ordered.first(4).raw if ordered is not None else esc("UNKNOWN")


def _ack_error_codes(answer: bytes) -> set[str]:
    try:
        ack = er7.parse(er7.decode(answer))
    except er7.Er7Error:
        return set()
    return {seg.get(3) for seg in ack.all("ERR") if seg.get(3)}


def _filler(facility: str, placer: str) -> str:
    """The lab's number for an order: stable for the same placer number (also across restarts)."""
    digest = hashlib.sha256(f"{facility}|{placer}".encode()).hexdigest()[:10].upper()
    return f"AL{digest}"


def _control_id() -> str:
    return "AL" + uuid.uuid4().hex[:18].upper()


def _ts() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "+0000"
