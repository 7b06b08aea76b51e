"""Deliver an HL7 message to a partner's HTTPS webhook, signed with HMAC-SHA256.

The request a partner receives::

    POST <webhook url>
    Content-Type: x-application/hl7-v2+er7
    X-EHR-Timestamp: <unix seconds>
    X-EHR-Delivery: <delivery id, the same on every retry of one delivery>
    X-EHR-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the partner's secret>

    <ER7 message>

The partner answers with an HL7 ACK: AA (accepted), AE/AR (rejected, with the reason in MSA-3 or
ERR-8). Anything else (a connection failure, a timeout, HTTP 5xx/429, a body that is not an ACK)
is transient: the workflow retries with back-off and, when the retries are spent, dead-letters
the order and raises an alert. Retries are safe: the delivery id and the message control id are
the same on every attempt, so a partner that saw the first attempt can recognise the resend.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

SIGNATURE_HEADER = "X-EHR-Signature"
TIMESTAMP_HEADER = "X-EHR-Timestamp"
DELIVERY_HEADER = "X-EHR-Delivery"
ER7 = "x-application/hl7-v2+er7"
MAX_SKEW_SECONDS = 300


class DeliveryError(Exception):
    """The webhook could not be reached or gave no usable answer; retry later."""


@dataclass(frozen=True)
class DeliveryResult:
    accepted: bool
    ack_code: str
    reason: str
    status: int


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, header: str, *, now: float | None = None) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (no replays)."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError:
        return False
    return age <= MAX_SKEW_SECONDS and hmac.compare_digest(signature(secret, timestamp, body), header)


def deliver(
    url: str, body: bytes, *, secret: bytes, delivery_id: str, timeout: float = 10.0
) -> DeliveryResult:
    timestamp = str(int(time.time()))
    request = urllib.request.Request(  # noqa: S310 - the URL is a registered partner webhook (https in the cloud)
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": ER7,
            TIMESTAMP_HEADER: timestamp,
            DELIVERY_HEADER: delivery_id,
            SIGNATURE_HEADER: signature(secret, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            status, answer = reply.status, reply.read(1024 * 1024)
    except urllib.error.HTTPError as error:
        status, answer = error.code, error.read(1024 * 1024) if error.fp else b""
        if status >= 500 or status == 429:
            raise DeliveryError(f"the partner answered HTTP {status}") from error
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        raise DeliveryError(f"the partner could not be reached ({type(error).__name__})") from error
    code, reason = read_ack(answer)
    if code is None:
        raise DeliveryError(f"the partner's answer (HTTP {status}) is not an HL7 ACK")
    return DeliveryResult(accepted=code in ("AA", "CA"), ack_code=code, reason=reason, status=status)


def read_ack(answer: bytes) -> tuple[str | None, str]:
    """(MSA-1, the reason) of an ACK, or (None, "") when the answer is not one."""
    text = answer.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
    start = text.find("MSH")
    if start < 0 or len(text) < start + 4:
        return None, ""
    separator = text[start + 3]
    code: str | None = None
    reasons: list[str] = []
    for segment in text[start:].split("\r"):
        fields = segment.split(separator)
        if fields[0] == "MSA" and len(fields) > 1:
            code = fields[1].strip().upper() or None
            if len(fields) > 3 and fields[3]:
                reasons.append(fields[3])
        elif fields[0] == "ERR" and len(fields) > 8 and fields[8]:
            reasons.append(fields[8])
    return code, "; ".join(dict.fromkeys(r for r in reasons if r))[:500]
