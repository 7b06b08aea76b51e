"""Tenants (facilities): the directory port, its in-memory fake, and the URL/token tenant check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from ehr.fhir.outcome import forbidden, not_found
from ehr.security.identity import TENANT_ID, Identity

TenantKind = Literal["clinic", "lab", "partner"]


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    kind: TenantKind
    name: str
    created: datetime


class TenantDirectory(Protocol):
    """Which tenants exist."""

    def get(self, tenant_id: str) -> Tenant | None: ...

    def register(self, tenant: Tenant) -> None: ...


class InMemoryTenantDirectory:
    """The fake kept beside the port, for domain tests."""

    def __init__(self, tenants: list[Tenant] | None = None) -> None:
        self._tenants = {t.tenant_id: t for t in tenants or []}

    def get(self, tenant_id: str) -> Tenant | None:
        return self._tenants.get(tenant_id)

    def register(self, tenant: Tenant) -> None:
        self._tenants[tenant.tenant_id] = tenant


def new_tenant(tenant_id: str, kind: TenantKind, name: str) -> Tenant:
    if not TENANT_ID.match(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} must be 1-63 lower-case letters, digits or inner hyphens")
    return Tenant(tenant_id=tenant_id, kind=kind, name=name, created=datetime.now(UTC))


def authorize_tenant(identity: Identity, url_tenant: str, directory: TenantDirectory) -> Tenant:
    """The security invariant: the URL's tenant must be the token's, and must exist.

    A token for another tenant is refused with 403 before anything about the URL's tenant is
    looked up, so the answer never reveals whether that tenant exists.
    """
    if identity.tenant is None:
        raise forbidden("The token is not issued for any tenant of this server.")
    if identity.tenant != url_tenant:
        raise forbidden("The token's tenant does not match the tenant in the URL.")
    tenant = directory.get(url_tenant)
    if tenant is None:
        raise not_found(f"Unknown tenant {url_tenant!r}.")
    return tenant
