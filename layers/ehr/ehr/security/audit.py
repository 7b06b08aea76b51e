"""The audit trail: every read, search, write, delete, export and refused access of PHI leaves
a FHIR AuditEvent in an append-only store. The request pipeline records one per request and
fails closed: no PHI leaves without its audit record (``AuditUnavailableError`` → 503).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ehr.store.ports import Page

# FHIR AuditEvent.action: Create, Read, Update, Delete, Execute.
Action = Literal["C", "R", "U", "D", "E"]
# FHIR AuditEvent.outcome: success, minor failure (refused), serious failure, major failure.
Outcome = Literal["0", "4", "8", "12"]


@dataclass(frozen=True)
class AuditRecord:
    """What happened, by whom, to what — identifiers only; the store keeps it encrypted."""

    id: str
    tenant: str
    recorded: str  # FHIR instant, UTC
    action: Action
    subtype: str  # restful-interaction code (read, search-type, create…) or operation name
    outcome: Outcome
    status: int  # HTTP status of the answer
    client_id: str | None = None
    user: str | None = None  # token subject
    fhir_user: str | None = None
    source_ip: str | None = None
    request_id: str | None = None
    purpose_of_use: str | None = None
    entities: tuple[str, ...] = ()  # "Type/id" of the resources read or written
    patients: tuple[str, ...] = ()  # ids of the patients whose data was touched
    query: str | None = None  # the search query, when the request was a search
    resource_type: str | None = None
    # A cross-facility read: the tenant (facility) whose user read this tenant's records.
    requesting_tenant: str | None = None


class AuditUnavailableError(Exception):
    """The audit record could not be stored; the request must not return PHI."""


class AuditRecordExistsError(AuditUnavailableError):
    """A record with this id is already in the trail: the store is append-only and keeps the first."""

    def __init__(self, tenant: str, record_id: str) -> None:
        super().__init__(f"audit record {record_id} of tenant {tenant} already exists")
        self.tenant = tenant
        self.record_id = record_id


class AuditQueryError(ValueError):
    """A query of the trail the store will not run (window too wide, malformed date or cursor)."""


class AuditSink(Protocol):
    def record(self, record: AuditRecord) -> None:
        """Store the record durably or raise ``AuditUnavailableError``."""
        ...

    def query(
        self,
        tenant: str,
        *,
        patient: str | None,
        since: str | None,
        until: str | None,
        limit: int,
        cursor: dict[str, Any] | None,
    ) -> Page[AuditRecord]:
        """A tenant's records, newest first, optionally for one patient and a time window."""
        ...


@dataclass
class InMemoryAuditSink:
    """The fake beside the port; ``fail`` makes it refuse every write (fail-closed tests)."""

    records: list[AuditRecord] = field(default_factory=list)
    fail: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, record: AuditRecord) -> None:
        if self.fail:
            raise AuditUnavailableError("audit store refused the write")
        with self._lock:
            self.records.append(record)

    def query(
        self,
        tenant: str,
        *,
        patient: str | None,
        since: str | None,
        until: str | None,
        limit: int,
        cursor: dict[str, Any] | None,
    ) -> Page[AuditRecord]:
        with self._lock:
            rows = [
                r
                for r in self.records
                if r.tenant == tenant
                and (patient is None or patient in r.patients)
                and (since is None or r.recorded >= since)
                and (until is None or r.recorded <= until)
            ]
        rows.sort(key=lambda r: (r.recorded, r.id), reverse=True)
        offset = int((cursor or {}).get("offset", 0))
        page = tuple(rows[offset : offset + limit])
        following = {"offset": offset + limit} if offset + limit < len(rows) else None
        return Page(page, following, len(page))
