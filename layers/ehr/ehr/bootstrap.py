"""The composition root: builds adapters from validated settings. Handlers, the local emulator
and tests all call it; tests pass fakes through ``overrides``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ehr.api.app import BearerAuthenticator
from ehr.security.tenancy import TenantDirectory
from ehr.security.tokens import KeySource, RemoteJwks, StaticJwks, TokenVerifier
from ehr.settings import AuthSettings, FhirApiSettings

if TYPE_CHECKING:
    from ehr.fhir.bundles import BundleProcessor
    from ehr.fhir.cursors import CursorCodec
    from ehr.fhir.searching import SearchEngine
    from ehr.fhir.service import FhirService
    from ehr.security.audit import AuditSink
    from ehr.store.ports import RecordStore


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
    store: RecordStore
    cursors: CursorCodec
    fhir: FhirService
    search: SearchEngine
    bundles: BundleProcessor
    audit: AuditSink


def bootstrap_fhir(settings: FhirApiSettings, **overrides: Any) -> FhirServices:
    from ehr.fhir.bundles import BundleProcessor
    from ehr.fhir.cursors import CursorCodec
    from ehr.fhir.searching import SearchEngine
    from ehr.fhir.service import FhirService

    tenants = overrides.get("tenants")
    if tenants is None:
        from ehr.store.tenants import DynamoTenantDirectory

        tenants = DynamoTenantDirectory(settings.records_table, host=settings.dynamodb_endpoint)
    store = overrides.get("store")
    if store is None:
        from ehr.store.dynamo import DynamoRecordStore

        store = DynamoRecordStore(settings.records_table, host=settings.dynamodb_endpoint)
    cursors = overrides.get("cursors")
    if cursors is None:
        from ehr.store.secrets import secret_bytes

        cursors = CursorCodec(lambda: secret_bytes(settings.cursor_secret_name))
    audit = overrides.get("audit")
    if audit is None:
        from ehr.store.audit_dynamo import DynamoAuditSink

        audit = DynamoAuditSink(settings.audit_table, host=settings.dynamodb_endpoint)
    fhir = FhirService(store)
    search = SearchEngine(store, cursors)
    return FhirServices(
        settings=settings,
        authenticate=overrides.get("authenticate") or authenticator(settings, keys=overrides.get("keys")),
        tenants=tenants,
        store=store,
        cursors=cursors,
        fhir=fhir,
        search=search,
        bundles=BundleProcessor(fhir, search),
        audit=audit,
    )
