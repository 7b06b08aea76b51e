"""The in-memory ``RecordStore``: the fake kept beside the port, for domain and API tests.

Same contract as the DynamoDB adapter (the store contract tests run against both): atomic
commits with the same conditions, the same index key semantics, the same paging shape.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ehr.store import keys
from ehr.store.ports import (
    CommitStats,
    ConflictError,
    IndexHit,
    KeyRange,
    Page,
    StoredResource,
    Write,
)

_Ref = tuple[str, str, str]  # tenant, type, id


class InMemoryRecordStore:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._current: dict[_Ref, StoredResource] = {}
        self._versions: dict[_Ref, dict[int, StoredResource]] = defaultdict(dict)
        self._history: dict[tuple[str, str], list[tuple[str, str, int]]] = defaultdict(list)
        # (tenant, type, param, key) -> sorted [(sort, id, high)]
        self._index: dict[tuple[str, str, str, str], list[tuple[str, str, str]]] = defaultdict(list)
        self._compartments: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        self.commits = 0

    def current(self, tenant: str, resource_type: str, resource_id: str) -> StoredResource | None:
        with self._lock:
            return self._current.get((tenant, resource_type, resource_id))

    def current_many(
        self, tenant: str, references: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredResource]:
        with self._lock:
            found = {}
            for resource_type, resource_id in references:
                stored = self._current.get((tenant, resource_type, resource_id))
                if stored is not None:
                    found[(resource_type, resource_id)] = stored
            return found

    def version(
        self, tenant: str, resource_type: str, resource_id: str, version: int
    ) -> StoredResource | None:
        with self._lock:
            return self._versions.get((tenant, resource_type, resource_id), {}).get(version)

    def history(
        self,
        tenant: str,
        resource_type: str,
        resource_id: str,
        *,
        since: str | None,
        limit: int,
        cursor: dict[str, Any] | None,
    ) -> Page[StoredResource]:
        with self._lock:
            versions = sorted(
                self._versions.get((tenant, resource_type, resource_id), {}).values(),
                key=lambda s: -s.version,
            )
        if since:
            versions = [v for v in versions if v.last_updated >= since]
        return _page(versions, limit, cursor)

    def type_history(
        self, tenant: str, resource_type: str, *, since: str | None, limit: int, cursor: dict[str, Any] | None
    ) -> Page[StoredResource]:
        with self._lock:
            rows = sorted(self._history.get((tenant, resource_type), []), reverse=True)
            versions = [
                self._versions[(tenant, resource_type, rid)][v]
                for _, rid, v in rows
                if since is None or _ >= since
            ]
        return _page(versions, limit, cursor)

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
        with self._lock:
            rows = list(self._index.get((tenant, resource_type, key_range.param, key_range.key), []))
        low = keys.bounded_sort(key_range.sort_low) if key_range.sort_low is not None else None
        high = keys.bounded_sort(key_range.sort_high) if key_range.sort_high is not None else None
        start = bisect_left(rows, (low, "", "")) if low is not None else 0
        end = bisect_right(rows, (high + "#\uffff", "", "")) if high is not None else len(rows)
        selected = rows[start:end]
        if descending:
            selected.reverse()
        hits = [IndexHit(id=rid, sort=sort, high=hi) for sort, rid, hi in selected]
        if after is not None:
            mark = (keys.bounded_sort(after.sort), after.id)
            hits = [h for h in hits if ((h.sort, h.id) < mark if descending else (h.sort, h.id) > mark)]
            cursor = None
        return _page(hits, limit, cursor)

    def compartment(
        self, tenant: str, patient_id: str, *, limit: int, cursor: dict[str, Any] | None
    ) -> Page[tuple[str, str]]:
        with self._lock:
            refs = sorted(self._compartments.get((tenant, patient_id), []))
        return _page(refs, limit, cursor)

    def commit(self, tenant: str, writes: Sequence[Write]) -> CommitStats:
        with self._lock:
            for write in writes:
                current = self._current.get((tenant, write.resource_type, write.id))
                reference = f"{write.resource_type}/{write.id}"
                if write.previous is None and current is not None:
                    raise ConflictError(reference, "already exists")
                if write.previous is not None and (
                    current is None or current.version != write.previous.version
                ):
                    raise ConflictError(reference, "was changed by another request")
            for write in writes:
                self._apply(tenant, write)
            self.commits += 1
            return CommitStats(items_written=sum(3 + len(w.index) for w in writes), batches=1)

    def _apply(self, tenant: str, write: Write) -> None:
        ref = (tenant, write.resource_type, write.id)
        previous = write.previous
        stored = StoredResource(
            write.resource_type,
            write.id,
            write.version,
            write.last_updated,
            write.deleted,
            write.body,
            write.operation,
            write.index,
            write.compartments,
        )
        self._current[ref] = stored
        self._versions[ref][write.version] = StoredResource(
            write.resource_type,
            write.id,
            write.version,
            write.last_updated,
            write.deleted,
            write.body,
            write.operation,
        )
        self._history[(tenant, write.resource_type)].append((write.last_updated, write.id, write.version))
        old_index = frozenset(e for e in previous.index if e.indexed) if previous else frozenset()
        new_index = frozenset(e for e in write.index if e.indexed)
        for entry in old_index - new_index:
            rows = self._index[(tenant, write.resource_type, entry.param, entry.key)]
            row = (keys.bounded_sort(entry.sort), write.id, entry.high)
            if row in rows:
                rows.remove(row)
        for entry in new_index - old_index:
            insort(
                self._index[(tenant, write.resource_type, entry.param, entry.key)],
                (keys.bounded_sort(entry.sort), write.id, entry.high),
            )
        old_compartments = previous.compartments if previous else frozenset()
        for patient in old_compartments - write.compartments:
            refs = self._compartments[(tenant, patient)]
            if (write.resource_type, write.id) in refs:
                refs.remove((write.resource_type, write.id))
        for patient in write.compartments - old_compartments:
            self._compartments[(tenant, patient)].append((write.resource_type, write.id))


def _page(items: Sequence[Any], limit: int, cursor: dict[str, Any] | None) -> Page[Any]:
    offset = int((cursor or {}).get("offset", 0))
    chunk = tuple(items[offset : offset + limit])
    following = {"offset": offset + limit} if offset + limit < len(items) else None
    return Page(chunk, following, len(chunk))
