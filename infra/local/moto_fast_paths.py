"""moto's DynamoDB made fast enough to serve a platform: same answers, bounded cost.

Without these, every request to the emulated DynamoDB costs time and memory proportional to
everything written before it: a test session of a few thousand requests took 20 minutes and over
10 GB, and `ehr local` slowed down the longer it ran. They change how fast moto answers, never
what it answers.

- TransactWriteItems deep-copies the whole table once per *item* (before applying any), as its
  rollback snapshot; the record store writes ~20 items per resource and the audit sink one
  transaction per request. Copying each table once per transaction takes the same snapshot
  (nothing changes between the copies) and gives the same rollback.
- moto keeps every model object it builds in class-level ``instances_tracked`` lists, those
  rollback copies included, so each write kept a copy of the table alive. Only moto's own
  introspection API reads the lists; they are emptied after each transaction.
- ``Table.query`` takes *every item of the table*, sorted (``Table.all_items``), and keeps those
  of the queried partition. For a Query on the table's own key (not an index) those are exactly
  ``Table.items[hash_key]``: during such a Query ``all_items`` returns that bucket, sorted the
  same way; every other caller (scans, index queries) gets the whole table as before.

``install()`` patches moto in place and returns a function that restores it; ``LocalCloud``
installs them while it runs.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_users = 0
_restore: Callable[[], None] | None = None


def install() -> Callable[[], None]:
    """Patch moto (once, however many clouds run in this process); call the result to undo."""
    global _users, _restore  # noqa: PLW0603 - one patch state per process
    with _lock:
        _users += 1
        if _restore is None:
            _restore = _patch()
    done = False

    def release() -> None:
        global _users, _restore  # noqa: PLW0603
        nonlocal done
        with _lock:
            if done:
                return
            done = True
            _users -= 1
            if _users == 0 and _restore is not None:
                _restore()
                _restore = None

    return release


def _patch() -> Callable[[], None]:
    try:
        from moto.core.model_instances import model_data
        from moto.dynamodb import models as dynamodb_models
        from moto.dynamodb.models.table import Table
    except ImportError:  # pragma: no cover - another moto layout: leave it as it is
        return lambda: None

    real_copy = dynamodb_models.copy
    snapshots = threading.local()

    class CopyEachTableOnce:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_copy, name)

        def deepcopy(self, value: Any, memo: Any = None) -> Any:
            taken = getattr(snapshots, "tables", None)
            if taken is None or not isinstance(value, Table):
                return real_copy.deepcopy(value, memo)
            if id(value) not in taken:
                taken[id(value)] = real_copy.deepcopy(value)
            return taken[id(value)]

    real_transact = dynamodb_models.DynamoDBBackend.transact_write_items

    def snapshot_once(self: Any, transact_items: Any) -> Any:
        snapshots.tables = {}
        try:
            return real_transact(self, transact_items)
        finally:
            snapshots.tables = None
            for model in model_data.get("dynamodb", {}).values():
                tracked = getattr(model, "instances_tracked", None)
                if isinstance(tracked, list):
                    tracked.clear()

    real_query = Table.query
    real_all_items = Table.all_items
    query_signature = inspect.signature(real_query)
    partition = threading.local()

    def order(item: Any) -> Any:
        if item.range_key:
            return (item.hash_key.cast_value, item.range_key.cast_value)
        return item.hash_key.cast_value

    def all_items(self: Table) -> list[Any]:
        queried = getattr(partition, "key", None)
        if queried is not None and queried[0] is self:
            return sorted(self.items[queried[1]].values(), key=order) if queried[1] in self.items else []
        items: list[Any] = []
        for hash_set in list(self.items.values()):
            if self.range_key_attr:
                items.extend(hash_set.values())
            else:
                items.append(hash_set)
        return sorted(items, key=order)

    def query(self: Table, *args: Any, **kwargs: Any) -> Any:
        arguments = query_signature.bind(self, *args, **kwargs).arguments
        hash_key = arguments.get("hash_key")
        on_table = arguments.get("index_name") is None and hash_key is not None and bool(self.range_key_attr)
        partition.key = (self, hash_key) if on_table else None
        try:
            return real_query(self, *args, **kwargs)
        finally:
            partition.key = None

    # moto's DynamoDB is not thread-safe (a transaction deep-copies tables another thread may be
    # writing); DynamoDB serialises conflicting requests itself. One request at a time here.
    from moto.dynamodb.responses import DynamoHandler

    real_call_action = DynamoHandler.call_action
    serial = threading.RLock()

    def call_action(self: Any) -> Any:
        with serial:
            return real_call_action(self)

    DynamoHandler.call_action = call_action  # type: ignore[method-assign]
    dynamodb_models.copy = CopyEachTableOnce()  # type: ignore[assignment]
    dynamodb_models.DynamoDBBackend.transact_write_items = snapshot_once  # type: ignore[method-assign]
    Table.all_items = all_items  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]

    def restore() -> None:
        DynamoHandler.call_action = real_call_action  # type: ignore[method-assign]
        dynamodb_models.copy = real_copy  # type: ignore[assignment]
        dynamodb_models.DynamoDBBackend.transact_write_items = real_transact  # type: ignore[method-assign]
        Table.all_items = real_all_items  # type: ignore[method-assign]
        Table.query = real_query  # type: ignore[method-assign]

    return restore
