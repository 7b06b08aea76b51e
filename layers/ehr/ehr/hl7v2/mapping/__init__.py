"""HL7 v2 → FHIR R4: each supported message becomes one FHIR transaction Bundle.

The contract every mapper follows (the inbound service relies on it):

- A mapper is ``map_xxx(message: Message, ctx: MappingContext) -> Mapping``. It never touches a
  store: it only turns one parsed message into a transaction Bundle (a plain JSON dict) whose
  entries the FHIR transaction processor commits atomically, with the scopes of the sender.
- Upserts are conditional updates on business identifiers, never blind creates, so a replay or a
  correction updates (a new version) instead of duplicating: ``request = {"method": "PUT",
  "url": "Patient?identifier=<system>|<value>"}``; each entry has a ``urn:uuid:`` ``fullUrl``
  that other entries reference (the processor resolves it to the stored id).
- Identifier systems: an assigning authority that is an OID (HD-2 with HD-3 ``ISO``) becomes
  ``urn:oid:<oid>``; otherwise ``ctx.identifier_system(namespace)``. Local code systems (not LN,
  SCT, RxNorm, …) become ``ctx.code_system(name)``.
- Problems the sender must fix raise ``MappingError`` (→ ACK AE with an ERR naming the
  segment/field); tolerable oddities are returned as ``Mapping.warnings`` (→ ACK AA with ERR
  severity W). A message type without a mapper → ``UnsupportedMessageError`` (→ ACK AR).
- Patient merges (ADT^A40) are returned in ``Mapping.merges`` as ``(survivor identifier query,
  merged identifier query)``; the inbound service moves references after the Bundle commits.
- Binary payloads (MDM OBX-5 ED) stay inline as base64 ``attachment.data`` in the Bundle; the
  document store moves them to S3 when the transaction commits.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import import_module
from typing import Any

from ehr.hl7v2.er7 import Message

# (message type, trigger event) -> "module:function" of the mapper, imported on first use.
MAPPERS: dict[tuple[str, str], str] = {
    ("ADT", "A01"): "adt:map_adt",
    ("ADT", "A03"): "adt:map_adt",
    ("ADT", "A04"): "adt:map_adt",
    ("ADT", "A08"): "adt:map_adt",
    ("ADT", "A31"): "adt:map_adt",
    ("ADT", "A40"): "adt:map_adt_merge",
    ("ORU", "R01"): "oru:map_oru",
    ("ORM", "O01"): "orders:map_order",
    ("OML", "O21"): "orders:map_order",
    ("MDM", "T02"): "mdm:map_mdm",
    ("VXU", "V04"): "vxu:map_vxu",
}

LOCAL_SYSTEM_BASE = "urn:ehr:hl7v2"


class MappingError(ValueError):
    """The message cannot be mapped as sent; the sender must fix it (ACK AE).

    ``code`` is an HL7 table 0357 error code: 101 required field missing, 102 data type error,
    103 table value not found, 100 segment sequence error, 207 application internal error.
    """

    def __init__(
        self,
        reason: str,
        *,
        segment: str = "",
        position: int = 0,
        field: int = 0,
        component: int = 0,
        code: str = "101",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segment = segment
        self.position = position
        self.field = field
        self.component = component
        self.code = code


class UnsupportedMessageError(MappingError):
    """No mapper for this message type/trigger (ACK AR, HL7 error 200/201)."""


@dataclass(frozen=True)
class Warning_:
    """A tolerated problem reported back in the ACK (ERR with severity W)."""

    reason: str
    segment: str = ""
    position: int = 0
    field: int = 0
    component: int = 0
    code: str = "0"


@dataclass
class Mapping:
    bundle: dict[str, Any]
    warnings: list[Warning_] = field(default_factory=list)
    # (survivor, merged) search pairs, e.g. ("Patient?identifier=s|1", "Patient?identifier=s|2")
    merges: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class MappingContext:
    """What a mapper may know beyond the message: who sent it, for which tenant, and when."""

    tenant: str
    sending_application: str
    sending_facility: str
    received: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def sender(self) -> str:
        return f"{self.sending_application}|{self.sending_facility}"

    def identifier_system(self, namespace: str) -> str:
        """The identifier system for an assigning authority without an OID."""
        slug = _slug(namespace) or "unknown"
        return f"{LOCAL_SYSTEM_BASE}:{_slug(self.tenant)}:id:{slug}"

    def code_system(self, name: str) -> str:
        """The code system of a sender's local coding system (a name not in the known table)."""
        slug = _slug(name) or _slug(self.sending_application) or "local"
        return f"{LOCAL_SYSTEM_BASE}:{_slug(self.tenant)}:cs:{slug}"

    def full_url(self, *parts: str) -> str:
        """A stable ``urn:uuid:`` for an entry, derived from the message so a replay maps the same."""
        seed = "|".join((self.tenant, self.sender, *parts))
        return f"urn:uuid:{uuid.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16], version=5)}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in text.strip().lower()).strip("-")


def mapper_for(message: Message) -> Callable[[Message, MappingContext], Mapping]:
    key = (message.message_type, message.trigger_event)
    target = MAPPERS.get(key)
    if target is None:
        known = sorted({f"{t}^{e}" for t, e in MAPPERS})
        name = f"{key[0]}^{key[1]}" if key[1] else key[0]
        raise UnsupportedMessageError(
            f"Message type {name} is not supported; this endpoint accepts {', '.join(known)}.",
            segment="MSH",
            position=1,
            field=9,
            code="200" if key[0] not in {t for t, _ in MAPPERS} else "201",
        )
    module, function = target.split(":")
    mapper: Callable[[Message, MappingContext], Mapping] = getattr(
        import_module(f"ehr.hl7v2.mapping.{module}"), function
    )
    return mapper


def map_message(message: Message, ctx: MappingContext) -> Mapping:
    """The transaction Bundle for one message (see the module docstring for the contract)."""
    return mapper_for(message)(message, ctx)
