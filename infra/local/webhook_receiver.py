"""A loopback webhook receiver: records every POST, checks X-EHR signatures, fails on request.

Local mode and tests only (stdlib ``http.server`` in a thread; no dependencies). Point a
Subscription's ``channel.endpoint`` at it (``http://127.0.0.1:PORT/hook`` is allowed in local
mode) and watch what the platform delivers::

    python -m infra.local.webhook_receiver --port 9000 --secret-file tenant-webhook.key

In Python (the tests do this)::

    with WebhookReceiver(secret=b"...") as receiver:          # listens on a free port
        url = receiver.url                                     # http://127.0.0.1:PORT/hook
        receiver.fail(2)                                       # the next 2 requests get HTTP 500
        receiver.fail(1, status=None)                          # the next one: connection dropped
        receiver.fail(1, status=200, delay=2.0)                # the next one: answered after 2 s
        ...
        receiver.wait_for(1)                                   # -> [ReceivedDelivery, ...]

Every request to any path is recorded (``deliveries``) with its headers, body, the status it was
answered with and whether its signature is valid (``ehr.labs.webhook.verify``: HMAC-SHA256 of
``"<X-EHR-Timestamp>.<body>"``, timestamp within 5 minutes). With a secret and
``reject_bad_signatures`` (the default) a request without a valid signature is answered 401.
Otherwise the answer is 204 — unless a scripted failure is pending.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from ehr.labs import webhook
from ehr.sharing.subscriptions import SUBSCRIPTION_HEADER

DEFAULT_PATH: Final = "/hook"
MAX_BODY_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class ReceivedDelivery:
    """One request the receiver got, and how it answered (``status`` None: connection dropped)."""

    method: str
    path: str
    headers: Mapping[str, str]  # names lower-cased
    body: bytes
    status: int | None
    signature_valid: bool | None  # None: the receiver has no secret
    received_at: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def delivery_id(self) -> str | None:
        return self.header(webhook.DELIVERY_HEADER)

    @property
    def timestamp(self) -> str | None:
        return self.header(webhook.TIMESTAMP_HEADER)

    @property
    def signature(self) -> str | None:
        return self.header(webhook.SIGNATURE_HEADER)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class _Script:
    status: int | None  # None: close the connection without answering
    delay: float
    headers: tuple[tuple[str, str], ...] = ()


class WebhookReceiver:
    """A recording HTTP endpoint on the loopback interface. ``start()`` returns its URL."""

    def __init__(
        self, secret: bytes | None = None, *, path: str = DEFAULT_PATH, reject_bad_signatures: bool = True
    ) -> None:
        self.secret = secret
        self.path = path if path.startswith("/") else f"/{path}"
        self.reject_bad_signatures = reject_bad_signatures
        self.url = ""
        self._lock = threading.Condition()
        self._deliveries: list[ReceivedDelivery] = []
        self._script: deque[_Script] = deque()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- scripting ------------------------------------------------------------------------------

    def fail(
        self,
        times: int = 1,
        *,
        status: int | None = 500,
        delay: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (None: drop the connection) and
        ``headers`` (``Retry-After``, ``Location`` …), each after ``delay`` seconds (longer than the
        sender's timeout: a timeout)."""
        script = _Script(status, delay, tuple((headers or {}).items()))
        with self._lock:
            self._script.extend(script for _ in range(times))

    def reset(self) -> None:
        """Forget the deliveries and any scripted failures still pending."""
        with self._lock:
            self._deliveries.clear()
            self._script.clear()

    # -- observation ----------------------------------------------------------------------------

    @property
    def deliveries(self) -> list[ReceivedDelivery]:
        with self._lock:
            return list(self._deliveries)

    @property
    def accepted(self) -> list[ReceivedDelivery]:
        """The requests answered with 2xx."""
        return [d for d in self.deliveries if d.status is not None and 200 <= d.status < 300]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedDelivery]:
        """The deliveries once there are at least ``count`` (raises TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self._deliveries)} of {count} deliveries arrived")
                self._lock.wait(left)
            return list(self._deliveries)

    def verify(self, delivery: ReceivedDelivery, secret: bytes | None = None) -> bool:
        """Whether ``delivery`` is signed with ``secret`` (default: the receiver's)."""
        key = secret if secret is not None else self.secret
        if key is None:
            raise ValueError("no secret to verify with")
        return webhook.verify(key, delivery.timestamp or "", delivery.body, delivery.signature or "")

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port); returns the webhook URL."""
        if self._server is not None:
            raise RuntimeError("the webhook receiver is already running")
        receiver = self

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        class Handler(_Handler):
            owner = receiver

        self._stopping.clear()
        self._server = Server((host, port), Handler)
        bound_host, bound_port = self._server.server_address[:2]
        bound = bound_host.decode() if isinstance(bound_host, bytes) else str(bound_host)
        shown = f"[{bound}]" if ":" in bound else bound
        self.url = f"http://{shown}:{bound_port}{self.path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop listening (scripted delays end at once). Safe to call twice."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- called by the handler ------------------------------------------------------------------

    def _next(self) -> _Script | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _record(self, delivery: ReceivedDelivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)
            self._lock.notify_all()

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    owner: WebhookReceiver
    protocol_version = "HTTP/1.1"
    server_version = "ehr-webhook-receiver"

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._reply(413 if length > 0 else 411)
            return
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        owner = self.owner
        valid: bool | None = None
        if owner.secret is not None:
            valid = webhook.verify(
                owner.secret,
                headers.get(webhook.TIMESTAMP_HEADER.lower(), ""),
                body,
                headers.get(webhook.SIGNATURE_HEADER.lower(), ""),
            )
        script = owner._next()
        status: int | None
        extra: tuple[tuple[str, str], ...] = ()
        if script is not None:
            extra = script.headers
            status = script.status
            owner._pause(script.delay)
        elif valid is False and owner.reject_bad_signatures:
            status = 401
        else:
            status = 204
        owner._record(ReceivedDelivery("POST", self.path, headers, body, status, valid, time.time()))
        if status is None:
            self.close_connection = True  # no answer at all: the sender sees the connection close
            return
        # OSError: the sender gave up waiting (a scripted delay longer than its timeout).
        with contextlib.suppress(OSError):
            self._reply(status, extra)

    def do_GET(self) -> None:
        self._reply(200 if self.path.split("?", 1)[0] == "/health" else 405)

    def _reply(self, status: int, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the command line prints one line per delivery itself


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.webhook_receiver",
        description="Print the webhook deliveries (FHIR Subscription notifications) it receives.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--path", default=DEFAULT_PATH)
    parser.add_argument(
        "--secret-file", help="the tenant's webhook HMAC secret; default: $EHR_WEBHOOK_SECRET, if set"
    )
    parser.add_argument("--fail", type=int, default=0, help="answer the first N requests with --status")
    parser.add_argument("--status", type=int, default=500)
    args = parser.parse_args(argv)
    secret: bytes | None = None
    if args.secret_file:
        secret = Path(args.secret_file).read_bytes().strip()
    elif os.environ.get("EHR_WEBHOOK_SECRET"):
        secret = os.environ["EHR_WEBHOOK_SECRET"].encode()
    receiver = WebhookReceiver(secret, path=args.path)
    if args.fail:
        receiver.fail(args.fail, status=args.status)
    url = receiver.start(args.host, args.port)
    print(f"webhook receiver listening on {url} (signatures {'checked' if secret else 'not checked'})")
    seen = 0
    try:
        while True:
            deliveries = receiver.deliveries
            for delivery in deliveries[seen:]:
                signed = {True: "valid", False: "INVALID", None: "unchecked"}[delivery.signature_valid]
                print(
                    f"{time.strftime('%H:%M:%S', time.localtime(delivery.received_at))} "
                    f"{delivery.path} -> {delivery.status or 'dropped'} delivery={delivery.delivery_id} "
                    f"subscription={delivery.header(SUBSCRIPTION_HEADER)} signature={signed} "
                    f"body={delivery.body[:500].decode('utf-8', errors='replace') or '(empty)'}",
                    flush=True,
                )
            seen = len(deliveries)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
