"""The master patient index on DynamoDB (``MPI_TABLE``, the one cross-tenant table; no PHI in it).

Items (every value is a keyed token, a tenant, a patient id, a version or an enterprise id):

- ``P#{tenant}#{patient id}`` / ``CUR``: the record's indexed state — ``v`` (its FHIR version),
  ``eid`` (its enterprise id), ``doc`` (JSON: the feature tokens, the blocking tokens it is filed
  under so an update deletes the stale ones, the survivor it was merged into, a deletion mark).
- ``BK#{blocking token}`` / ``{tenant}#{patient id}``: one per blocking key of a candidate record;
  a block's candidates are one Query.
- ``E#{enterprise id}`` / ``{tenant}#{patient id}``: the candidate records of one person.

``save`` is one ``TransactWriteItems``: the ``CUR`` Put conditioned on the version and enterprise
id it was computed from, plus the blocking and membership items that changed (at most
``1 + 2 * MAX_BLOCKS + 2`` = 51 items, well under DynamoDB's 100). A lost race writes nothing and
returns False; every other DynamoDB failure raises ``MpiUnavailableError`` with the cause chained.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import DoesNotExist, PynamoDBException, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from ehr.sharing.mpi import IndexEntry, MpiUnavailableError, PatientKey, membership
from ehr.store.schema import MPI_TABLE

F = TypeVar("F", bound=Callable[..., Any])

CURRENT: Final = "CUR"
BATCH_GET_LIMIT: Final = 100


class MpiItem(Model):
    """An item of the patient-index table; bound to a concrete table by ``bind_mpi_item``."""

    class Meta:
        table_name = "unbound"

    pk = UnicodeAttribute(hash_key=True, attr_name=MPI_TABLE.partition_key)
    sk = UnicodeAttribute(range_key=True, attr_name=MPI_TABLE.sort_key or "sk")
    v = NumberAttribute(null=True)
    eid = UnicodeAttribute(null=True)
    doc = UnicodeAttribute(null=True)


def bind_mpi_item(table_name: str, host: str | None = None) -> type[MpiItem]:
    meta: dict[str, Any] = {"table_name": table_name}
    if host:
        meta["host"] = host
    return cast(type[MpiItem], type("BoundMpiItem", (MpiItem,), {"Meta": type("Meta", (), meta)}))


def record_pk(key: PatientKey) -> str:
    return f"P#{key.tenant}#{key.patient_id}"


def block_pk(block: str) -> str:
    return f"BK#{block}"


def enterprise_pk(enterprise_id: str) -> str:
    return f"E#{enterprise_id}"


def member_sk(key: PatientKey) -> str:
    return f"{key.tenant}#{key.patient_id}"


def _key_from_sk(sk: str) -> PatientKey:
    tenant, _, patient_id = sk.partition("#")  # tenant ids never contain "#"
    return PatientKey(tenant, patient_id)


def _key_from_pk(pk: str) -> PatientKey:
    return _key_from_sk(pk.removeprefix("P#"))


def _available(method: F) -> F:
    """Store errors surface as ``MpiUnavailableError`` (the callers' retry signal)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (PynamoDBException, BotoCoreError, ClientError) as error:
            raise MpiUnavailableError(f"patient index unavailable ({type(error).__name__})") from error

    return cast(F, wrapper)


class DynamoPatientIndex:
    """``PatientIndex`` on the DynamoDB table ``table_name`` (created from ``MPI_TABLE``)."""

    def __init__(self, table_name: str, *, host: str | None = None) -> None:
        self.model = bind_mpi_item(table_name, host)

    def _entry(self, item: MpiItem) -> IndexEntry:
        return IndexEntry.from_json(
            _key_from_pk(item.pk), int(item.v or 0), item.eid or "", json.loads(item.doc or "{}")
        )

    @_available
    def get(self, key: PatientKey) -> IndexEntry | None:
        try:
            return self._entry(self.model.get(record_pk(key), CURRENT, consistent_read=True))
        except DoesNotExist:
            return None

    @_available
    def get_many(self, keys: Sequence[PatientKey]) -> list[IndexEntry]:
        wanted = list(dict.fromkeys((record_pk(key), CURRENT) for key in keys))
        found: list[IndexEntry] = []
        for start in range(0, len(wanted), BATCH_GET_LIMIT):
            chunk = wanted[start : start + BATCH_GET_LIMIT]
            found += [self._entry(item) for item in self.model.batch_get(chunk, consistent_read=True)]
        return found

    @_available
    def blocked(self, block: str, *, limit: int) -> list[PatientKey]:
        return [
            _key_from_sk(item.sk)
            for item in self.model.query(block_pk(block), limit=limit, attributes_to_get=["sk"])
        ]

    @_available
    def members(self, enterprise_id: str, *, limit: int) -> list[PatientKey]:
        return [
            _key_from_sk(item.sk)
            for item in self.model.query(
                enterprise_pk(enterprise_id), limit=limit, consistent_read=True, attributes_to_get=["sk"]
            )
        ]

    @_available
    def save(self, entry: IndexEntry, *, previous: IndexEntry | None) -> bool:
        model = self.model
        condition: Condition
        if previous is None:
            condition = model.pk.does_not_exist()
        else:
            same_eid = (
                model.eid == previous.enterprise_id if previous.enterprise_id else model.eid.does_not_exist()
            )
            condition = (model.v == previous.version) & same_eid
        old_blocks = previous.blocks if previous is not None else frozenset()
        old_member, new_member = membership(previous), membership(entry)
        member = member_sk(entry.key)
        current = model(
            record_pk(entry.key),
            CURRENT,
            v=entry.version,
            eid=entry.enterprise_id or None,
            doc=json.dumps(entry.to_json(), separators=(",", ":"), sort_keys=True),
        )
        try:
            with TransactWrite(connection=model._get_connection().connection) as transaction:
                transaction.save(current, condition=condition)
                for block in sorted(entry.blocks - old_blocks):
                    transaction.save(model(block_pk(block), member))
                for block in sorted(old_blocks - entry.blocks):
                    transaction.delete(model(block_pk(block), member))
                if old_member != new_member:
                    if old_member:
                        transaction.delete(model(enterprise_pk(old_member), member))
                    if new_member:
                        transaction.save(model(enterprise_pk(new_member), member))
        except TransactWriteError as error:
            reasons = [r.code for r in (error.cancellation_reasons or []) if r is not None]
            if "ConditionalCheckFailed" in reasons:
                return False
            raise
        return True
