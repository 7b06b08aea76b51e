"""Fuzzing the HL7 v2 endpoint: mutated real messages never get a 5xx, always a readable ACK.

Seeds are the shared samples (read as they are) plus a few built here; hypothesis mutates them
(bytes dropped, inserted, repeated, delimiters and line ends changed, segments shuffled, fields
replaced, encodings broken) and posts each through the real pipeline, inbound service and
mappers on in-memory fakes. Every answer must be an ACK that python-hl7 (an independent
parser) reads, with MSA-1 in AA/AE/AR and MSA-2 naming the message's control id when it had one.
"""

from __future__ import annotations

import os

import hl7
import pytest
from hl7_support import LAB_SCOPE, SHARED_DATA, Endpoint, adt_a04, endpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehr.hl7v2 import er7

EXAMPLES = int(os.environ.get("EHR_HL7_FUZZ_EXAMPLES", "10000"))
_SEEDS_DIRS = [SHARED_DATA / "hl7v2", SHARED_DATA / "hl7v2-to-fhir"]


def _seeds() -> list[bytes]:
    seeds = [adt_a04(control_id="SEED-1").encode()]
    for folder in _SEEDS_DIRS:
        if folder.is_dir():
            seeds += [p.read_bytes() for p in sorted(folder.glob("*.hl7"))]
    return seeds


SEEDS = _seeds()
INTERESTING = [
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"#",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x0b",
    b"\x1c",
    b'""',
    b"\\X0D\\",
]
INTERESTING += [
    b"\\F\\",
    b"\\E\\",
    b"MSH|^~\\&|",
    b"OBX|1|NM|",
    b"\xff\xfe",
    "é".encode(),
    b"\x00",
    b"\xef\xbb\xbf",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        kind = draw(
            st.sampled_from(["drop", "insert", "repeat", "swap", "field", "truncate", "lineends", "flip"])
        )
        n = len(data)
        at = draw(st.integers(min_value=0, max_value=max(n - 1, 0)))
        if kind == "drop" and n:
            data[at : at + draw(st.integers(1, 40))] = b""
        elif kind == "insert":
            piece = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=12)))
            data[at:at] = piece
        elif kind == "repeat" and n:
            data[at:at] = data[at : at + draw(st.integers(1, 60))]
        elif kind == "swap":
            segments = bytes(data).split(b"\r")
            if len(segments) > 2:
                i = draw(st.integers(1, len(segments) - 1))
                j = draw(st.integers(1, len(segments) - 1))
                segments[i], segments[j] = segments[j], segments[i]
                data = bytearray(b"\r".join(segments))
        elif kind == "field":
            fields = bytes(data).split(b"|")
            if len(fields) > 1:
                i = draw(st.integers(0, len(fields) - 1))
                fields[i] = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(max_size=20)))
                data = bytearray(b"|".join(fields))
        elif kind == "truncate" and n:
            data = data[:at]
        elif kind == "lineends":
            data = bytearray(
                bytes(data).replace(b"\r", draw(st.sampled_from([b"\n", b"\r\n", b"\n\n", b""])))
            )
        elif kind == "flip" and n:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.fixture(scope="module")
def lab(auth_settings, issuer) -> Endpoint:
    return endpoint(auth_settings, issuer.mint(tenant="acme-lab", scope=LAB_SCOPE))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
    database=None,
)
@given(message=mutated())
def test_no_mutated_message_gets_a_5xx_and_every_answer_is_a_valid_ack(lab: Endpoint, message: bytes) -> None:
    lab.ledger.entries.clear()  # each example stands alone (no duplicate-id answers)
    reply = lab.post(message)
    assert reply.status < 500, reply.text
    assert reply.status in (200, 400, 413, 415)
    acks = [s for s in reply.text.split("\r") if s.startswith("MSH")]
    assert acks, reply.text
    parsed = hl7.parse(_first_ack(reply.text))
    msa = parsed.segment("MSA")
    assert str(msa[1]) in ("AA", "AE", "AR")
    assert str(parsed.segment("MSH")[9]).startswith("ACK")
    inbound = _first_message(message)
    if inbound is not None and inbound.control_id.isalnum():
        assert str(msa[2]) == inbound.control_id  # the ACK names the message it answers


def _first_message(message: bytes) -> er7.Message | None:
    texts, _ = er7.split_messages(er7.decode(message))
    try:
        return er7.parse(texts[0]) if texts else None
    except er7.Er7Error:
        return None


def _first_ack(text: str) -> str:
    """The first ACK of a batch answer (BHS ... MSH ... BTS)."""
    segments = text.split("\r")
    start = next(i for i, s in enumerate(segments) if s.startswith("MSH"))
    end = next((i for i in range(start + 1, len(segments)) if segments[i].startswith(("MSH", "BTS"))), None)
    return "\r".join(segments[start:end])
