"""The record store port: what the FHIR service needs from persistence, independent of DynamoDB.

Two implementations keep the same contract (tests run the same suite on both): the in-memory
fake beside this port (``ehr.store.memory``) and the DynamoDB adapter (``ehr.store.dynamo``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

T = TypeVar("T")

Operation = Literal["create", "update", "delete"]


@dataclass(frozen=True, order=True)
class IndexEntry:
    """One search-index item a resource version owns: ``(param, key)`` is equality, ``sort`` is order."""

    param: str
    key: str
    sort: str = ""
    high: str = ""
    text: str = ""  # kept for matching only (token :text, the original string)

    @property
    def indexed(self) -> bool:
        """Whether the entry has an index item; entries without key and sort only serve matching."""
        return bool(self.key or self.sort)


@dataclass(frozen=True)
class StoredResource:
    """A version of a resource as stored. ``body`` is None for a deletion."""

    resource_type: str
    id: str
    version: int
    last_updated: str  # FHIR instant, UTC
    deleted: bool
    body: dict[str, Any] | None
    operation: Operation = "update"
    # What the current version owns in the indexes; only set on current versions.
    index: frozenset[IndexEntry] = frozenset()
    compartments: frozenset[str] = frozenset()

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


@dataclass(frozen=True)
class Write:
    """One resource change inside an atomic commit."""

    resource_type: str
    id: str
    version: int
    operation: Operation
    last_updated: str
    body: dict[str, Any] | None
    index: frozenset[IndexEntry]
    compartments: frozenset[str]
    # The current version this write replaces (None: the resource must not exist yet).
    previous: StoredResource | None

    @property
    def deleted(self) -> bool:
        return self.operation == "delete"


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    cursor: dict[str, Any] | None = None  # the store's own position; the API signs it before handing it out
    scanned: int = 0  # items the store read to produce the page (ScannedCount)


@dataclass(frozen=True)
class IndexHit:
    id: str
    sort: str
    high: str


@dataclass(frozen=True)
class KeyRange:
    """Where a search clause's candidates are in one index: equality on ``key``, optional sort range."""

    param: str
    key: str
    sort_low: str | None = None
    sort_high: str | None = None


class ConflictError(Exception):
    """A commit lost a race: a resource changed (or appeared) since it was read."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"{reference}: {reason}")
        self.reference = reference
        self.reason = reason


class TooLargeError(Exception):
    """A resource or commit is larger than the store can hold."""


@dataclass
class CommitStats:
    """What a commit cost, for benchmarks and metrics."""

    items_written: int = 0
    write_units: float = 0.0
    staged: bool = False
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class RecordStore(Protocol):
    def current(self, tenant: str, resource_type: str, resource_id: str) -> StoredResource | None: ...

    def current_many(
        self, tenant: str, references: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredResource]: ...

    def version(
        self, tenant: str, resource_type: str, resource_id: str, version: int
    ) -> StoredResource | None: ...

    def history(
        self,
        tenant: str,
        resource_type: str,
        resource_id: str,
        *,
        since: str | None,
        limit: int,
        cursor: dict[str, Any] | None,
    ) -> Page[StoredResource]: ...

    def type_history(
        self,
        tenant: str,
        resource_type: str,
        *,
        since: str | None,
        limit: int,
        cursor: dict[str, Any] | None,
    ) -> Page[StoredResource]: ...

    def query_index(
        self,
        tenant: str,
        resource_type: str,
        key_range: KeyRange,
        *,
        limit: int,
        descending: bool,
        cursor: dict[str, Any] | None,
        after: IndexHit | None = None,
    ) -> Page[IndexHit]:
        """Hits in sort order; resume with the page's ``cursor``, or just ``after`` a given hit."""
        ...

    def compartment(
        self, tenant: str, patient_id: str, *, limit: int, cursor: dict[str, Any] | None
    ) -> Page[tuple[str, str]]: ...

    def commit(self, tenant: str, writes: Sequence[Write]) -> CommitStats: ...
