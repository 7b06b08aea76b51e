"""One signed HTTP POST to a subscriber's rest-hook endpoint: the transport under Subscriptions.

Signing is the platform's one webhook convention (``ehr.labs.webhook``): ``X-EHR-Timestamp``,
``X-EHR-Delivery`` and ``X-EHR-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``,
checked by a receiver with ``ehr.labs.webhook.verify``.

``post`` sends exactly one request and reports what came back; retries, back-off and what an
answer means belong to ``ehr.sharing.subscriptions.SubscriptionDeliverer``. It uses
``http.client`` directly, so that:

- redirects are never followed (a redirect could lead a request past the endpoint allow-list:
  a 3xx is returned as it is, and the deliverer treats it as a refusal);
- no body is sent with no ``Content-Type`` invented for it (an empty notification is a
  ``Content-Length: 0`` POST);
- https certificates and host names are verified with the system's trust store.

Errors never quote the endpoint (its query string may carry a subscriber's token).
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from ehr.labs.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

MAX_REPLY_BYTES: Final = 64 * 1024  # read (and drop) at most this much of an answer
MAX_RETRY_AFTER_SECONDS: Final = 3600.0


class WebhookUnreachableError(Exception):
    """The endpoint gave no HTTP answer (connection refused or dropped, timeout, TLS failure)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class Reply:
    """The endpoint's HTTP answer: its status and, when it sent one, ``Retry-After`` in seconds."""

    status: int
    retry_after: float | None = None


def signed_headers(secret: bytes, body: bytes, delivery_id: str, *, now: float) -> dict[str, str]:
    """The three ``X-EHR-*`` headers of one attempt (a fresh timestamp, the same delivery id)."""
    timestamp = str(int(now))
    return {
        TIMESTAMP_HEADER: timestamp,
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def post(url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> Reply:
    """POST ``body`` to ``url`` once; raise ``WebhookUnreachableError`` when nothing answers."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookUnreachableError("not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookUnreachableError("not an http(s) URL") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        # The port is always passed: http.client would read "::1" as host ":" and port 1.
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", target, body=body, headers=dict(headers))
        answer = connection.getresponse()
        answer.read(MAX_REPLY_BYTES)
        return Reply(answer.status, _retry_after(answer.getheader("Retry-After")))
    except (OSError, http.client.HTTPException) as error:
        raise WebhookUnreachableError(_kind(error)) from error
    except ValueError as error:  # http.client refuses what it cannot encode (non-ASCII, CR/LF)
        raise WebhookUnreachableError("the request could not be encoded") from error
    finally:
        connection.close()


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (only the delta-seconds form; an HTTP date is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER_SECONDS)


def _kind(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(error, socket.gaierror):
        return "host name not resolved"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
        return "connection closed without an answer"
    if isinstance(error, http.client.HTTPException):
        return "not a valid HTTP answer"
    return "connection failed"
