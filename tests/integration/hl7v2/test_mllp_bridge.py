"""`ehr mllp-bridge`: HL7 v2 over MLLP in, the platform's `POST /tenants/{t}/hl7v2` out, ACKs back.

The bridge runs in-process on a free port; the platform endpoint is a small HTTP server in this
module that answers ACKs built with python-hl7 from what it received and records every request.
Senders are python-hl7's own MLLP client. The last tests run the real `ehr mllp-bridge` command.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hl7
import hl7.mllp
import pytest
from click.testing import CliRunner

from infra.local.cli import main
from infra.local.mllp_bridge import BridgeServer, Upstream

SHARED_HL7 = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "hl7v2"
BIN = Path(sys.executable).parent
HL7_TYPE = "x-application/hl7-v2+er7"
SAFETY_SECONDS = 60  # a broken bridge fails the test instead of hanging it; never asserted on
PATIENT = "FAKEPATIENT^TESTY"

Answer = Callable[[bytes], tuple[int, str, bytes]]


def adt(control_id: str, extra: str = "") -> bytes:
    return (
        "MSH|^~\\&|LABSYS|ACME-LAB|EHR|CLINIC-A|20240102030405||ADT^A01|"
        f"{control_id}|P|2.5\r"
        "EVN|A01|20240102030405\r"
        f"PID|1||MRN-{control_id}^^^CLINIC-A^MR||{PATIENT}||19700101|F\r{extra}"
    ).encode()


def platform_ack(body: bytes, code: str = "AA") -> bytes:
    """What the platform answers: an ACK for the message it received, built with python-hl7."""
    text = re.sub(r"\r\n|\n", "\r", body.decode("utf-8", "replace").lstrip("\ufeff")).strip()
    return str(hl7.parse(text).create_ack(code, application="EHR", facility="CLINIC-A")).encode()


def answers_ack(body: bytes) -> tuple[int, str, bytes]:
    try:
        return 200, HL7_TYPE, platform_ack(body)
    except Exception:
        ack = "MSH|^~\\&|EHR|CLINIC-A|||20240102030405||ACK|X1|P|2.5\rMSA|AR|\r"
        return 400, HL7_TYPE, ack.encode()


def answers(status: int, content_type: str, payload: bytes) -> Answer:
    return lambda body: (status, content_type, payload)


@dataclass
class Seen:
    path: str
    authorization: str
    content_type: str
    body: bytes


@dataclass
class FakePlatform:
    """Stands in for the platform's HL7 v2 endpoint; `answer` decides each reply."""

    answer: Answer = answers_ack
    seen: list[Seen] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    extra_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                platform.seen.append(
                    Seen(
                        self.path,
                        self.headers.get("Authorization", ""),
                        self.headers.get("Content-Type", ""),
                        body,
                    )
                )
                status, content_type, payload = platform.answer(body)
                platform.replies.append(payload)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in platform.extra_headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the bridge gave up waiting (the timeout test)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/tenants/clinic-a/hl7v2"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    fake = FakePlatform()
    yield fake
    fake.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-one\n")
    return path


def start_bridge(
    url: str, token_file: Path, timeout: float = 10, max_bytes: int | None = None
) -> BridgeServer:
    upstream = Upstream(url=url, token_file=token_file, timeout=timeout)
    return BridgeServer(upstream) if max_bytes is None else BridgeServer(upstream, max_bytes)


@pytest.fixture
def bridge(platform: FakePlatform, token_file: Path) -> Iterator[int]:
    server = start_bridge(platform.url, token_file)
    _, port = server.start("127.0.0.1", 0)
    yield port
    server.stop()


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def bridge_log() -> Iterator[list[str]]:
    logger = logging.getLogger("ehr_local.mllp_bridge")
    handler, level = Captured(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


async def _send(port: int, frames: list[bytes], raw: bool = False) -> list[bytes]:
    reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port)
    try:
        replies = []
        for frame in frames:
            if raw:
                writer.write(frame)
            else:
                writer.writeblock(frame)
            await writer.drain()
            replies.append(await reader.readblock())
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


def exchange(port: int, *messages: bytes) -> list[bytes]:
    """Send the messages on one MLLP connection, each after the previous ACK; the ACKs' bytes."""
    return asyncio.run(asyncio.wait_for(_send(port, list(messages)), SAFETY_SECONDS))


def msa(reply: bytes) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, MSA-3) of an ACK, read with python-hl7."""
    segment = hl7.parse(reply.decode()).segment("MSA")
    return str(segment(1)), str(segment(2)), str(segment(3)) if len(segment) > 3 else ""


def err_text(reply: bytes) -> str:
    return str(hl7.parse(reply.decode()).segment("ERR")(8))


# --- the happy path ---------------------------------------------------------------------------


def test_ack_for_the_message_comes_back(platform: FakePlatform, bridge: int) -> None:
    # Given a running bridge
    # When a partner sends one message
    (reply,) = exchange(bridge, adt("MSG-1"))
    # Then it gets the platform's ACK, as the platform sent it, for that message
    assert msa(reply)[:2] == ("AA", "MSG-1")
    assert reply == platform.replies[0]


def test_platform_receives_the_exact_message_with_the_token_from_the_file(
    platform: FakePlatform, bridge: int
) -> None:
    message = adt("MSG-2", extra="OBX|1|ST|NOTE||caf\u00e9 \u00fcber\r")
    exchange(bridge, message)
    (seen,) = platform.seen
    assert seen.path == "/tenants/clinic-a/hl7v2"
    assert seen.authorization == "Bearer token-one"
    assert seen.content_type == HL7_TYPE
    assert seen.body == message


def test_several_messages_on_one_connection_are_answered_in_order(
    platform: FakePlatform, bridge: int
) -> None:
    messages = [adt(f"SEQ-{n}") for n in range(5)]
    replies = exchange(bridge, *messages)
    assert [msa(r)[:2] for r in replies] == [("AA", f"SEQ-{n}") for n in range(5)]
    assert [s.body for s in platform.seen] == messages


def test_connections_are_served_concurrently(platform: FakePlatform, bridge: int) -> None:
    # Given a platform that answers only once four requests are waiting at the same time
    connections = 4
    together = threading.Barrier(connections, timeout=20)

    def answer_when_all_arrived(body: bytes) -> tuple[int, str, bytes]:
        try:
            together.wait()
        except threading.BrokenBarrierError:
            return 500, "text/plain", b"requests did not overlap"
        return 200, HL7_TYPE, platform_ack(body)

    platform.answer = answer_when_all_arrived

    # When four partners each send two messages on their own connection
    async def all_partners() -> list[list[bytes]]:
        return await asyncio.gather(
            *(_send(bridge, [adt(f"C{c}-M1"), adt(f"C{c}-M2")]) for c in range(connections))
        )

    results = asyncio.run(asyncio.wait_for(all_partners(), SAFETY_SECONDS))

    # Then every message got its own AA, in order per connection
    for c, replies in enumerate(results):
        assert [msa(r)[:2] for r in replies] == [("AA", f"C{c}-M1"), ("AA", f"C{c}-M2")]


def test_rotated_token_is_used_for_the_next_message(
    platform: FakePlatform, bridge: int, token_file: Path
) -> None:
    async def rotate_between() -> None:
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", bridge)
        writer.writeblock(adt("ROT-1"))
        await reader.readblock()
        token_file.write_text("token-two\n")
        writer.writeblock(adt("ROT-2"))
        await reader.readblock()
        writer.close()
        await writer.wait_closed()

    asyncio.run(asyncio.wait_for(rotate_between(), SAFETY_SECONDS))
    assert [s.authorization for s in platform.seen] == ["Bearer token-one", "Bearer token-two"]


def test_ar_ack_returned_with_http_400_is_passed_through(platform: FakePlatform, bridge: int) -> None:
    def reject(body: bytes) -> tuple[int, str, bytes]:
        ack = platform_ack(body, "AR").rstrip(b"\r") + b"\rERR|||200^Unsupported message type^HL70357|E\r"
        return 400, HL7_TYPE, ack

    platform.answer = reject
    (reply,) = exchange(bridge, adt("REJ-1"))
    assert reply == platform.replies[0]
    assert msa(reply)[:2] == ("AR", "REJ-1")


# --- upstream failures: a NAK, never silence ----------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_platform_down_gives_ae_naming_the_reason(token_file: Path) -> None:
    server = start_bridge(f"http://127.0.0.1:{_closed_port()}/tenants/clinic-a/hl7v2", token_file)
    _, port = server.start("127.0.0.1", 0)
    try:
        (reply,) = exchange(port, adt("DOWN-1"))
    finally:
        server.stop()
    code, control_id, text = msa(reply)
    assert (code, control_id) == ("AE", "DOWN-1")
    assert "connection refused" in text
    assert "connection refused" in err_text(reply)


def test_platform_error_500_gives_ae(platform: FakePlatform, bridge: int) -> None:
    platform.answer = answers(500, "application/json", b'{"resourceType": "OperationOutcome"}')
    (reply,) = exchange(bridge, adt("ERR-500"))
    assert msa(reply) == ("AE", "ERR-500", "upstream error (HTTP 500)")


def test_platform_error_500_with_an_hl7_body_still_gives_ae(platform: FakePlatform, bridge: int) -> None:
    platform.answer = lambda body: (502, HL7_TYPE, platform_ack(body, "AA"))
    (reply,) = exchange(bridge, adt("ERR-502"))
    assert msa(reply)[:2] == ("AE", "ERR-502")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_gives_ae(platform: FakePlatform, bridge: int, status: int) -> None:
    platform.answer = answers(status, "application/json", b'{"resourceType": "OperationOutcome"}')
    (reply,) = exchange(bridge, adt(f"AUTH-{status}"))
    assert msa(reply) == ("AE", f"AUTH-{status}", f"upstream refused the token (HTTP {status})")


def test_slow_platform_gives_ae_timed_out(platform: FakePlatform, token_file: Path) -> None:
    # Given a platform that does not answer until the test is over, and a bridge with a short timeout
    def hang(body: bytes) -> tuple[int, str, bytes]:
        platform.release.wait(SAFETY_SECONDS)
        return 200, HL7_TYPE, platform_ack(body)

    platform.answer = hang
    server = start_bridge(platform.url, token_file, timeout=0.5)
    _, port = server.start("127.0.0.1", 0)
    try:
        (reply,) = exchange(port, adt("SLOW-1"))
    finally:
        platform.release.set()
        server.stop()
    code, control_id, text = msa(reply)
    assert (code, control_id) == ("AE", "SLOW-1")
    assert "timed out" in text


@pytest.mark.parametrize(
    ("status", "content_type", "payload"),
    [
        (200, "application/json", json.dumps({"ok": True}).encode()),
        (200, HL7_TYPE, b""),
        (404, "application/fhir+json", b'{"resourceType": "OperationOutcome", "issue": []}'),
        (200, "text/html", b"<html>proxy login</html>"),
    ],
    ids=["json", "empty", "404-outcome", "html"],
)
def test_body_that_is_not_an_hl7_ack_gives_ae(
    platform: FakePlatform, bridge: int, status: int, content_type: str, payload: bytes
) -> None:
    platform.answer = answers(status, content_type, payload)
    (reply,) = exchange(bridge, adt("NOTACK-1"))
    code, control_id, text = msa(reply)
    assert (code, control_id) == ("AE", "NOTACK-1")
    assert "not an HL7 ACK" in text


def test_ack_for_another_message_gives_ae(platform: FakePlatform, bridge: int) -> None:
    platform.answer = lambda body: (200, HL7_TYPE, platform_ack(adt("SOMEONE-ELSE")))
    (reply,) = exchange(bridge, adt("MINE-1"))
    assert msa(reply)[:2] == ("AE", "MINE-1")
    assert "another message" in msa(reply)[2]


def test_redirect_is_not_followed_so_the_token_stays_with_the_target(
    platform: FakePlatform, bridge: int
) -> None:
    # Given a target that answers with a redirect (urllib alone would follow it as a GET)
    platform.extra_headers = {"Location": platform.url + "?moved"}
    platform.answer = answers(302, "text/plain", b"moved")
    (reply,) = exchange(bridge, adt("MOVED-1"))
    assert msa(reply)[:2] == ("AE", "MOVED-1")
    assert "HTTP 302" in msa(reply)[2]
    assert len(platform.seen) == 1


def test_missing_token_file_gives_ae_and_nothing_is_sent(
    platform: FakePlatform, bridge: int, token_file: Path
) -> None:
    token_file.unlink()
    (reply,) = exchange(bridge, adt("NOTOKEN-1"))
    assert msa(reply)[:2] == ("AE", "NOTOKEN-1")
    assert "token file" in msa(reply)[2]
    assert platform.seen == []


def test_failure_is_logged_once_with_control_id_and_no_message_content(
    platform: FakePlatform, bridge: int, bridge_log: list[str]
) -> None:
    platform.answer = answers(503, "text/plain", b"unavailable")
    exchange(bridge, adt("LOG-1"))
    failures = [line for line in bridge_log if "LOG-1" in line]
    assert len(failures) == 1
    assert "AE" in failures[0] and "LABSYS" in failures[0] and "HTTP 503" in failures[0]
    assert not [line for line in bridge_log if "FAKEPATIENT" in line or "MRN-" in line or "19700101" in line]


# --- what the bridge cannot read ---------------------------------------------------------------


def test_frame_without_msh_gets_ar_and_the_connection_goes_on(platform: FakePlatform, bridge: int) -> None:
    replies = exchange(bridge, b"hello, is this the lab?", adt("AFTER-1"))
    code, control_id, text = msa(replies[0])
    assert (code, control_id) == ("AR", "")
    assert "not an HL7 message" in text
    assert msa(replies[1])[:2] == ("AA", "AFTER-1")
    assert [s.body for s in platform.seen] == [adt("AFTER-1")]


def test_noise_before_the_start_block_is_skipped(platform: FakePlatform, bridge: int) -> None:
    frame = b"\r\n" + b"\x0b" + adt("NOISE-1") + b"\x1c\x0d"
    (reply,) = asyncio.run(asyncio.wait_for(_send(bridge, [frame], raw=True), SAFETY_SECONDS))
    assert msa(reply)[:2] == ("AA", "NOISE-1")
    assert platform.seen[0].body == adt("NOISE-1")


def test_oversized_message_gets_ar_for_its_control_id_and_the_next_one_is_served(
    platform: FakePlatform, token_file: Path
) -> None:
    server = start_bridge(platform.url, token_file, max_bytes=2000)
    _, port = server.start("127.0.0.1", 0)
    try:
        big = adt("BIG-1", extra="OBX|1|ED|PDF||" + "A" * 20000 + "\r")
        replies = exchange(port, big, adt("SMALL-1"))
    finally:
        server.stop()
    code, control_id, text = msa(replies[0])
    assert (code, control_id) == ("AR", "BIG-1")
    assert "larger than 2000 bytes" in text
    assert msa(replies[1])[:2] == ("AA", "SMALL-1")
    assert [s.body for s in platform.seen] == [adt("SMALL-1")]


def test_every_shared_sample_gets_exactly_one_ack(platform: FakePlatform, bridge: int) -> None:
    # Given the external HL7 v2 samples as they are (CR, LF, CRLF, BOMs, batches, fuzz cases)
    samples = sorted(SHARED_HL7.glob("*.hl7"))
    assert samples, f"no samples under {SHARED_HL7}"
    bodies = [p.read_bytes() for p in samples]

    # When they are sent on one connection, followed by an ordinary message
    replies = exchange(bridge, *bodies, adt("LAST-1"))

    # Then each got one ACK, in order; what reached the platform are samples byte for byte, in order;
    # what did not reach it was answered AR; every well-formed message was accepted
    assert len(replies) == len(bodies) + 1
    assert msa(replies[-1])[:2] == ("AA", "LAST-1")
    forwarded = [s.body for s in platform.seen][:-1]
    assert forwarded
    position = 0
    for path, body, reply in zip(samples, bodies, replies, strict=False):
        code, _, _ = msa(reply)
        if position < len(forwarded) and forwarded[position] == body:
            position += 1
        else:
            assert code == "AR", path.name
        if body.removeprefix(b"\xef\xbb\xbf").startswith(b"MSH|^~\\&|"):
            assert code == "AA", path.name
    assert position == len(forwarded)


# --- the real command ----------------------------------------------------------------------------


def test_cli_serves_messages_and_stops_cleanly_on_sigterm(platform: FakePlatform, token_file: Path) -> None:
    # Given `ehr mllp-bridge` started as a user would, on a port the system picks
    process = subprocess.Popen(
        [
            str(BIN / "ehr"),
            "mllp-bridge",
            "--listen",
            "0",
            "--target",
            platform.url,
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        ready = process.stdout.readline()
        found = re.fullmatch(r"MLLP bridge listening on 127\.0\.0\.1:(\d+) → (\S+)\n", ready)
        assert found, f"unexpected ready line {ready!r}: {process.stderr.read() if not ready else ''}"
        assert found.group(2) == platform.url
        port = int(found.group(1))

        # When a partner sends a message, keeps its connection open, and the bridge gets SIGTERM
        async def partner() -> tuple[bytes, bytes]:
            reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port)
            writer.writeblock(adt("CLI-1"))
            ack = await reader.readblock()
            process.send_signal(signal.SIGTERM)
            rest = await reader.read()
            writer.close()
            return ack, rest

        ack, rest = asyncio.run(asyncio.wait_for(partner(), SAFETY_SECONDS))
        code = process.wait(timeout=SAFETY_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # Then the message was acknowledged, the connection was closed, and the command exited cleanly
    assert msa(ack)[:2] == ("AA", "CLI-1")
    assert rest == b""
    assert code == 0
    assert "Stopped." in process.stderr.read()


def test_cli_reports_a_port_in_use(platform: FakePlatform, token_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(BIN / "ehr"),
                "mllp-bridge",
                "--listen",
                str(port),
                "--target",
                platform.url,
                "--token-file",
                str(token_file),
            ],
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=SAFETY_SECONDS,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("target", ["ftp://example.org/x", "not a url", "https:///tenants/x/hl7v2"])
def test_cli_rejects_a_target_that_is_not_an_http_url(token_file: Path, target: str) -> None:
    result = CliRunner().invoke(
        main, ["mllp-bridge", "--listen", "0", "--target", target, "--token-file", str(token_file)]
    )
    assert result.exit_code == 2
    assert "http:// or https://" in result.output
