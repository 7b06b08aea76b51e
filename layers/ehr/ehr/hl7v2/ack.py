"""HL7 v2 acknowledgements (original mode ACK) built for the message they answer.

- MSH: sender and receiver swapped from the inbound MSH, MSH-9 ``ACK^<trigger>^ACK`` (just
  ``ACK`` before 2.3.1, where the message structure component does not exist), a fresh MSH-10,
  MSH-11 and MSH-12 echoed, and the sender's own delimiters so it can read the answer.
- MSA: MSA-1 AA/AE/AR, MSA-2 the inbound MSH-10, MSA-3 a readable text.
- ERR: one per problem. From 2.5 on: ERR-2 location (segment^sequence^field^component), ERR-3
  the HL7 table 0357 error code, ERR-4 severity (E/W), ERR-8 the reason for a person. Before 2.5
  the problem goes in ERR-1 (ELD: segment^sequence^field^code&text&HL70357).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ehr.hl7v2.er7 import DEFAULT_VERSION, Encoding, Message

ACCEPT = "AA"
ERROR = "AE"
REJECT = "AR"

# HL7 table 0357 (message error condition codes) used by this endpoint.
ERROR_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}


@dataclass(frozen=True)
class AckIssue:
    """One problem reported in an ERR segment."""

    reason: str
    code: str = "207"
    severity: str = "E"  # E error, W warning, I information
    segment: str = ""
    position: int = 0
    field: int = 0
    component: int = 0


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split("."):
        digits = "".join(c for c in piece if c in "0123456789")
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or (2, 5, 1)


def build_ack(
    message: Message | None,
    code: str,
    *,
    control_id: str,
    text: str = "",
    issues: Sequence[AckIssue] = (),
    now: datetime | None = None,
    receiving_application: str = "EHR",
    receiving_facility: str = "",
) -> str:
    """The ER7 text of the ACK (segments joined by CR) answering ``message``.

    ``message`` is ``None`` when the input had no usable MSH: the ACK then uses the standard
    delimiters, version 2.5.1 and an empty MSA-2, which is all a sender can be told.
    """
    enc = message.encoding if message is not None else Encoding()
    version = message.version if message is not None else DEFAULT_VERSION
    vt = _version_tuple(version)
    if not (2, 1) <= vt < (2, 9):  # not a version we speak: answer in the shape of 2.5.1
        vt = (2, 5, 1)
    if vt < (2, 7) and enc.truncation:
        enc = Encoding(enc.field, enc.component, enc.repetition, enc.escape, enc.subcomponent)
    f, c, s = enc.field, enc.component, enc.subcomponent

    def esc(value: str) -> str:
        return enc.escape_text(value)

    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S") + "+0000"
    if message is not None:
        msh = message.msh
        trigger = message.trigger_event
        to_app, to_fac = msh.raw(3), msh.raw(4)
        from_app = msh.raw(5) or esc(receiving_application)
        from_fac = msh.raw(6) or esc(receiving_facility)
        processing = msh.raw(11) or "P"
        acked = esc(message.control_id)
        version_field = msh.raw(12) or esc(version)
    else:
        trigger, to_app, to_fac = "", "", ""
        from_app, from_fac = esc(receiving_application), esc(receiving_facility)
        processing, acked, version_field = "P", "", version
    if vt >= (2, 3, 1):
        msg_type = f"ACK{c}{esc(trigger)}{c}ACK" if trigger else f"ACK{c}{c}ACK"
    else:
        msg_type = f"ACK{c}{esc(trigger)}" if trigger else "ACK"
    segments = [
        f.join(
            [
                "MSH",
                enc.msh2,
                from_app,
                from_fac,
                to_app,
                to_fac,
                stamp,
                "",
                msg_type,
                esc(control_id),
                processing,
                version_field,
            ]
        ),
        f.join(["MSA", code, acked, esc(text[:80])]) if text else f.join(["MSA", code, acked]),
    ]
    for issue in issues:
        location = c.join(
            [
                issue.segment,
                str(issue.position) if issue.position else "",
                str(issue.field) if issue.field else "",
                str(issue.component) if issue.component else "",
            ]
        ).rstrip(c)
        label = ERROR_TEXT.get(issue.code, "")
        if vt >= (2, 5):
            err_code = c.join([issue.code, esc(label), "HL70357"])
            segments.append(
                f.join(["ERR", "", location, err_code, issue.severity, "", "", "", esc(issue.reason)])
            )
        else:
            eld = c.join([issue.segment, str(issue.position or ""), str(issue.field or "")])
            eld += c + s.join([issue.code, esc(issue.reason), "HL70357"])
            segments.append(f.join(["ERR", eld]))
    return "\r".join(segments)


def batch(acks: Sequence[str], *, envelope: Sequence[str], now: datetime | None = None) -> str:
    """Several ACKs answering a batch: wrapped in BHS/BTS when the input was a batch."""
    if not envelope:
        return "\r".join(acks)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S") + "+0000"
    separator = envelope[0][3] if len(envelope[0]) > 3 else "|"
    msh2 = envelope[0][4:].split(separator, 1)[0] or "^~\\&"
    bhs = separator.join(["BHS", msh2, "EHR", "", "", "", stamp])
    bts = separator.join(["BTS", str(len(acks))])
    return "\r".join([bhs, *acks, bts])
