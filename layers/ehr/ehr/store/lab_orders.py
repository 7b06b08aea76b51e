"""Lab orders and partners on DynamoDB (the records table).

- ``T#{tenant}#LABORDER#{ServiceRequest id}`` / ``LABORDER``: the workflow record of one order;
  claimed with a conditional put, so one ServiceRequest runs one workflow.
- ``T#{lab}#PLACER#{placer number}`` / ``PLACER``: which tenant's order a lab's placer number is,
  in the lab's own partition (the lab's results are correlated with the lab's credentials).
- ``T#{tenant}#PARTNER#{partner id}`` / ``PARTNER``: a lab partner of the tenant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from pynamodb.attributes import UnicodeAttribute
from pynamodb.exceptions import PutError, PynamoDBException, UpdateError
from pynamodb.models import Model

from ehr.labs.ports import LabOrder, LabOrdersUnavailableError, Partner, PlacerEntry
from ehr.store.keys import _bounded
from ehr.store.schema import RECORDS_TABLE, tenant_key_prefix

F = TypeVar("F", bound=Callable[..., Any])


class _Item(Model):
    class Meta:
        table_name = "unbound"

    pk = UnicodeAttribute(hash_key=True, attr_name=RECORDS_TABLE.partition_key)
    sk = UnicodeAttribute(range_key=True, attr_name=RECORDS_TABLE.sort_key or "sk")
    tenant = UnicodeAttribute(null=True)
    service_request_id = UnicodeAttribute(null=True)
    execution = UnicodeAttribute(null=True)
    partner = UnicodeAttribute(null=True)
    placer = UnicodeAttribute(null=True)
    task_id = UnicodeAttribute(null=True)
    token = UnicodeAttribute(null=True)
    state = UnicodeAttribute(null=True)
    pending = UnicodeAttribute(null=True)
    webhook_url = UnicodeAttribute(null=True)
    secret_name = UnicodeAttribute(null=True)
    receiving_application = UnicodeAttribute(null=True)


def _bind(table_name: str, host: str | None) -> type[_Item]:
    meta: dict[str, Any] = {"table_name": table_name}
    if host:
        meta["host"] = host
    return cast(type[_Item], type("BoundLabItem", (_Item,), {"Meta": type("Meta", (), meta)}))


def _order_key(tenant: str, service_request_id: str) -> tuple[str, str]:
    return f"{tenant_key_prefix(tenant)}LABORDER#{service_request_id}", "LABORDER"


def _order(item: _Item) -> LabOrder:
    return LabOrder(
        tenant=item.tenant or "",
        service_request_id=item.service_request_id or "",
        execution=item.execution or "",
        partner=item.partner or "",
        placer=item.placer or "",
        task_id=item.task_id or "",
        token=item.token or "",
        state=item.state or "claimed",
        pending=item.pending or "",
    )


def _available(method: F) -> F:
    """Store errors surface as ``LabOrdersUnavailableError`` (the callers' retry signal)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except PynamoDBException as error:
            if getattr(error, "cause_response_code", "") == "ConditionalCheckFailedException":
                raise
            raise LabOrdersUnavailableError(type(error).__name__) from error

    return cast(F, wrapper)


class DynamoLabOrders:
    def __init__(self, table_name: str, *, host: str | None = None) -> None:
        self._model = _bind(table_name, host)

    def _item(self, order: LabOrder) -> _Item:
        pk, sk = _order_key(order.tenant, order.service_request_id)
        return self._model(
            pk,
            sk,
            tenant=order.tenant,
            service_request_id=order.service_request_id,
            execution=order.execution,
            partner=order.partner or None,
            placer=order.placer or None,
            task_id=order.task_id or None,
            token=order.token or None,
            state=order.state,
        )

    @_available
    def claim(self, order: LabOrder) -> LabOrder | None:
        try:
            self._item(order).save(condition=self._model.pk.does_not_exist())
            return None
        except PutError as error:
            if getattr(error, "cause_response_code", "") != "ConditionalCheckFailedException":
                raise
        existing = self.get(order.tenant, order.service_request_id)
        return existing or order

    @_available
    def get(self, tenant: str, service_request_id: str) -> LabOrder | None:
        pk, sk = _order_key(tenant, service_request_id)
        try:
            return _order(self._model.get(pk, sk, consistent_read=True))
        except self._model.DoesNotExist:
            return None

    @_available
    def update(self, order: LabOrder) -> None:
        item = self._item(order)
        model = self._model
        # Every attribute but ``pending`` (set concurrently by arriving results): an update, not a put.
        item.update(
            actions=[
                model.tenant.set(order.tenant),
                model.service_request_id.set(order.service_request_id),
                model.execution.set(order.execution),
                model.partner.set(order.partner) if order.partner else model.partner.remove(),
                model.placer.set(order.placer) if order.placer else model.placer.remove(),
                model.task_id.set(order.task_id) if order.task_id else model.task_id.remove(),
                model.token.set(order.token) if order.token else model.token.remove(),
                model.state.set(order.state),
            ]
        )

    @_available
    def set_pending(self, order: LabOrder, value: str, *, expected_state: str) -> bool:
        item = self._item(order)
        model = self._model
        try:
            item.update(
                actions=[model.pending.set(value) if value else model.pending.remove()],
                condition=model.state == expected_state,
            )
        except UpdateError as error:
            if getattr(error, "cause_response_code", "") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    @_available
    def index_placer(self, entry: PlacerEntry) -> None:
        self._model(
            f"{tenant_key_prefix(entry.partner)}PLACER#{_bounded(entry.placer)}",
            "PLACER",
            tenant=entry.tenant,
            service_request_id=entry.service_request_id,
            partner=entry.partner,
            placer=entry.placer,
        ).save()

    @_available
    def by_placer(self, partner: str, placer: str) -> PlacerEntry | None:
        try:
            item = self._model.get(
                f"{tenant_key_prefix(partner)}PLACER#{_bounded(placer)}", "PLACER", consistent_read=True
            )
        except self._model.DoesNotExist:
            return None
        return PlacerEntry(partner, placer, item.tenant or "", item.service_request_id or "")


class DynamoPartners:
    def __init__(self, table_name: str, *, host: str | None = None) -> None:
        self._model = _bind(table_name, host)

    def get(self, tenant: str, partner_id: str) -> Partner | None:
        try:
            item = self._model.get(f"{tenant_key_prefix(tenant)}PARTNER#{partner_id}", "PARTNER")
        except self._model.DoesNotExist:
            return None
        return Partner(
            partner_id=partner_id,
            webhook_url=item.webhook_url or "",
            secret_name=item.secret_name or "",
            receiving_application=item.receiving_application or "",
        )

    def register(self, tenant: str, partner: Partner) -> None:
        self._model(
            f"{tenant_key_prefix(tenant)}PARTNER#{partner.partner_id}",
            "PARTNER",
            partner=partner.partner_id,
            webhook_url=partner.webhook_url,
            secret_name=partner.secret_name,
            receiving_application=partner.receiving_application or None,
        ).save()
