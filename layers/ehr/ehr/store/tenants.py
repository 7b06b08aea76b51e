"""The tenant directory on DynamoDB (the records table), with a short in-process cache."""

from __future__ import annotations

import time
from typing import Any, cast

from pynamodb.attributes import UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.models import Model

from ehr.security.tenancy import Tenant, TenantKind
from ehr.store.schema import RECORDS_TABLE, tenant_registry_key


class TenantItem(Model):
    """A tenant's registration item; bound to a concrete table by ``_bind``."""

    class Meta:
        table_name = "unbound"

    pk = UnicodeAttribute(hash_key=True, attr_name=RECORDS_TABLE.partition_key)
    sk = UnicodeAttribute(range_key=True, attr_name=RECORDS_TABLE.sort_key or "sk")
    tenant_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    name = UnicodeAttribute()
    created = UTCDateTimeAttribute()


def _bind(table_name: str, host: str | None) -> type[TenantItem]:
    meta: dict[str, Any] = {"table_name": table_name}
    if host:
        meta["host"] = host
    return cast(type[TenantItem], type("BoundTenantItem", (TenantItem,), {"Meta": type("Meta", (), meta)}))


class DynamoTenantDirectory:
    """Tenants registered as items ``T#{tenant}#TENANT / TENANT`` of the records table."""

    def __init__(self, table_name: str, *, host: str | None = None, cache_seconds: float = 60.0) -> None:
        self._model = _bind(table_name, host)
        self._cache: dict[str, tuple[float, Tenant | None]] = {}
        self._cache_seconds = cache_seconds

    def get(self, tenant_id: str) -> Tenant | None:
        cached = self._cache.get(tenant_id)
        now = time.monotonic()
        if cached and now - cached[0] < self._cache_seconds:
            return cached[1]
        key = tenant_registry_key(tenant_id)
        try:
            item = self._model.get(key["pk"], key["sk"], consistent_read=True)
            tenant: Tenant | None = Tenant(
                tenant_id=item.tenant_id, kind=_kind(item.kind), name=item.name, created=item.created
            )
        except self._model.DoesNotExist:
            tenant = None
        # Unknown tenants are cached briefly only, so a new registration shows quickly.
        self._cache[tenant_id] = (now if tenant else now - self._cache_seconds + 5, tenant)
        return tenant

    def register(self, tenant: Tenant) -> None:
        key = tenant_registry_key(tenant.tenant_id)
        self._model(
            key["pk"],
            key["sk"],
            tenant_id=tenant.tenant_id,
            kind=tenant.kind,
            name=tenant.name,
            created=tenant.created,
        ).save()
        self._cache.pop(tenant.tenant_id, None)


def _kind(value: str) -> TenantKind:
    if value in ("clinic", "lab", "partner"):
        return value  # type: ignore[return-value]
    return "partner"
