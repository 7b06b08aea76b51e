"""What the HL7 v2 standard says a message must contain, from hl7apy's message definitions.

hl7apy ships the structures of every version from 2.1 to 2.8.2. Parsing each message with it
costs about 30 times a split parse, so this adapter reads the definitions once per (version, structure)
and checks the fast parser's output against them: versions outside 2.1 to 2.8 are rejected,
and segments a structure requires or fields the standard marks required are reported as
warnings: real feeds omit them (an ADT without EVN is common), and the mapping decides what it
cannot do without (a missing PID is an error there, a missing EVN is not).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from hl7apy import SUPPORTED_LIBRARIES, load_library, load_reference
from hl7apy.exceptions import ChildNotFound

from ehr.hl7v2.ack import AckIssue
from ehr.hl7v2.er7 import Message

# HL7 table 0354: the message structure of each trigger event this endpoint maps.
STRUCTURES: dict[tuple[str, str], str] = {
    ("ADT", "A01"): "ADT_A01",
    ("ADT", "A04"): "ADT_A01",
    ("ADT", "A08"): "ADT_A01",
    ("ADT", "A03"): "ADT_A03",
    ("ADT", "A31"): "ADT_A05",
    ("ADT", "A40"): "ADT_A39",
    ("ORU", "R01"): "ORU_R01",
    ("ORM", "O01"): "ORM_O01",
    ("OML", "O21"): "OML_O21",
    ("MDM", "T02"): "MDM_T02",
    ("VXU", "V04"): "VXU_V04",
}
_STANDARD_ONLY = frozenset({"MSH", "MSA", "ERR"})


def library_version(version: str) -> str | None:
    """The hl7apy library serving ``version`` (``2.7.1`` is read as 2.7), or None if unsupported."""
    version = version.strip()
    if version in SUPPORTED_LIBRARIES:
        return version
    parts = version.split(".")
    for cut in range(len(parts) - 1, 1, -1):
        candidate = ".".join(parts[:cut])
        if candidate in SUPPORTED_LIBRARIES:
            return candidate
    return None


def _walk(children: Any, required: bool, segments: set[str], known: set[str]) -> None:
    for name, sub, cardinality, kind in children:
        mandatory = required and cardinality[0] >= 1
        if kind == "GRP":
            _walk(sub[1], mandatory, segments, known)
        else:
            known.add(name)
            if mandatory:
                segments.add(name)


@lru_cache(maxsize=256)
def required_segments(version: str, structure: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """``(required, allowed)`` segment names of ``structure`` in ``version``; None if unknown."""
    required: set[str] = set()
    allowed: set[str] = set()
    try:
        reference = load_reference(structure, "Message", version)
        _walk(reference[1], True, required, allowed)
    except (ChildNotFound, IndexError, TypeError, ValueError):
        return None
    return frozenset(required), frozenset(allowed)


@lru_cache(maxsize=2048)
def required_fields(version: str, segment: str) -> tuple[tuple[int, str], ...]:
    """``(field number, field name)`` of the fields ``segment`` requires in ``version``."""
    try:
        reference = load_reference(segment, "Segment", version)
        out: list[tuple[int, str]] = []
        for name, sub, cardinality, _kind in reference[1]:
            if cardinality[0] >= 1:
                out.append((int(name.rsplit("_", 1)[1]), str(sub[3]).replace("_", " ").lower()))
    except (ChildNotFound, IndexError, TypeError, ValueError):  # unknown, or a shape without fields
        return ()
    return tuple(out)


@lru_cache(maxsize=32)
def _segments_of(version: str) -> frozenset[str]:
    return frozenset(load_library(version).SEGMENTS)


def check(message: Message) -> tuple[list[AckIssue], list[AckIssue]]:
    """``(errors, warnings)`` of ``message`` against the standard's definition of its structure."""
    errors: list[AckIssue] = []
    warnings: list[AckIssue] = []
    version = library_version(message.version)
    if version is None:
        errors.append(
            AckIssue(
                f"HL7 version {message.version!r} is not supported; this endpoint reads 2.1 to 2.8.",
                code="203",
                segment="MSH",
                position=1,
                field=12,
            )
        )
        return errors, warnings
    structure = message.structure or STRUCTURES.get((message.message_type, message.trigger_event), "")
    shape = required_segments(version, structure) if structure else None
    present = {s.name for s in message.segments}
    if shape is not None:
        required, allowed = shape
        warnings.extend(
            AckIssue(
                f"{structure} in HL7 {version} requires segment {name}; it is missing.",
                code="100",
                severity="W",
                segment=name,
            )
            for name in sorted(required - present - _STANDARD_ONLY)
        )
        known = _segments_of(version)
        warnings.extend(
            AckIssue(
                f"Segment {seg.name} is not part of {structure} in HL7 {version} and was ignored.",
                code="100",
                severity="W",
                segment=seg.name,
                position=seg.position,
            )
            for seg in message.segments
            if seg.name not in allowed and not seg.name.startswith("Z") and seg.name in known
        )
    for seg in message.segments:
        if seg.name.startswith("Z") or seg.name == "MSH":
            continue
        for number, name in required_fields(version, seg.name):
            if not seg.raw(number):
                warnings.append(
                    AckIssue(
                        f"{seg.name}-{number} ({name}) is required by HL7 {version} and is empty.",
                        code="101",
                        severity="W",
                        segment=seg.name,
                        position=seg.position,
                        field=number,
                    )
                )
    return errors, warnings
