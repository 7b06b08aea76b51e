"""Fixtures of the FHIR REST API acceptance tests: tenant clients on the session's local gateway.

The platform (moto, real handlers, demo tenants clinic-a and clinic-b) is the session fixture of
tests/integration/conftest.py; every test writes its own data under a unique identifier system,
so tests do not see each other's resources.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_support import SCOPE, FhirClient

from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer


@pytest.fixture(scope="session")
def fhir(gateway: LocalGateway, issuer: DevIssuer) -> FhirClient:
    """clinic-a's FHIR base, with a token for clinic-a."""
    return FhirClient(gateway, "clinic-a", issuer.mint(tenant="clinic-a", scope=SCOPE))


@pytest.fixture(scope="session")
def fhir_b(gateway: LocalGateway, issuer: DevIssuer) -> FhirClient:
    """clinic-b's FHIR base, with a token for clinic-b."""
    return FhirClient(gateway, "clinic-b", issuer.mint(tenant="clinic-b", scope=SCOPE))


@pytest.fixture
def uid() -> str:
    """A value no other test uses: the suffix of this test's identifier systems and names."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def system(uid: str) -> str:
    """An identifier system only this test writes to."""
    return f"urn:test:{uid}"


# -- moto, made fast enough for a suite ----------------------------------------------------------


@pytest.fixture(autouse=True)
def _moto_fast_paths() -> Iterator[None]:
    """Three moto 5 hot spots, answered the same way in a fraction of the time and memory.

    These change how fast the emulated DynamoDB under the handlers answers, never what it answers.
    Without them each request costs time proportional to everything written before it in the
    session: this suite took 20 minutes and gigabytes. `ehr local` pays the same; the fix belongs
    in infra/local/cloud.py, for every suite and for `ehr local` users. Until then it is installed
    around each test of this folder.

    - TransactWriteItems deep-copies the whole table once per *item* (before applying any), for
      rollback; the record store writes ~20 items per resource and the audit sink one transaction
      per request. One copy per table and transaction is the same snapshot.
    - moto keeps every model object it builds in class-level ``instances_tracked`` lists, those
      rollback copies included, so each write kept a copy of the table alive (2 GB after 100
      creates). Only moto's introspection API reads the lists; they are emptied after each
      transaction.
    - A Query on the table's own key sorts *every item of the table* before keeping those of the
      queried partition, which it then sorts by range key. Starting from that partition alone gives
      the same result.
    """
    try:
        from moto.core.model_instances import model_data
        from moto.dynamodb import models as dynamodb_models
        from moto.dynamodb.models.table import Table
    except ImportError:  # pragma: no cover - another moto layout: leave it as it is
        yield
        return
    local = threading.local()
    real_copy = dynamodb_models.copy

    class CopyEachTableOnce:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_copy, name)

        def deepcopy(self, value: Any, memo: Any = None) -> Any:
            taken = getattr(local, "snapshots", None)
            if taken is None or not isinstance(value, Table):
                return real_copy.deepcopy(value, memo)
            if id(value) not in taken:
                taken[id(value)] = real_copy.deepcopy(value)
            return taken[id(value)]

    transact_write_items = dynamodb_models.DynamoDBBackend.transact_write_items

    def transact_with_one_snapshot_per_table(self: Any, transact_items: Any) -> Any:
        local.snapshots = {}
        try:
            return transact_write_items(self, transact_items)
        finally:
            local.snapshots = None
            for model in model_data.get("dynamodb", {}).values():
                tracked = getattr(model, "instances_tracked", None)
                if isinstance(tracked, list):
                    tracked.clear()

    table_query, table_all_items = Table.query, Table.all_items

    def query_one_partition(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        if index_name or hash_key is None or not self.range_key_attr:
            return table_query(self, hash_key, *args, **kwargs)
        local.partition = (self, hash_key)
        try:
            return table_query(self, hash_key, *args, **kwargs)
        finally:
            local.partition = None

    def all_items(self: Any) -> Any:
        partition = getattr(local, "partition", None)
        if partition is None or partition[0] is not self:
            return table_all_items(self)
        return list(self.items.get(partition[1], {}).values())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dynamodb_models, "copy", CopyEachTableOnce())
        patch.setattr(
            dynamodb_models.DynamoDBBackend, "transact_write_items", transact_with_one_snapshot_per_table
        )
        patch.setattr(Table, "query", query_one_partition)
        patch.setattr(Table, "all_items", all_items)
        yield
