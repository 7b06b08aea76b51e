"""The record store on DynamoDB (pynamodb): versions, current pointers, index and compartment
items, written atomically.

Small commits (≤ 100 items, < 4 MB) are one ``TransactWriteItems``. Larger ones — a Synthea
transaction Bundle writes thousands of items — use a staged commit:

1. a transaction record ``T#{t}#TX#{tx}`` is created ``pending`` with a deadline, followed by the
   list of keys the commit will touch (so an abandoned commit can be cleaned up);
2. every affected current pointer is locked: it gets ``tx`` and the new version in ``p_*``
   attributes, conditioned on the version the caller read (lost races abort the commit);
3. all new items (versions, type history, index, compartment) are written with ``tx``; items the
   commit removes are marked ``dtx``;
4. the commit point: the record flips ``pending → committed`` in one conditional update;
5. current pointers are promoted and ``dtx`` items deleted (best effort; readers and later
   writers finish the job if the process dies here).

Readers see an item with ``tx`` only once its record is committed, and stop seeing an item with
``dtx`` then; a current pointer with ``tx`` shows its pending version only once committed. A
``pending`` record past its deadline is marked ``aborted`` by the first reader that needs it, so
nothing of a commit that died half-way ever becomes visible.
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final, cast

from pynamodb.attributes import (
    BinaryAttribute,
    BooleanAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
)
from pynamodb.exceptions import DoesNotExist, PutError, TransactWriteError, UpdateError
from pynamodb.expressions.update import Action
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from ehr.fhir import jsonio
from ehr.store import keys
from ehr.store.ports import (
    CommitStats,
    ConflictError,
    IndexEntry,
    IndexHit,
    KeyRange,
    Page,
    StoredResource,
    TooLargeError,
    Write,
)

TRANSACTION_ITEM_LIMIT: Final = 100
TRANSACTION_BYTES_LIMIT: Final = 4_000_000
ITEM_BYTES_LIMIT: Final = 390_000
STAGED_DEADLINE_SECONDS: Final = 300
KEY_CHUNK: Final = 800  # keys per write-ahead item of a staged commit
WORKERS: Final = 8

PENDING, COMMITTED, ABORTED = "pending", "committed", "aborted"


class RecordItem(Model):
    """Every item of the records table; which attributes are set depends on the key shape."""

    class Meta:
        table_name = "unbound"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    rt = UnicodeAttribute(null=True)  # resource type
    rid = UnicodeAttribute(null=True)  # resource id
    v = NumberAttribute(null=True)  # version
    lu = UnicodeAttribute(null=True)  # lastUpdated
    dl = BooleanAttribute(null=True)  # deleted
    op = UnicodeAttribute(null=True)  # create | update | delete
    b = BinaryAttribute(null=True, legacy_encoding=False)  # zlib(JSON body)
    ix = BinaryAttribute(null=True, legacy_encoding=False)  # zlib(JSON index entries), current only
    cp = UnicodeSetAttribute(null=True)  # compartments, current only
    hi = UnicodeAttribute(null=True)  # index item: high end of the range
    tx = UnicodeAttribute(null=True)  # staged commit that wrote this item
    dtx = UnicodeAttribute(null=True)  # staged commit that removes this item
    # Pending version on a locked current pointer (staged commits).
    p_v = NumberAttribute(null=True)
    p_lu = UnicodeAttribute(null=True)
    p_dl = BooleanAttribute(null=True)
    p_op = UnicodeAttribute(null=True)
    p_b = BinaryAttribute(null=True, legacy_encoding=False)
    p_ix = BinaryAttribute(null=True, legacy_encoding=False)
    p_cp = UnicodeSetAttribute(null=True)
    # Transaction record.
    status = UnicodeAttribute(null=True)
    deadline = NumberAttribute(null=True)
    keys = BinaryAttribute(null=True, legacy_encoding=False)


def bind_record_item(table_name: str, host: str | None = None) -> type[RecordItem]:
    meta: dict[str, Any] = {"table_name": table_name}
    if host:
        meta["host"] = host
    return cast(type[RecordItem], type("BoundRecordItem", (RecordItem,), {"Meta": type("Meta", (), meta)}))


def _pack(document: Any) -> bytes:
    return zlib.compress(jsonio.dumps(document).encode("utf-8"), 6)


def _unpack(data: bytes | None) -> Any:
    return None if data is None else jsonio.loads(zlib.decompress(data))


def _pack_index(entries: Iterable[IndexEntry]) -> bytes:
    rows = sorted([e.param, e.key, e.sort, e.high, e.text] for e in entries)
    return _pack(rows)


def _unpack_index(data: bytes | None) -> frozenset[IndexEntry]:
    if data is None:
        return frozenset()
    return frozenset(IndexEntry(*row) for row in _unpack(data))


class DynamoRecordStore:
    """``RecordStore`` on the records table."""

    def __init__(
        self, table_name: str, *, host: str | None = None, staged_threshold: int = TRANSACTION_ITEM_LIMIT
    ):
        self.model = bind_record_item(table_name, host)
        self._staged_threshold = staged_threshold
        self._tx_status: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # -- reads ---------------------------------------------------------------------------------

    def current(self, tenant: str, resource_type: str, resource_id: str) -> StoredResource | None:
        try:
            item = self.model.get(
                keys.resource_pk(tenant, resource_type, resource_id), keys.CURRENT, consistent_read=True
            )
        except DoesNotExist:
            return None
        return self._current_from(tenant, item)

    def current_many(
        self, tenant: str, references: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredResource]:
        wanted = list(dict.fromkeys(references))
        found: dict[tuple[str, str], StoredResource] = {}
        for item in self.model.batch_get(
            [(keys.resource_pk(tenant, t, i), keys.CURRENT) for t, i in wanted], consistent_read=True
        ):
            stored = self._current_from(tenant, item)
            if stored is not None:
                found[(stored.resource_type, stored.id)] = stored
        return found

    def version(
        self, tenant: str, resource_type: str, resource_id: str, version: int
    ) -> StoredResource | None:
        try:
            item = self.model.get(
                keys.resource_pk(tenant, resource_type, resource_id),
                keys.version_sk(version),
                consistent_read=True,
            )
        except DoesNotExist:
            return None
        return self._version_from(item) if self._visible(tenant, item) else None

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
        pk = keys.resource_pk(tenant, resource_type, resource_id)
        results = self.model.query(
            pk,
            self.model.sk.startswith("V#"),
            consistent_read=True,
            scan_index_forward=False,
            limit=limit,
            page_size=limit,
            last_evaluated_key=cursor,
        )
        items: list[StoredResource] = []
        scanned = 0
        for item in results:
            scanned += 1
            if not self._visible(tenant, item):
                continue
            if since and (item.lu or "") < since:
                return Page(tuple(items), None, scanned)  # newest first: the rest is older
            items.append(self._version_from(item))
        return Page(tuple(items), results.last_evaluated_key, scanned)

    def type_history(
        self,
        tenant: str,
        resource_type: str,
        *,
        since: str | None,
        limit: int,
        cursor: dict[str, Any] | None,
    ) -> Page[StoredResource]:
        pk = keys.type_history_pk(tenant, resource_type)
        condition = self.model.sk >= since if since else None
        results = self.model.query(
            pk,
            condition,
            consistent_read=True,
            scan_index_forward=False,
            limit=limit,
            page_size=limit,
            last_evaluated_key=cursor,
        )
        refs: list[tuple[str, str, int]] = []
        scanned = 0
        for item in results:
            scanned += 1
            if self._visible(tenant, item) and item.rid and item.v is not None:
                refs.append((resource_type, item.rid, int(item.v)))
        versions = self._versions_many(tenant, refs)
        ordered = tuple(versions[r] for r in refs if r in versions)
        return Page(ordered, results.last_evaluated_key, scanned)

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
        pk = keys.index_pk(tenant, resource_type, key_range.param, key_range.key)
        if after is not None:
            cursor = {"pk": {"S": pk}, "sk": {"S": keys.index_sk(after.sort, after.id)}}
        sk = self.model.sk
        low, high = key_range.sort_low, key_range.sort_high
        condition: Any = None
        if low is not None and high is not None:
            condition = sk.between(keys.bounded_sort(low), keys.bounded_sort(high) + "#\uffff")
        elif low is not None:
            condition = sk >= keys.bounded_sort(low)
        elif high is not None:
            condition = sk <= keys.bounded_sort(high) + "#\uffff"
        results = self.model.query(
            pk,
            condition,
            consistent_read=True,
            scan_index_forward=not descending,
            limit=limit,
            page_size=limit,
            last_evaluated_key=cursor,
        )
        hits = []
        scanned = 0
        for item in results:
            scanned += 1
            if self._visible(tenant, item):
                sort, _, rid = item.sk.rpartition("#")
                hits.append(IndexHit(id=rid, sort=sort, high=item.hi or ""))
        return Page(tuple(hits), results.last_evaluated_key, scanned)

    def compartment(
        self, tenant: str, patient_id: str, *, limit: int, cursor: dict[str, Any] | None
    ) -> Page[tuple[str, str]]:
        results = self.model.query(
            keys.compartment_pk(tenant, patient_id),
            consistent_read=True,
            limit=limit,
            page_size=limit,
            last_evaluated_key=cursor,
        )
        refs = []
        scanned = 0
        for item in results:
            scanned += 1
            if self._visible(tenant, item) and item.rt and item.rid:
                refs.append((item.rt, item.rid))
        return Page(tuple(refs), results.last_evaluated_key, scanned)

    # -- commit --------------------------------------------------------------------------------

    def commit(self, tenant: str, writes: Sequence[Write]) -> CommitStats:
        if not writes:
            return CommitStats()
        plans = [self._plan(tenant, w) for w in writes]
        item_count = sum(p.item_count for p in plans)
        size = sum(p.size for p in plans)
        if item_count <= self._staged_threshold and size < TRANSACTION_BYTES_LIMIT:
            for attempt in range(2):
                try:
                    return self._commit_transaction(tenant, plans)
                except _LockedError as locked:
                    if attempt:
                        raise ConflictError(locked.reference, "locked by another commit") from None
                    self._resolve_current(tenant, locked.item)
        return self._commit_staged(tenant, plans)

    def _plan(self, tenant: str, write: Write) -> _WritePlan:
        body = _pack(write.body) if write.body is not None else None
        index = _pack_index(write.index)
        if body is not None and len(body) + len(index) > ITEM_BYTES_LIMIT:
            raise TooLargeError(f"{write.resource_type}/{write.id} is too large to store")
        previous = write.previous
        old_index = frozenset(e for e in previous.index if e.indexed) if previous else frozenset()
        new_index = frozenset(e for e in write.index if e.indexed)
        old_compartments = previous.compartments if previous else frozenset()
        return _WritePlan(
            write=write,
            body=body,
            index_blob=index,
            added_index=new_index - old_index,
            removed_index=old_index - new_index,
            added_compartments=write.compartments - old_compartments,
            removed_compartments=old_compartments - write.compartments,
            pk=keys.resource_pk(tenant, write.resource_type, write.id),
        )

    def _version_item(self, plan: _WritePlan, tx: str | None = None) -> RecordItem:
        w = plan.write
        return self.model(
            plan.pk,
            keys.version_sk(w.version),
            rt=w.resource_type,
            rid=w.id,
            v=w.version,
            lu=w.last_updated,
            dl=w.deleted,
            op=w.operation,
            b=plan.body,
            tx=tx,
        )

    def _history_item(self, tenant: str, plan: _WritePlan, tx: str | None = None) -> RecordItem:
        w = plan.write
        return self.model(
            keys.type_history_pk(tenant, w.resource_type),
            keys.type_history_sk(w.last_updated, w.id, w.version),
            rid=w.id,
            v=w.version,
            tx=tx,
        )

    def _index_item(
        self,
        tenant: str,
        plan: _WritePlan,
        entry: IndexEntry,
        *,
        tx: str | None = None,
        dtx: str | None = None,
    ) -> RecordItem:
        w = plan.write
        return self.model(
            keys.index_pk(tenant, w.resource_type, entry.param, entry.key),
            keys.index_sk(entry.sort, w.id),
            rt=w.resource_type,
            rid=w.id,
            hi=entry.high or None,
            tx=tx,
            dtx=dtx,
        )

    def _compartment_item(
        self, tenant: str, plan: _WritePlan, patient: str, *, tx: str | None = None, dtx: str | None = None
    ) -> RecordItem:
        w = plan.write
        return self.model(
            keys.compartment_pk(tenant, patient),
            keys.compartment_sk(w.resource_type, w.id),
            rt=w.resource_type,
            rid=w.id,
            tx=tx,
            dtx=dtx,
        )

    def _current_item(self, plan: _WritePlan) -> RecordItem:
        w = plan.write
        return self.model(
            plan.pk,
            keys.CURRENT,
            rt=w.resource_type,
            rid=w.id,
            v=w.version,
            lu=w.last_updated,
            dl=w.deleted,
            op=w.operation,
            b=plan.body,
            ix=plan.index_blob,
            cp=set(w.compartments) or None,
        )

    def _commit_transaction(self, tenant: str, plans: Sequence[_WritePlan]) -> CommitStats:
        model = self.model
        stats = CommitStats()
        try:
            with TransactWrite(connection=model._get_connection().connection) as transaction:
                for plan in plans:
                    previous = plan.write.previous
                    if previous is None:
                        condition = model.pk.does_not_exist()
                    else:
                        condition = (model.v == previous.version) & model.tx.does_not_exist()
                    transaction.save(self._current_item(plan), condition=condition)
                    transaction.save(self._version_item(plan), condition=model.pk.does_not_exist())
                    transaction.save(self._history_item(tenant, plan))
                    for entry in plan.added_index:
                        transaction.save(self._index_item(tenant, plan, entry))
                    for entry in plan.removed_index:
                        transaction.delete(self._index_item(tenant, plan, entry))
                    for patient in plan.added_compartments:
                        transaction.save(self._compartment_item(tenant, plan, patient))
                    for patient in plan.removed_compartments:
                        transaction.delete(self._compartment_item(tenant, plan, patient))
                    stats.items_written += plan.item_count
        except TransactWriteError as error:
            self._raise_for_cancellation(tenant, error, plans)
            raise
        stats.write_units = 2.0 * sum(plan.write_units for plan in plans)
        stats.batches = 1
        return stats

    def _raise_for_cancellation(
        self, tenant: str, error: TransactWriteError, plans: Sequence[_WritePlan]
    ) -> None:
        reasons = [r.code for r in (error.cancellation_reasons or []) if r is not None]
        if "ConditionalCheckFailed" in reasons:
            # pynamodb groups the items by kind, so the reasons cannot be mapped back by position:
            # look at each current pointer to say which resource lost the race.
            for plan in plans:
                reference = f"{plan.write.resource_type}/{plan.write.id}"
                try:
                    item = self.model.get(plan.pk, keys.CURRENT, consistent_read=True)
                except DoesNotExist:
                    item = None
                previous = plan.write.previous
                if item is not None and item.tx:
                    raise _LockedError(reference, item) from error
                if previous is None and item is not None:
                    raise ConflictError(reference, "already exists") from error
                if previous is not None and (item is None or item.v != previous.version):
                    raise ConflictError(reference, "was changed by another request") from error
            raise ConflictError("transaction", "conflicted with a concurrent write") from error
        if "TransactionConflict" in reasons:
            raise ConflictError("transaction", "conflicted with a concurrent write") from error

    # -- staged commit ---------------------------------------------------------------------------

    def _commit_staged(self, tenant: str, plans: Sequence[_WritePlan]) -> CommitStats:
        tx = uuid.uuid4().hex
        stats = CommitStats(staged=True)
        deadline = time.time() + STAGED_DEADLINE_SECONDS
        record = self.model(keys.tx_pk(tenant, tx), keys.TX_RECORD, status=PENDING, deadline=deadline)
        record.save(condition=self.model.pk.does_not_exist())
        self._write_ahead(tenant, tx, plans)
        try:
            self._lock_currents(tenant, tx, plans)
            new_items: list[RecordItem] = []
            for plan in plans:
                new_items.append(self._version_item(plan, tx))
                new_items.append(self._history_item(tenant, plan, tx))
                new_items += [self._index_item(tenant, plan, e, tx=tx) for e in plan.added_index]
                new_items += [self._index_item(tenant, plan, e, dtx=tx) for e in plan.removed_index]
                new_items += [self._compartment_item(tenant, plan, p, tx=tx) for p in plan.added_compartments]
                new_items += [
                    self._compartment_item(tenant, plan, p, dtx=tx) for p in plan.removed_compartments
                ]
            stats.batches += self._batch_put(new_items)
            stats.items_written = len(new_items) + len(plans)
            if time.time() > deadline - 5:
                raise ConflictError("transaction", "took too long to stage")
            # The commit point.
            try:
                record.update(
                    actions=[self.model.status.set(COMMITTED)], condition=self.model.status == PENDING
                )
            except UpdateError as error:
                raise ConflictError("transaction", "was aborted before it could commit") from error
        except BaseException:
            self._abort(tenant, tx)
            raise
        with self._lock:
            self._tx_status[(tenant, tx)] = COMMITTED
        self._finish(tenant, tx, plans)
        stats.write_units = float(sum(plan.write_units for plan in plans))
        return stats

    def _write_ahead(self, tenant: str, tx: str, plans: Sequence[_WritePlan]) -> None:
        touched = []
        for plan in plans:
            w = plan.write
            touched.append(["R", w.resource_type, w.id, w.version])
            touched += [["I", w.resource_type, w.id, e.param, e.key, e.sort] for e in plan.added_index]
            touched += [["C", w.resource_type, w.id, p] for p in plan.added_compartments]
        chunks = [touched[i : i + KEY_CHUNK] for i in range(0, len(touched), KEY_CHUNK)]
        self._batch_put(
            [
                self.model(keys.tx_pk(tenant, tx), f"K#{n:06d}", keys=_pack(chunk))
                for n, chunk in enumerate(chunks)
            ]
        )

    def _lock_currents(self, tenant: str, tx: str, plans: Sequence[_WritePlan]) -> None:
        def lock(plan: _WritePlan) -> None:
            w = plan.write
            pending: dict[str, Any] = {
                "p_v": w.version,
                "p_lu": w.last_updated,
                "p_dl": w.deleted,
                "p_op": w.operation,
                "p_b": plan.body,
                "p_ix": plan.index_blob,
                "p_cp": set(w.compartments) or None,
            }
            reference = f"{w.resource_type}/{w.id}"
            for attempt in range(2):
                try:
                    if w.previous is None:
                        self.model(
                            plan.pk, keys.CURRENT, rt=w.resource_type, rid=w.id, tx=tx, **pending
                        ).save(condition=self.model.pk.does_not_exist())
                    else:
                        item = self.model(plan.pk, keys.CURRENT)
                        actions: list[Action] = [self.model.tx.set(tx)]
                        for name, value in pending.items():
                            attribute = getattr(self.model, name)
                            actions.append(attribute.set(value) if value is not None else attribute.remove())
                        item.update(
                            actions=actions,
                            condition=(self.model.v == w.previous.version) & self.model.tx.does_not_exist(),
                        )
                    return
                except (PutError, UpdateError) as error:
                    if not _is_conditional_failure(error):
                        raise
                    try:
                        existing = self.model.get(plan.pk, keys.CURRENT, consistent_read=True)
                    except DoesNotExist:
                        existing = None
                    if existing is not None and existing.tx and existing.tx != tx and attempt == 0:
                        self._resolve_current(tenant, existing)
                        continue
                    reason = "already exists" if w.previous is None else "was changed by another request"
                    raise ConflictError(reference, reason) from error

        self._parallel(lock, plans)

    def _finish(self, tenant: str, tx: str, plans: Sequence[_WritePlan]) -> None:
        """Promote pending current pointers and drop removed items; safe to redo or leave unfinished."""

        def promote(plan: _WritePlan) -> None:
            try:
                self._current_item(plan).save(condition=self.model.tx == tx)
            except PutError as error:
                if not _is_conditional_failure(error):
                    raise

        def drop(item: RecordItem) -> None:
            try:
                item.delete(condition=self.model.dtx == tx)
            except Exception:  # noqa: BLE001 - best effort: a reader ignores it once the commit is known
                return

        try:
            self._parallel(promote, plans)
            removed = [self._index_item(tenant, p, e) for p in plans for e in p.removed_index]
            removed += [self._compartment_item(tenant, p, c) for p in plans for c in p.removed_compartments]
            self._parallel(drop, removed)
        except Exception:  # noqa: BLE001 - committed already; the remainder is finished lazily
            return

    def _abort(self, tenant: str, tx: str) -> None:
        try:
            self.model(keys.tx_pk(tenant, tx), keys.TX_RECORD).update(
                actions=[self.model.status.set(ABORTED)], condition=self.model.status == PENDING
            )
        except Exception:  # noqa: BLE001 - an unreachable table leaves the record pending; readers abort it later
            return
        with self._lock:
            self._tx_status[(tenant, tx)] = ABORTED

    def _resolve_current(self, tenant: str, item: RecordItem) -> None:
        """A current pointer left locked by another commit: finish it if committed, release it if not."""
        tx = item.tx
        if not tx:
            return
        status = self._status(tenant, tx)
        if status == PENDING:
            return
        model = self.model
        try:
            if status == COMMITTED:
                model(
                    item.pk,
                    item.sk,
                    rt=item.rt,
                    rid=item.rid,
                    v=item.p_v,
                    lu=item.p_lu,
                    dl=item.p_dl,
                    op=item.p_op,
                    b=item.p_b,
                    ix=item.p_ix,
                    cp=item.p_cp,
                ).save(condition=model.tx == tx)
            elif item.v is None:
                item.delete(condition=model.tx == tx)
            else:
                item.update(
                    actions=[
                        model.tx.remove(),
                        model.p_v.remove(),
                        model.p_lu.remove(),
                        model.p_dl.remove(),
                        model.p_op.remove(),
                        model.p_b.remove(),
                        model.p_ix.remove(),
                        model.p_cp.remove(),
                    ],
                    condition=model.tx == tx,
                )
        except Exception:  # noqa: BLE001 - someone else resolved it first
            return

    # -- visibility ----------------------------------------------------------------------------

    def _status(self, tenant: str, tx: str) -> str:
        with self._lock:
            cached = self._tx_status.get((tenant, tx))
        if cached:
            return cached
        try:
            record = self.model.get(keys.tx_pk(tenant, tx), keys.TX_RECORD, consistent_read=True)
            status = record.status or ABORTED
            if status == PENDING and (record.deadline or 0) < time.time():
                try:
                    record.update(
                        actions=[self.model.status.set(ABORTED)], condition=self.model.status == PENDING
                    )
                    status = ABORTED
                except UpdateError:
                    status = (
                        self.model.get(keys.tx_pk(tenant, tx), keys.TX_RECORD, consistent_read=True).status
                        or ABORTED
                    )
        except DoesNotExist:
            status = ABORTED
        if status != PENDING:
            with self._lock:
                self._tx_status[(tenant, tx)] = status
        return status

    def _visible(self, tenant: str, item: RecordItem) -> bool:
        if item.tx and self._status(tenant, item.tx) != COMMITTED:
            return False
        return not (item.dtx and self._status(tenant, item.dtx) == COMMITTED)

    def _current_from(self, tenant: str, item: RecordItem) -> StoredResource | None:
        if item.tx and self._status(tenant, item.tx) == COMMITTED:
            return StoredResource(
                resource_type=item.rt or "",
                id=item.rid or "",
                version=int(item.p_v or 0),
                last_updated=item.p_lu or "",
                deleted=bool(item.p_dl),
                body=_unpack(item.p_b),
                operation=cast(Any, item.p_op or "update"),
                index=_unpack_index(item.p_ix),
                compartments=frozenset(item.p_cp or ()),
            )
        if item.v is None:
            return None  # created by a commit that has not (or never) committed
        return StoredResource(
            resource_type=item.rt or "",
            id=item.rid or "",
            version=int(item.v),
            last_updated=item.lu or "",
            deleted=bool(item.dl),
            body=_unpack(item.b),
            operation=cast(Any, item.op or "update"),
            index=_unpack_index(item.ix),
            compartments=frozenset(item.cp or ()),
        )

    @staticmethod
    def _version_from(item: RecordItem) -> StoredResource:
        return StoredResource(
            resource_type=item.rt or "",
            id=item.rid or "",
            version=int(item.v or 0),
            last_updated=item.lu or "",
            deleted=bool(item.dl),
            body=_unpack(item.b),
            operation=cast(Any, item.op or "update"),
        )

    def _versions_many(
        self, tenant: str, refs: Sequence[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], StoredResource]:
        found = {}
        wanted = [(keys.resource_pk(tenant, t, i), keys.version_sk(v)) for t, i, v in dict.fromkeys(refs)]
        for item in self.model.batch_get(wanted, consistent_read=True):
            if self._visible(tenant, item):
                stored = self._version_from(item)
                found[(stored.resource_type, stored.id, stored.version)] = stored
        return found

    # -- helpers -------------------------------------------------------------------------------

    def _batch_put(self, items: Sequence[RecordItem]) -> int:
        chunks = [items[i : i + 25] for i in range(0, len(items), 25)]

        def put(chunk: Sequence[RecordItem]) -> None:
            with self.model.batch_write() as batch:
                for item in chunk:
                    batch.save(item)

        self._parallel(put, chunks)
        return len(chunks)

    @staticmethod
    def _parallel(fn: Any, work: Sequence[Any]) -> None:
        if len(work) <= 1:
            for unit in work:
                fn(unit)
            return
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(work))) as pool:
            for future in [pool.submit(fn, unit) for unit in work]:
                future.result()


class _LockedError(Exception):
    def __init__(self, reference: str, item: RecordItem) -> None:
        super().__init__(reference)
        self.reference = reference
        self.item = item


def _is_conditional_failure(error: Exception) -> bool:
    cause = getattr(error, "cause_response_code", None)
    return cause == "ConditionalCheckFailedException"


class _WritePlan:
    __slots__ = (
        "added_compartments",
        "added_index",
        "body",
        "index_blob",
        "pk",
        "removed_compartments",
        "removed_index",
        "write",
    )

    def __init__(
        self,
        *,
        write: Write,
        body: bytes | None,
        index_blob: bytes,
        added_index: frozenset[IndexEntry],
        removed_index: frozenset[IndexEntry],
        added_compartments: frozenset[str],
        removed_compartments: frozenset[str],
        pk: str,
    ) -> None:
        self.write = write
        self.body = body
        self.index_blob = index_blob
        self.added_index = added_index
        self.removed_index = removed_index
        self.added_compartments = added_compartments
        self.removed_compartments = removed_compartments
        self.pk = pk

    @property
    def item_count(self) -> int:
        return (
            3
            + len(self.added_index)
            + len(self.removed_index)
            + len(self.added_compartments)
            + len(self.removed_compartments)
        )

    @property
    def size(self) -> int:
        return 2 * (len(self.body or b"")) + len(self.index_blob) + 200 * self.item_count

    @property
    def write_units(self) -> float:
        # One unit per started KB per item (current and version carry the body).
        body_units = 2 * max(1, -(-(len(self.body or b"") + len(self.index_blob)) // 1024))
        return float(body_units + self.item_count - 2)


def now_instant() -> str:
    """The server's lastUpdated: a FHIR instant in UTC with microseconds (strictly increasing per process)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
