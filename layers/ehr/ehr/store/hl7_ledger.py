"""The HL7 v2 message ledger on DynamoDB (the records table).

One item per message: ``pk = T#{tenant}#HL7#{sender}``, ``sk = MSG#{MSH-10}``. A claim is a
conditional put that succeeds only when no item exists or the existing claim's lease expired,
so two deliveries of one message never both process it.
"""

from __future__ import annotations

import time
from typing import Any, cast

from pynamodb.attributes import ListAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import PutError, PynamoDBException
from pynamodb.models import Model

from ehr.hl7v2.ports import LedgerEntry, LedgerUnavailableError
from ehr.store.keys import _bounded
from ehr.store.schema import RECORDS_TABLE, tenant_key_prefix


class LedgerItem(Model):
    class Meta:
        table_name = "unbound"

    pk = UnicodeAttribute(hash_key=True, attr_name=RECORDS_TABLE.partition_key)
    sk = UnicodeAttribute(range_key=True, attr_name=RECORDS_TABLE.sort_key or "sk")
    status = UnicodeAttribute()
    digest = UnicodeAttribute()
    lease_until = NumberAttribute(default=0)
    ack = UnicodeAttribute(null=True)
    http_status = NumberAttribute(default=0)
    refs = ListAttribute(of=UnicodeAttribute, null=True)
    archive_key = UnicodeAttribute(null=True)


def _bind(table_name: str, host: str | None) -> type[LedgerItem]:
    meta: dict[str, Any] = {"table_name": table_name}
    if host:
        meta["host"] = host
    return cast(type[LedgerItem], type("BoundLedgerItem", (LedgerItem,), {"Meta": type("Meta", (), meta)}))


def ledger_key(tenant: str, sender: str, control_id: str) -> tuple[str, str]:
    return f"{tenant_key_prefix(tenant)}HL7#{_bounded(sender)}", f"MSG#{_bounded(control_id)}"


def _entry(item: LedgerItem) -> LedgerEntry:
    return LedgerEntry(
        status="done" if item.status == "done" else "processing",
        digest=item.digest,
        lease_until=float(item.lease_until or 0),
        ack=item.ack or "",
        http_status=int(item.http_status or 0),
        references=tuple(str(r) for r in (item.refs or ())),
        archive_key=item.archive_key or "",
    )


class DynamoMessageLedger:
    def __init__(self, table_name: str, *, host: str | None = None) -> None:
        self._model = _bind(table_name, host)

    def claim(
        self, tenant: str, sender: str, control_id: str, digest: str, *, lease_seconds: float
    ) -> LedgerEntry | None:
        pk, sk = ledger_key(tenant, sender, control_id)
        now = time.time()
        item = self._model(pk, sk, status="processing", digest=digest, lease_until=now + lease_seconds)
        model = self._model
        try:
            item.save(
                condition=model.pk.does_not_exist()
                | ((model.status == "processing") & (model.lease_until < now))
            )
            return None
        except PutError as error:
            if not _conditional_failure(error):
                raise LedgerUnavailableError(str(error)) from error
        except PynamoDBException as error:
            raise LedgerUnavailableError(str(error)) from error
        try:
            return _entry(model.get(pk, sk, consistent_read=True))
        except model.DoesNotExist:  # released between our put and get: let the caller retry
            return LedgerEntry("processing", digest, lease_until=now + 1)
        except PynamoDBException as error:
            raise LedgerUnavailableError(str(error)) from error

    def complete(self, tenant: str, sender: str, control_id: str, entry: LedgerEntry) -> None:
        pk, sk = ledger_key(tenant, sender, control_id)
        try:
            self._model(
                pk,
                sk,
                status="done",
                digest=entry.digest,
                lease_until=0,
                ack=entry.ack,
                http_status=entry.http_status,
                refs=list(entry.references) or None,
                archive_key=entry.archive_key or None,
            ).save()
        except PynamoDBException as error:
            raise LedgerUnavailableError(str(error)) from error

    def release(self, tenant: str, sender: str, control_id: str) -> None:
        pk, sk = ledger_key(tenant, sender, control_id)
        try:
            self._model(pk, sk).delete(condition=self._model.status == "processing")
        except PynamoDBException:
            return  # already completed or gone; the lease expiry covers the rest


def _conditional_failure(error: PutError) -> bool:
    cause = getattr(error, "cause_response_code", None) or ""
    return cause == "ConditionalCheckFailedException"
