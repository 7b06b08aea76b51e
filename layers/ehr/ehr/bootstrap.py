"""The composition root: builds adapters from validated settings. Handlers, the local emulator
and tests all call it; tests pass fakes through ``overrides``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehr.api.app import BearerAuthenticator
from ehr.security.tenancy import TenantDirectory
from ehr.security.tokens import KeySource, RemoteJwks, StaticJwks, TokenVerifier
from ehr.settings import AuthSettings, FhirApiSettings


def key_source(settings: AuthSettings) -> KeySource:
    if settings.jwks_json:
        return StaticJwks(settings.jwks_json)
    assert settings.jwks_url  # the settings model guarantees one of the two
    return RemoteJwks(settings.jwks_url)


def authenticator(settings: AuthSettings, *, keys: KeySource | None = None) -> BearerAuthenticator:
    verifier = TokenVerifier(
        issuer=settings.issuer, audience=settings.audience, keys=keys or key_source(settings)
    )
    return BearerAuthenticator(verifier, tenant_claim=settings.tenant_claim)


@dataclass(frozen=True)
class FhirServices:
    settings: FhirApiSettings
    authenticate: BearerAuthenticator
    tenants: TenantDirectory


def bootstrap_fhir(settings: FhirApiSettings, **overrides: Any) -> FhirServices:
    tenants = overrides.get("tenants")
    if tenants is None:
        from ehr.store.tenants import DynamoTenantDirectory

        tenants = DynamoTenantDirectory(settings.records_table)
    return FhirServices(
        settings=settings,
        authenticate=overrides.get("authenticate") or authenticator(settings, keys=overrides.get("keys")),
        tenants=tenants,
    )
