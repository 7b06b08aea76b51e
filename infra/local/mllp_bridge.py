"""MLLP bridge: HL7 v2 over MLLP (TCP) in, the platform's `POST /tenants/{t}/hl7v2` over HTTP(S) out.

For partner interface engines that only speak MLLP. Each framed message is forwarded as received
(the bytes between the start block 0x0B and the end block 0x1C 0x0D) with the bearer token read
from a file for every request, and the platform's ACK goes back over the same connection. Messages
on one connection are answered in order; connections are served concurrently.

The bridge never drops a message silently: when the platform cannot be reached, answers 5xx,
401/403 or a body that is not an HL7 ACK for the message, the sender gets a NAK (MSA-1 AE, MSA-2
the inbound MSH-10, MSA-3 and ERR-8 the reason) and one log line is written. A message the bridge
cannot read (no MSH header, no start block, larger than the limit) gets MSA-1 AR. Log lines carry
the control id and the sending application only, never message content.

Framing uses python-hl7's `hl7.mllp` streams (`start_hl7_server`, `writeblock`). Frames are read
with the stream's `readuntil` rather than `readblock`, so that noise before the start block and an
oversized message can be answered with a NAK instead of losing the frames that follow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import logging
import re
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
from hl7.util import generate_message_control_id

log = logging.getLogger("ehr_local.mllp_bridge")

HL7_V2_CONTENT_TYPE = "x-application/hl7-v2+er7"
DEFAULT_TIMEOUT_SECONDS = 30.0
# API Gateway takes at most 10 MB per request; a larger message could never reach the platform.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_ACK_BYTES = 1024 * 1024
BRIDGE_APPLICATION = "EHR-MLLP-BRIDGE"
UPSTREAM_WORKERS = 64

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
# HL7 table 0357 (message error condition codes)
ERR_SEGMENT_SEQUENCE = ("100", "Segment sequence error")
ERR_INTERNAL = ("207", "Application internal error")
HEAD_BYTES = 4096
_UNSAFE = re.compile(r"[^\x20-\x7e]")


class UpstreamError(Exception):
    """The platform did not give an ACK for the message; `reason` is what the NAK says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """The inbound message's MSH, enough to address an ACK and to log the message without PHI."""

    message: hl7.Message  # the MSH segment only
    control_id: str
    sending_app: str


def read_header(data: bytes) -> Header | None:
    """Parse the MSH segment of a message, or None when there is none to parse."""
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    first = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    if not first.startswith("MSH") or len(first) < 8 or first[3].isalnum() or first[3].isspace():
        return None
    try:
        message = hl7.parse(first)
        msh = message.segment("MSH")
        if len(msh) <= 12:  # create_ack reads MSH-1 … MSH-12
            msh.assign_field("", 12)
        control_id = str(msh(10))
        sending_app = str(msh(3))
    except Exception:  # noqa: BLE001 - python-hl7 raises assorted errors on malformed headers
        return None
    return Header(message=message, control_id=control_id, sending_app=sending_app)


def build_nak(header: Header | None, code: str, reason: str, error: tuple[str, str] = ERR_INTERNAL) -> bytes:
    """An ACK with MSA-1 `code` (AE/AR), MSA-2 the inbound MSH-10, MSA-3 and an ERR segment saying why."""
    ack: hl7.Message | None = None
    if header is not None:
        try:
            ack = header.message.create_ack(code)
        except Exception:  # noqa: BLE001 - an odd but parseable MSH: fall back to a plain ACK
            ack = None
    if ack is None:
        ack = hl7.parse(
            f"MSH|^~\\&|{BRIDGE_APPLICATION}||||{_timestamp()}||ACK|{generate_message_control_id()}|P|2.5\r"
            f"MSA|{code}"
        )
    separators = set(str(ack.segment("MSH")(1)) + str(ack.segment("MSH")(2)))
    text = "".join(ch for ch in _UNSAFE.sub(" ", reason) if ch not in separators)
    msa = ack.segment("MSA")
    if header is not None:
        control_id = "".join(ch for ch in _UNSAFE.sub("", header.control_id) if ch not in separators)
        msa.assign_field(control_id, 2)
    msa.assign_field(text, 3)
    err = ack.create_segment([ack.create_field(["ERR"])])
    err.assign_field(error[0], 3, 1, 1)
    err.assign_field(error[1], 3, 1, 2)
    err.assign_field("HL70357", 3, 1, 3)
    err.assign_field("E", 4)
    err.assign_field(text, 8)
    ack.append(err)
    return str(ack).encode("ascii", errors="replace")


def _timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")


def check_ack(body: bytes, header: Header) -> str:
    """The ACK code of an upstream body that is an HL7 ACK for this message; UpstreamError otherwise."""
    if not body.strip() or START_BLOCK in body or b"\x1c" in body:
        raise UpstreamError("upstream answer is not an HL7 ACK")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("latin-1")
    text = re.sub(r"\r\n|\n", "\r", text).strip()
    if not text.startswith("MSH"):
        raise UpstreamError("upstream answer is not an HL7 ACK")
    try:
        msa = hl7.parse(text).segment("MSA")
        code = str(msa(1))
        acked = str(msa(2)) if len(msa) > 2 else ""
    except Exception as exc:  # anything python-hl7 cannot read is "not an ACK"
        raise UpstreamError("upstream answer is not an HL7 ACK") from exc
    if code not in ACK_CODES:
        raise UpstreamError("upstream answer is not an HL7 ACK")
    if acked != header.control_id:
        raise UpstreamError("upstream ACK is for another message")
    return code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would resend the token elsewhere (and urllib turns a POST into a GET): refuse it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class Upstream:
    """The platform endpoint; the token file is read for each request so tokens can be rotated."""

    url: str
    token_file: Path
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    def read_token(self) -> str:
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UpstreamError("token file cannot be read") from exc
        if not token or any(ch.isspace() for ch in token) or not token.isprintable():
            raise UpstreamError("token file does not hold one token")
        return token

    def post(self, body: bytes) -> tuple[int, bytes]:
        """POST one message; (HTTP status, response body) or UpstreamError when nothing came back."""
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked by the CLI (http/https)
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": HL7_V2_CONTENT_TYPE,
                "Authorization": f"Bearer {self.read_token()}",
                "User-Agent": "ehr-mllp-bridge",
            },
        )
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read(MAX_ACK_BYTES)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read(MAX_ACK_BYTES)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise UpstreamError(f"upstream timed out after {self.timeout:g} s") from exc
            raise UpstreamError(f"upstream unreachable: {_describe(exc.reason)}") from exc
        except TimeoutError as exc:
            raise UpstreamError(f"upstream timed out after {self.timeout:g} s") from exc
        except (OSError, ValueError) as exc:  # reset mid-response, malformed status line, ...
            raise UpstreamError(f"upstream failed: {_describe(exc)}") from exc


def _describe(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "host not found"
    if isinstance(reason, BaseException):
        return type(reason).__name__
    return str(reason)[:80]


@dataclass(frozen=True)
class _Frame:
    data: bytes
    oversized: bool = False


class MllpBridge:
    """The asyncio server: one task per connection, one upstream request per message."""

    def __init__(self, upstream: Upstream, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.upstream = upstream
        self.max_message_bytes = max_message_bytes
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task[None], bool] = {}  # task -> busy with a message
        self._stopping = False

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await hl7.mllp.start_hl7_server(
            self._serve, host, port, limit=self.max_message_bytes + len(END_BLOCK) + 1
        )
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def aclose(self) -> None:
        """Stop accepting; let messages in flight get their ACK; then close every connection."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=self.upstream.timeout + 5)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        try:
            while not self._stopping:
                frame = await self._read_frame(reader)
                if frame is None:
                    break
                self._connections[task] = True
                reply = await self.handle(frame.data, oversized=frame.oversized)
                writer.writeblock(reply)
                await writer.drain()
                self._connections[task] = False
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 - one broken connection must not stop the others
            log.warning("mllp connection failed: %s", type(exc).__name__)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_frame(self, reader: hl7.mllp.HL7StreamReader) -> _Frame | None:
        """The next frame's content (None at end of stream); an oversized frame is skipped to its end."""
        head = b""
        oversized = False
        while True:
            try:
                chunk = await reader.readuntil(END_BLOCK)
            except asyncio.IncompleteReadError as exc:
                if oversized or exc.partial.strip(b" \t\r\n\x00"):
                    log.warning("mllp connection closed in the middle of a message; no ACK could be sent")
                return None
            except asyncio.LimitOverrunError as exc:
                skipped = await reader.readexactly(exc.consumed)
                if not oversized:
                    head = skipped[:HEAD_BYTES]
                oversized = True
                continue
            if oversized:
                start = head.rfind(START_BLOCK)
                return _Frame(data=head[start + 1 :] if start >= 0 else b"", oversized=True)
            start = chunk.rfind(START_BLOCK)
            if start < 0:
                return _Frame(data=b"")
            return _Frame(data=chunk[start + 1 : -len(END_BLOCK)])

    async def handle(self, data: bytes, oversized: bool = False) -> bytes:
        """One message in, the bytes of its ACK (the platform's, or the bridge's NAK) out."""
        try:
            return await self._handle(data, oversized)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the sender gets a NAK
            header = read_header(data)
            reason = f"bridge error ({type(exc).__name__})"
            self._log_nak(header, "AE", reason)
            return build_nak(header, "AE", reason)

    async def _handle(self, data: bytes, oversized: bool) -> bytes:
        header = read_header(data)
        if header is None or oversized:
            if oversized:
                reason, error = f"message larger than {self.max_message_bytes} bytes", ERR_INTERNAL
            elif data.lstrip(b"\xef\xbb\xbf \t\r\n")[:3] in (b"FHS", b"BHS"):
                reason, error = "batches are not accepted; send one message per frame", ERR_SEGMENT_SEQUENCE
            else:
                reason, error = "not an HL7 message (no MSH segment)", ERR_SEGMENT_SEQUENCE
            self._log_nak(header, "AR", reason)
            return build_nak(header, "AR", reason, error)
        try:
            status, body = await asyncio.wait_for(
                asyncio.to_thread(self.upstream.post, data), timeout=self.upstream.timeout + 1
            )
            code = self._accept(status, body, header)
        except TimeoutError:
            reason = f"upstream timed out after {self.upstream.timeout:g} s"
        except UpstreamError as exc:
            reason = exc.reason
        else:
            log.info(
                "mllp message forwarded control_id=%s sending_app=%s http=%s ack=%s",
                _safe(header.control_id),
                _safe(header.sending_app),
                status,
                code,
            )
            return body
        self._log_nak(header, "AE", reason)
        return build_nak(header, "AE", reason)

    @staticmethod
    def _accept(status: int, body: bytes, header: Header) -> str:
        if status in (401, 403):
            raise UpstreamError(f"upstream refused the token (HTTP {status})")
        if status >= 500:
            raise UpstreamError(f"upstream error (HTTP {status})")
        # 2xx, and 4xx such as 400 with an AR ACK: the platform's own answer, passed through as is.
        try:
            return check_ack(body, header)
        except UpstreamError as exc:
            raise UpstreamError(f"{exc.reason} (HTTP {status})") from exc

    @staticmethod
    def _log_nak(header: Header | None, code: str, reason: str) -> None:
        log.warning(
            "mllp message answered %s control_id=%s sending_app=%s reason=%s",
            code,
            _safe(header.control_id) if header else "-",
            _safe(header.sending_app) if header else "-",
            reason,
        )


def _safe(value: str) -> str:
    return _UNSAFE.sub("?", value)[:64] or "-"


class BridgeServer:
    """An `MllpBridge` on its own event loop thread, for the CLI and for tests: start() then stop()."""

    def __init__(self, upstream: Upstream, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.bridge = MllpBridge(upstream, max_message_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (0 picks a free port); returns the bound address. OSError if it cannot."""
        loop = asyncio.new_event_loop()
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(UPSTREAM_WORKERS, thread_name_prefix="mllp-upstream")
        )
        try:
            address = loop.run_until_complete(self.bridge.start(host, port))
        except BaseException:
            loop.close()
            raise
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="mllp-bridge", daemon=True)
        self._thread.start()
        return address

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        asyncio.run_coroutine_threadsafe(self.bridge.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
