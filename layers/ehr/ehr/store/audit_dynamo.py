"""The ``AuditSink`` on the audit table (pynamodb): append-only, tenant-partitioned, queryable.

Each record is written as
* one **day item** ``pk = T#{tenant}#AUDIT#{yyyy-mm-dd}``, ``sk = {recorded}#{id}`` — the record of
  the trail (the archiver copies exactly these items to the Object Lock bucket), and
* one **patient item** per patient touched, ``pk = T#{tenant}#AUDITPT#{patient}``, same ``sk`` —
  so a patient's trail is one Query.

Both carry the whole record (zlib-compressed JSON) and are written by ``TransactWriteItems`` Puts
conditioned on ``attribute_not_exists(pk)``: an existing item is never replaced, and there is no
Update or Delete anywhere in this module. ``recorded`` in the sort key is normalized to UTC with
microseconds (``2024-05-01T12:00:00.000000Z``), so string order is time order.

Reads are newest first. A tenant-wide listing walks the day partitions of its window from the
newest day back; the window may span at most ``MAX_TENANT_WINDOW_DAYS`` calendar days (default: the
31 days up to ``until`` or now) — wider windows need a patient. Every DynamoDB failure raises
``AuditUnavailableError`` with the cause chained.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, cast

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.attributes import BinaryAttribute, UnicodeAttribute
from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from ehr.fhir import jsonio
from ehr.security.audit import (
    AuditQueryError,
    AuditRecord,
    AuditRecordExistsError,
    AuditUnavailableError,
)
from ehr.store.ports import Page
from ehr.store.schema import AUDIT_TABLE, tenant_key_prefix

MAX_TENANT_WINDOW_DAYS: Final = 31
TRANSACTION_ITEM_LIMIT: Final = 100
TRANSACTION_BYTES_LIMIT: Final = 3_500_000  # below DynamoDB's 4 MB, leaving room for keys and overhead
DAY_KIND: Final = "day"
PATIENT_KIND: Final = "patient"
FORMAT_VERSION: Final = 1

_TUPLE_FIELDS: Final = ("entities", "patients")
_YEAR = re.compile(r"^\d{4}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class AuditItem(Model):
    """An item of the audit table; bound to a concrete table by ``bind_audit_item``."""

    class Meta:
        table_name = "unbound"

    pk = UnicodeAttribute(hash_key=True, attr_name=AUDIT_TABLE.partition_key)
    sk = UnicodeAttribute(range_key=True, attr_name=AUDIT_TABLE.sort_key or "sk")
    kind = UnicodeAttribute()  # DAY_KIND | PATIENT_KIND
    tenant = UnicodeAttribute()
    rid = UnicodeAttribute()  # the record's id
    r = BinaryAttribute(legacy_encoding=False)  # zlib(JSON record)


def bind_audit_item(table_name: str, host: str | None = None) -> type[AuditItem]:
    meta: dict[str, Any] = {"table_name": table_name}
    if host:
        meta["host"] = host
    return cast(type[AuditItem], type("BoundAuditItem", (AuditItem,), {"Meta": type("Meta", (), meta)}))


# -- keys and serialization (pure; the archiver reads stream images with these too) ---------------


def day_pk(tenant: str, day: str) -> str:
    return f"{tenant_key_prefix(tenant)}AUDIT#{day}"


def patient_pk(tenant: str, patient: str) -> str:
    return f"{tenant_key_prefix(tenant)}AUDITPT#{patient}"


def recorded_key(recorded: str) -> str:
    """A FHIR instant as the sortable UTC form used in keys (``…T12:00:00.000000Z``)."""
    return _format(_parse_instant(recorded))


def audit_sk(record: AuditRecord) -> str:
    return f"{recorded_key(record.recorded)}#{record.id}"


def pack_record(record: AuditRecord) -> bytes:
    document = {"v": FORMAT_VERSION, **dataclasses.asdict(record)}
    return zlib.compress(jsonio.dumps(document).encode("utf-8"), 6)


def unpack_record(data: bytes) -> AuditRecord:
    """The record of an item's blob; ``ValueError`` if it is not one."""
    try:
        document = jsonio.loads(zlib.decompress(data))
    except zlib.error as exc:
        raise ValueError("not a packed audit record") from exc
    document.pop("v", None)
    for name in _TUPLE_FIELDS:
        document[name] = tuple(document.get(name) or ())
    return AuditRecord(**document)


def record_from_stream_image(image: Mapping[str, Any]) -> AuditRecord | None:
    """The record of a day item in a DynamoDB stream ``NewImage`` (DynamoDB JSON, binary as
    base64); ``None`` for a patient item, which is a copy."""
    kind = image.get("kind", {}).get("S")
    if kind == PATIENT_KIND:
        return None
    if kind != DAY_KIND:
        raise ValueError(f"not an audit item (kind {kind!r})")
    blob = image["r"]["B"]
    return unpack_record(base64.b64decode(blob) if isinstance(blob, str) else bytes(blob))


# -- the sink ----------------------------------------------------------------------------------------


class DynamoAuditSink:
    """``AuditSink`` on the audit table (``ehr.store.schema.AUDIT_TABLE``)."""

    def __init__(self, table_name: str, *, host: str | None = None) -> None:
        self.model = bind_audit_item(table_name, host)

    def record(self, record: AuditRecord) -> None:
        try:
            sk = audit_sk(record)
            day = sk[:10]
        except ValueError as exc:
            raise AuditUnavailableError(f"audit record {record.id} has no valid recorded instant") from exc
        blob = pack_record(record)
        fields: dict[str, Any] = {"tenant": record.tenant, "rid": record.id, "r": blob}
        items = [
            self.model(patient_pk(record.tenant, p), sk, kind=PATIENT_KIND, **fields)
            for p in dict.fromkeys(record.patients)
        ]
        # The day item goes in the last transaction: it exists only once every copy does.
        items.append(self.model(day_pk(record.tenant, day), sk, kind=DAY_KIND, **fields))
        for chunk in _chunks(items, len(blob)):
            self._append(record, chunk)

    def _append(self, record: AuditRecord, items: Sequence[AuditItem]) -> None:
        try:
            with TransactWrite(connection=self.model._get_connection().connection) as transaction:
                for item in items:
                    transaction.save(item, condition=self.model.pk.does_not_exist())
        except TransactWriteError as exc:
            reasons = [r.code for r in (exc.cancellation_reasons or []) if r is not None]
            if "ConditionalCheckFailed" in reasons:
                raise AuditRecordExistsError(record.tenant, record.id) from exc
            raise AuditUnavailableError(f"audit store refused record {record.id}") from exc
        except (PynamoDBException, BotoCoreError, ClientError) as exc:
            raise AuditUnavailableError(f"audit store unreachable for record {record.id}") from exc

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
        if limit < 1:
            raise AuditQueryError("limit must be at least 1")
        try:
            if patient is not None:
                return self._query_patient(
                    tenant, patient, since=since, until=until, limit=limit, cursor=cursor
                )
            return self._query_tenant(tenant, since=since, until=until, limit=limit, cursor=cursor)
        except (PynamoDBException, BotoCoreError, ClientError) as exc:
            raise AuditUnavailableError(f"audit store unreachable for tenant {tenant}") from exc

    def _query_patient(
        self,
        tenant: str,
        patient: str,
        *,
        since: str | None,
        until: str | None,
        limit: int,
        cursor: dict[str, Any] | None,
    ) -> Page[AuditRecord]:
        pk = patient_pk(tenant, patient)
        low = _format(_bound(since, end=False)) if since else None
        high = _format(_bound(until, end=True)) if until else None
        start = _checked_key(cursor.get("k") if cursor else None, pk)
        records, last, scanned = self._page(pk, low, high, limit, start)
        return Page(tuple(records), {"k": last} if last else None, scanned)

    def _query_tenant(
        self, tenant: str, *, since: str | None, until: str | None, limit: int, cursor: dict[str, Any] | None
    ) -> Page[AuditRecord]:
        if cursor:
            # The window is fixed by the first page, so paging never drifts with the clock.
            try:
                low_at, high_at = _parse_instant(str(cursor["lo"])), _parse_instant(str(cursor["hi"]))
                day = date.fromisoformat(str(cursor["d"]))
            except (KeyError, ValueError) as exc:
                raise AuditQueryError("the paging cursor is not an audit cursor") from exc
            start = _checked_key(cursor.get("k"), day_pk(tenant, day.isoformat()))
        else:
            high_at = _bound(until, end=True) if until else datetime.now(UTC)
            if since:
                low_at = _bound(since, end=False)
            else:
                first_day = high_at.astimezone(UTC).date() - timedelta(days=MAX_TENANT_WINDOW_DAYS - 1)
                low_at = datetime.combine(first_day, datetime.min.time(), UTC)
            day, start = high_at.astimezone(UTC).date(), None
        if low_at > high_at:
            raise AuditQueryError("the window ends before it starts")
        if (high_at.astimezone(UTC).date() - low_at.astimezone(UTC).date()).days + 1 > MAX_TENANT_WINDOW_DAYS:
            raise AuditQueryError(
                f"a tenant-wide audit query spans at most {MAX_TENANT_WINDOW_DAYS} days; "
                "narrow the dates or name a patient"
            )
        low, high = _format(low_at), _format(high_at)
        first = date.fromisoformat(low[:10])
        found: list[AuditRecord] = []
        scanned = 0
        while day >= first:
            records, last, read = self._page(
                day_pk(tenant, day.isoformat()), low, high, limit - len(found), start
            )
            found.extend(records)
            scanned += read
            if last is not None:  # the day holds more than the page can take
                return Page(tuple(found), {"d": day.isoformat(), "k": last, "lo": low, "hi": high}, scanned)
            day, start = day - timedelta(days=1), None
            if len(found) >= limit:
                following = {"d": day.isoformat(), "k": None, "lo": low, "hi": high} if day >= first else None
                return Page(tuple(found), following, scanned)
        return Page(tuple(found), None, scanned)

    def _page(
        self, pk: str, low: str | None, high: str | None, limit: int, start: dict[str, Any] | None
    ) -> tuple[list[AuditRecord], dict[str, Any] | None, int]:
        sk = self.model.sk
        condition: Any = None
        if low is not None and high is not None:
            condition = sk.between(low, f"{high}#\uffff")
        elif low is not None:
            condition = sk >= low
        elif high is not None:
            condition = sk <= f"{high}#\uffff"
        results = self.model.query(
            pk,
            condition,
            consistent_read=True,
            scan_index_forward=False,
            limit=limit,
            page_size=limit,
            last_evaluated_key=start,
        )
        records = [unpack_record(item.r) for item in results]
        return records, results.last_evaluated_key, len(records)


# -- helpers -------------------------------------------------------------------------------------------


def _chunks(items: Sequence[AuditItem], blob_size: int) -> Iterator[Sequence[AuditItem]]:
    """Transactions within DynamoDB's item and size limits; the last item stays in the last one."""
    per_item = blob_size + 300  # keys and attribute names
    size = max(1, min(TRANSACTION_ITEM_LIMIT, TRANSACTION_BYTES_LIMIT // per_item))
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _checked_key(key: Any, pk: str) -> dict[str, Any] | None:
    """A cursor's exclusive start key, only if it lies in the partition being read."""
    if key is None:
        return None
    if not isinstance(key, dict) or key.get(AUDIT_TABLE.partition_key) != {"S": pk}:
        raise AuditQueryError("the paging cursor does not belong to this query")
    sort_key = key.get(AUDIT_TABLE.sort_key or "sk")
    if not isinstance(sort_key, dict) or not isinstance(sort_key.get("S"), str):
        raise AuditQueryError("the paging cursor does not belong to this query")
    return {AUDIT_TABLE.partition_key: {"S": pk}, AUDIT_TABLE.sort_key or "sk": {"S": sort_key["S"]}}


def _format(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_instant(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return moment


def _bound(value: str, *, end: bool) -> datetime:
    """A FHIR date or dateTime as the first (``end=False``) or last instant it covers."""
    try:
        if _YEAR.match(value):
            low = datetime(int(value), 1, 1, tzinfo=UTC)
            high = datetime(int(value) + 1, 1, 1, tzinfo=UTC)
        elif _MONTH.match(value):
            year, month = int(value[:4]), int(value[5:7])
            low = datetime(year, month, 1, tzinfo=UTC)
            high = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        elif _DAY.match(value):
            low = datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
            high = low + timedelta(days=1)
        else:
            return _parse_instant(value)
    except ValueError as exc:
        raise AuditQueryError(f"{value!r} is not a FHIR date or instant with a time zone") from exc
    return high - timedelta(microseconds=1) if end else low
