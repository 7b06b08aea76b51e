"""Ports of the HL7 v2 interface, with the in-memory fakes kept beside them.

- ``MessageLedger``: one entry per (tenant, sender, MSH-10): claimed while the message is being
  processed, completed with the ACK it got. A replay of a completed message returns that ACK and
  creates nothing; a concurrent duplicate finds the claim and is told to retry.
- ``MessageArchive``: the raw message, its ACK and what it created, kept encrypted (S3 + KMS in
  the cloud) so every chart entry can be traced back to the bytes it came from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

LedgerStatus = Literal["processing", "done"]


@dataclass(frozen=True)
class LedgerEntry:
    status: LedgerStatus
    digest: str  # SHA-256 of the normalised message text
    lease_until: float = 0.0  # epoch seconds; a processing claim older than this may be taken over
    ack: str = ""
    http_status: int = 0
    references: tuple[str, ...] = ()
    archive_key: str = ""


class LedgerUnavailableError(Exception):
    """The ledger cannot be reached; the message must not be processed now (retry later)."""


class MessageLedger(Protocol):
    def claim(
        self, tenant: str, sender: str, control_id: str, digest: str, *, lease_seconds: float
    ) -> LedgerEntry | None:
        """Claim the message for processing: ``None`` when this caller now owns it, else the
        entry that exists (completed, or claimed by someone else whose lease has not expired)."""
        ...

    def complete(self, tenant: str, sender: str, control_id: str, entry: LedgerEntry) -> None: ...

    def release(self, tenant: str, sender: str, control_id: str) -> None:
        """Drop an unfinished claim (the processing failed transiently) so a retry can run."""
        ...


class MessageArchive(Protocol):
    def put(self, tenant: str, key: str, body: bytes, *, content_type: str) -> None: ...

    def get(self, tenant: str, key: str) -> bytes | None: ...


class ArchiveUnavailableError(Exception):
    """The archive cannot store the message; nothing is processed without its archived source."""


@dataclass
class InMemoryMessageLedger:
    entries: dict[tuple[str, str, str], LedgerEntry] = field(default_factory=dict)
    clock: object = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _now(self) -> float:
        return float(self.clock())  # type: ignore[operator]

    def claim(
        self, tenant: str, sender: str, control_id: str, digest: str, *, lease_seconds: float
    ) -> LedgerEntry | None:
        key = (tenant, sender, control_id)
        with self._lock:
            existing = self.entries.get(key)
            now = self._now()
            if existing is not None and not (existing.status == "processing" and existing.lease_until < now):
                return existing
            self.entries[key] = LedgerEntry("processing", digest, lease_until=now + lease_seconds)
            return None

    def complete(self, tenant: str, sender: str, control_id: str, entry: LedgerEntry) -> None:
        with self._lock:
            self.entries[(tenant, sender, control_id)] = replace(entry, status="done")

    def release(self, tenant: str, sender: str, control_id: str) -> None:
        with self._lock:
            existing = self.entries.get((tenant, sender, control_id))
            if existing is not None and existing.status == "processing":
                del self.entries[(tenant, sender, control_id)]


@dataclass
class InMemoryMessageArchive:
    objects: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    fail: bool = False

    def put(self, tenant: str, key: str, body: bytes, *, content_type: str) -> None:
        if self.fail:
            raise ArchiveUnavailableError("archive unavailable")
        self.objects[(tenant, key)] = (body, content_type)

    def get(self, tenant: str, key: str) -> bytes | None:
        found = self.objects.get((tenant, key))
        return found[0] if found else None

    def keys(self, tenant: str) -> Sequence[str]:
        return sorted(k for t, k in self.objects if t == tenant)
