"""Fixtures of the attack matrix: the victim tenant seeded through the API, and the tokens."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer
from infra.local.platform import LocalPlatform
from tests.integration.security.support import (
    ATTACKER,
    VICTIM,
    Client,
    Victim,
    assert_attacker_holds_none_of,
    bearer,
    seed_victim,
    victim_record_identifiers,
)


@dataclass(frozen=True)
class Tokens:
    victim: str  # clinic-a, user/*.cruds: seeds and re-reads the victim's data
    user: str  # clinic-b, user/*.cruds
    system: str  # clinic-b, system/*.cruds


@pytest.fixture(scope="module", autouse=True)
def _moto_without_quadratic_copies() -> Iterator[None]:
    """moto's cost, not the handlers', bounded for this module; what the handlers see is unchanged.

    - The two workarounds of ``tests/integration/api/conftest.py``: moto 5 deep-copies the whole
      table for *every item* of a TransactWriteItems (its rollback snapshot) and keeps every model
      object it builds alive in ``instances_tracked``. Copying each table once per transaction
      takes the same snapshot (nothing changes between the copies) and the same rollback; only
      moto's own introspection reads ``instances_tracked``.
    - moto 5.2's ``Table.query`` takes *every item of the table*, sorted (``Table.all_items``),
      and keeps those of the queried partition; after the Synthea records a search costs ~0.1 s,
      several times that once other modules have loaded theirs. For a Query on the table (not an
      index) the items of that partition are exactly ``Table.items[hash_key]``: that bucket, in
      the same order, is what ``all_items`` returns during such a Query; every other caller (scans,
      index queries) gets the whole table as before, sorted by the same values ``DynamoType``
      compares (``cast_value``), computed once per item.
    """
    try:
        from moto.core.model_instances import model_data
        from moto.dynamodb import models as dynamodb_models
        from moto.dynamodb.models.table import Table
    except ImportError:  # pragma: no cover - another moto layout: leave it as it is
        yield
        return
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

    transact_write_items = dynamodb_models.DynamoDBBackend.transact_write_items

    def snapshot_once(self: Any, transact_items: Any) -> Any:
        snapshots.tables = {}
        try:
            return transact_write_items(self, transact_items)
        finally:
            snapshots.tables = None
            for model in model_data.get("dynamodb", {}).values():
                tracked = getattr(model, "instances_tracked", None)
                if isinstance(tracked, list):
                    tracked.clear()

    real_query = Table.query
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
        for hash_set in self.items.values():
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

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dynamodb_models, "copy", CopyEachTableOnce())
        patch.setattr(dynamodb_models.DynamoDBBackend, "transact_write_items", snapshot_once)
        patch.setattr(Table, "all_items", all_items)
        patch.setattr(Table, "query", query)
        yield


@pytest.fixture(scope="module")
def tokens(issuer: DevIssuer, platform: LocalPlatform) -> Tokens:
    return Tokens(
        victim=issuer.mint(tenant=VICTIM, scope="user/*.cruds", client_id="clinic-a-app"),
        user=issuer.mint(tenant=ATTACKER, scope="user/*.cruds", client_id="clinic-b-app"),
        system=issuer.mint(tenant=ATTACKER, scope="system/*.cruds", client_id="clinic-b-backend"),
    )


@pytest.fixture(scope="module")
def client(gateway: LocalGateway) -> Client:
    return Client(gateway)


@pytest.fixture(scope="module")
def victim(client: Client, tokens: Tokens) -> Victim:
    assert_attacker_holds_none_of(client, bearer(tokens.user), victim_record_identifiers())
    return seed_victim(client, bearer(tokens.victim))
