"""ER7 (pipe-and-hat) text: normalise what real feeds get wrong, split batches, parse into segments.

This is the fast path every inbound message takes: a split parser that keeps each field as text
and decodes escape sequences only for the values the mapping reads. What a message type must
contain, and what each field is, comes from hl7apy's message definitions (``ehr.hl7v2.structure``).

Normalisation is deliberately narrow — only what can be undone without guessing:
- a UTF-8 byte order mark is dropped; bytes that are not UTF-8 are read as Latin-1 (ISO 8859-1,
  the most common 8-bit HL7 character set), so nothing is lost;
- CRLF and LF segment terminators become CR, and blank lines are dropped;
- a line that does not start with a segment id is a segment broken by a stray line feed and is
  joined back to the segment before it;
- MSH-2 written with a doubled escape character (``^~\\\\&``) is read as ``^~\\&``; a fifth
  encoding character (the 2.7+ truncation character) is accepted in any version;
- batch envelopes (FHS/BHS/BTS/FTS) are taken apart into their messages.
A message without MSH-12 is read as version 2.5.1 (``Message.version_assumed`` says so).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

DEFAULT_VERSION = "2.5.1"
BOM = "\ufeff"
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_ENVELOPE = frozenset({"FHS", "BHS", "BTS", "FTS"})
_HEX = re.compile(r"^[0-9A-Fa-f]+$")


class Er7Error(ValueError):
    """The text cannot be read as HL7 v2 ER7; ``reason`` says why in words a sender understands."""

    def __init__(self, reason: str, *, segment: str = "MSH", position: int = 1, field: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segment = segment
        self.position = position
        self.field = field


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    def escape_text(self, value: str) -> str:
        """``value`` made safe to place in one ER7 leaf (the reverse of ``unescape``)."""
        e = self.escape
        out = value.replace(e, f"{e}E{e}")
        for char, code in (
            (self.field, "F"),
            (self.component, "S"),
            (self.subcomponent, "T"),
            (self.repetition, "R"),
        ):
            out = out.replace(char, f"{e}{code}{e}")
        return out.replace("\r", f"{e}.br{e}").replace("\n", f"{e}.br{e}")

    def unescape(self, value: str) -> str:
        """Decode HL7 escape sequences: delimiters, ``\\.br\\``, highlighting, ``\\Xhh\\``."""
        e = self.escape
        if e not in value:
            return value
        parts = value.split(e)
        # parts alternate text, sequence, text, ...; an unmatched escape keeps its text.
        out: list[str] = [parts[0]]
        i = 1
        while i < len(parts):
            if i + 1 >= len(parts):  # a lone escape character with nothing closing it
                out.append(e + parts[i])
                break
            out.append(self._sequence(parts[i]))
            out.append(parts[i + 1])
            i += 2
        return "".join(out)

    def _sequence(self, code: str) -> str:
        simple = {
            "F": self.field,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
            "P": self.truncation or "#",
            ".br": "\n",
            "H": "",
            "N": "",
        }
        if code in simple:
            return simple[code]
        if code.startswith("X") and len(code) > 1 and len(code) % 2 == 1 and _HEX.match(code[1:]):
            raw = bytes.fromhex(code[1:])
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw.decode("latin-1")
        if code.startswith((".sp", ".in", ".ti", ".fi", ".nf", ".ce", ".sk")):
            return "\n" if code.startswith(".sp") else ""
        if code.startswith(("C", "M", "Z")):  # character-set switches and locally defined: dropped
            return ""
        return self.escape + code + self.escape


@dataclass
class Segment:
    """One segment. Field numbers are HL7's: ``PID-3`` is ``seg.get(3)``; for MSH, ``get(1)`` is
    the field separator and ``get(2)`` the encoding characters, as the standard counts them."""

    name: str
    fields: list[str]  # fields[0] is the segment id; for MSH fields[1] is the separator itself
    encoding: Encoding
    position: int  # 1-based place in the message, for ERR locations

    def raw(self, number: int) -> str:
        return self.fields[number] if 0 < number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[Repetition]:
        raw = self.raw(number)
        if not raw:
            return []
        if self.name == "MSH" and number in (1, 2):
            return [Repetition(raw, self.encoding, literal=True)]
        return [Repetition(r, self.encoding) for r in raw.split(self.encoding.repetition) if r != ""]

    def first(self, number: int) -> Repetition:
        reps = self.repetitions(number)
        return reps[0] if reps else Repetition("", self.encoding)

    def get(self, number: int, component: int = 1, subcomponent: int = 1) -> str:
        """The decoded text at ``SEG-number.component.subcomponent`` of the first repetition."""
        return self.first(number).get(component, subcomponent)

    def text(self, number: int) -> str:
        """Every repetition and component of a field as decoded text (for TX/FT/ST values)."""
        raw = self.raw(number)
        return self.encoding.unescape(raw) if raw else ""

    def __len__(self) -> int:
        return len(self.fields) - 1


@dataclass
class Repetition:
    """One repetition of a field: components, each with subcomponents."""

    raw: str
    encoding: Encoding
    literal: bool = False

    @cached_property
    def components(self) -> list[str]:
        if self.literal:
            return [self.raw]
        return self.raw.split(self.encoding.component)

    def get(self, component: int = 1, subcomponent: int = 1) -> str:
        comps = self.components
        if not 0 < component <= len(comps):
            return ""
        value = comps[component - 1]
        if self.literal:
            return value
        if self.encoding.subcomponent in value:
            subs = value.split(self.encoding.subcomponent)
            value = subs[subcomponent - 1] if 0 < subcomponent <= len(subs) else ""
        elif subcomponent != 1:
            return ""
        value = self.encoding.unescape(value)
        return "" if value == '""' else value  # "" is HL7's explicit null

    def is_null(self) -> bool:
        return self.raw == '""'

    def __bool__(self) -> bool:
        return bool(self.raw)


@dataclass
class Message:
    """One parsed ER7 message."""

    text: str  # the normalised text (segments joined by CR)
    segments: list[Segment]
    encoding: Encoding
    version_assumed: bool = False
    notes: list[str] = field(default_factory=list)  # what normalisation changed, for the archive

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    @property
    def version(self) -> str:
        return self.msh.get(12) or DEFAULT_VERSION

    @property
    def message_type(self) -> str:
        return self.msh.get(9, 1).upper()

    @property
    def trigger_event(self) -> str:
        return self.msh.get(9, 2).upper()

    @property
    def structure(self) -> str:
        return self.msh.get(9, 3).upper()

    @property
    def control_id(self) -> str:
        return self.msh.get(10)

    @property
    def sending_application(self) -> str:
        return self.msh.get(3) or self.msh.get(3, 2)

    @property
    def sending_facility(self) -> str:
        return self.msh.get(4) or self.msh.get(4, 2)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def following(
        self, start: Segment, names: frozenset[str] | set[str], stop: frozenset[str] | set[str]
    ) -> Iterator[Segment]:
        """Segments named in ``names`` after ``start`` until one named in ``stop`` (groups such as
        an OBR's OBX/NTE/SPM children)."""
        for seg in self.segments[start.position :]:
            if seg.name in stop:
                return
            if seg.name in names:
                yield seg


def decode(payload: bytes | str) -> str:
    """Bytes to text: UTF-8 (BOM dropped), else Latin-1 so no byte is lost."""
    if isinstance(payload, bytes):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = payload.decode("latin-1")
    else:
        text = payload
    return text.lstrip(BOM)


def lines(text: str) -> list[str]:
    """Segments of ER7 text: any of CR, CRLF, LF ends one; blank lines dropped; a line that does
    not begin with a segment id and the field separator (a segment broken by a stray line feed)
    is joined to the one before."""
    start = text.find("MSH")
    if start < 0:
        start = max(text.find("BHS"), text.find("FHS"))
    separator = text[start + 3] if start >= 0 and len(text) > start + 3 else "|"
    out: list[str] = []
    for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        stripped = line.strip(" \t\x00\x0b\x1c")
        if not stripped:
            continue
        if _SEGMENT_ID.match(stripped[:3]) and (len(stripped) == 3 or stripped[3] == separator):
            out.append(stripped)
        elif out:
            out[-1] += line.rstrip("\x00\x0b\x1c")  # a continuation: joined as it came
        else:
            out.append(stripped)
    return out


def split_messages(text: str) -> tuple[list[str], list[str]]:
    """``(messages, envelope)``: each message's segments joined by CR, and the batch envelope
    segments (FHS/BHS/BTS/FTS) that surrounded them. Text before the first MSH that is not an
    envelope segment becomes its own (headless) entry so it is answered, not dropped."""
    messages: list[list[str]] = []
    envelope: list[str] = []
    current: list[str] | None = None
    for line in lines(text):
        name = line[:3]
        if name in _ENVELOPE:
            envelope.append(line)
            current = None
            continue
        if name == "MSH" or current is None:
            current = [line]
            messages.append(current)
        else:
            current.append(line)
    return ["\r".join(m) for m in messages], envelope


def parse(text: str) -> Message:
    """One message's text (segments separated by CR, as ``split_messages`` gives them) parsed.

    Raises ``Er7Error`` when there is no usable MSH: nothing else is fatal at this level.
    """
    segs = lines(text)
    if not segs or not segs[0].startswith("MSH"):
        raise Er7Error("The message does not start with an MSH segment.")
    msh_line = segs[0]
    if len(msh_line) < 8:
        raise Er7Error("MSH is too short to hold the field separator and encoding characters.")
    separator = msh_line[3]
    if separator.isalnum() or separator in " \t":
        raise Er7Error(f"MSH-1 (field separator) {separator!r} is not a usable separator.", field=1)
    msh2 = msh_line[4:].split(separator, 1)[0]
    notes: list[str] = []
    if len(msh2) == 5 and msh2[2] == msh2[3] == "\\":  # `^~\\&`: a doubled escape character
        msh2 = msh2[:3] + msh2[4:]
        notes.append("MSH-2 had a doubled escape character")
    if (
        not 4 <= len(msh2) <= 5
        or len(set(msh2 + separator)) != len(msh2) + 1
        or any(c.isalnum() or c.isspace() for c in msh2)
    ):
        raise Er7Error(
            f"MSH-2 (encoding characters) {msh2!r} must be four or five distinct characters, "
            "not letters, digits or spaces, other than the field separator.",
            field=2,
        )
    enc = Encoding(separator, msh2[0], msh2[1], msh2[2], msh2[3], msh2[4] if len(msh2) == 5 else "")
    segments: list[Segment] = []
    for pos, line in enumerate(segs, start=1):
        if pos == 1:
            rest = line[4 + len(msh_line[4:].split(separator, 1)[0]) :]
            fields = ["MSH", separator, msh2, *rest.split(separator)[1:]]
        else:
            fields = line.split(separator)
        segments.append(Segment(fields[0].upper(), fields, enc, pos))
    msg = Message("\r".join(segs), segments, enc, notes=notes)
    if not msg.msh.get(12):
        msg.version_assumed = True
        notes.append(f"MSH-12 missing; read as version {DEFAULT_VERSION}")
    if not msg.message_type:
        raise Er7Error("MSH-9 (message type) is empty.", field=9)
    return msg
