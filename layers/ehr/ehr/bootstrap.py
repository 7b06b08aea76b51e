"""The composition root: builds adapters from validated settings. Handlers, the local emulator
and tests all call it; tests pass fakes through ``overrides``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ehr.api.app import BearerAuthenticator
from ehr.security.tenancy import TenantDirectory
from ehr.security.tokens import KeySource, RemoteJwks, StaticJwks, TokenVerifier
from ehr.settings import (
    AuthSettings,
    DocumentSettings,
    DocumentVerifierSettings,
    FhirApiSettings,
    Hl7v2InboundSettings,
    LabWorkflowSettings,
)

if TYPE_CHECKING:
    from ehr.documents.ports import DocumentStore
    from ehr.documents.service import DocumentService
    from ehr.documents.verify import UploadVerifier
    from ehr.fhir.bundles import BundleProcessor
    from ehr.fhir.cursors import CursorCodec
    from ehr.fhir.searching import SearchEngine
    from ehr.fhir.service import FhirService
    from ehr.hl7v2.inbound import Hl7v2Inbound
    from ehr.labs.workflow import LabWorkflow
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
    documents: DocumentService | None = None


def document_store(settings: DocumentSettings) -> DocumentStore | None:
    """The S3 document store the settings name, or None when no bucket is configured."""
    if not settings.documents_bucket or not settings.documents_key_arn:
        return None
    from ehr.documents.s3 import S3DocumentStore

    return S3DocumentStore(
        settings.documents_bucket, settings.documents_key_arn, endpoint=settings.s3_endpoint
    )


def bootstrap_verifier(settings: DocumentVerifierSettings, **overrides: Any) -> UploadVerifier:
    from ehr.documents.verify import UploadVerifier
    from ehr.fhir.service import FhirService

    store = overrides.get("store")
    if store is None:
        from ehr.store.dynamo import DynamoRecordStore

        store = DynamoRecordStore(settings.records_table, host=settings.dynamodb_endpoint)
    audit = overrides.get("audit")
    if audit is None:
        from ehr.store.audit_dynamo import DynamoAuditSink

        audit = DynamoAuditSink(settings.audit_table, host=settings.dynamodb_endpoint)
    documents = overrides.get("documents") or document_store(settings)
    if documents is None:
        raise ValueError("the document verifier needs EHR_DOCUMENTS_BUCKET and EHR_DOCUMENTS_KEY_ARN")
    # No document hook on this FhirService: the verifier alone moves docStatus after an upload.
    return UploadVerifier(FhirService(store), documents, audit=audit)


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
    from ehr.documents.service import DocumentService

    objects = overrides.get("documents") or document_store(settings)
    documents = (
        DocumentService(
            objects,
            upload_seconds=settings.upload_url_seconds,
            download_seconds=settings.download_url_seconds,
        )
        if objects is not None
        else None
    )
    fhir = FhirService(store, documents=documents)
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
        documents=documents,
    )


def bootstrap_hl7v2(settings: Hl7v2InboundSettings, **overrides: Any) -> tuple[FhirServices, Hl7v2Inbound]:
    """The FHIR services the HL7 v2 endpoint writes through, and the inbound service itself."""
    from ehr.hl7v2.inbound import Hl7v2Inbound

    services = bootstrap_fhir(settings, **overrides)
    ledger = overrides.get("ledger")
    if ledger is None:
        from ehr.store.hl7_ledger import DynamoMessageLedger

        ledger = DynamoMessageLedger(settings.records_table, host=settings.dynamodb_endpoint)
    archive = overrides.get("archive")
    if archive is None:
        if not settings.documents_bucket:
            raise ValueError("the HL7 v2 endpoint needs EHR_DOCUMENTS_BUCKET to archive messages")
        from ehr.store.message_archive import S3MessageArchive

        archive = S3MessageArchive(
            settings.documents_bucket, kms_key_id=settings.documents_key_arn, endpoint=settings.s3_endpoint
        )
    lab_orders = overrides.get("lab_orders")
    if lab_orders is None:
        from ehr.store.lab_orders import DynamoLabOrders

        lab_orders = DynamoLabOrders(settings.records_table, host=settings.dynamodb_endpoint)
    signals = overrides.get("signals")
    if signals is None:
        from ehr.labs.stepfunctions import StepFunctionsSignals

        signals = StepFunctionsSignals()
    inbound = Hl7v2Inbound(
        bundles=services.bundles,
        store=services.store,
        ledger=ledger,
        archive=archive,
        lease_seconds=settings.hl7v2_lease_seconds,
        lab_orders=lab_orders,
        signals=signals,
        audit=services.audit,
    )
    return services, inbound


def bootstrap_lab_workflow(settings: LabWorkflowSettings, **overrides: Any) -> LabWorkflow:
    """The lab-order workflow's steps on the records table (and the document store, if any)."""
    from functools import partial

    from ehr.fhir.bundles import BundleProcessor
    from ehr.fhir.cursors import CursorCodec
    from ehr.fhir.searching import SearchEngine
    from ehr.fhir.service import FhirService
    from ehr.labs import webhook
    from ehr.labs.workflow import LabWorkflow

    store = overrides.get("store")
    if store is None:
        from ehr.store.dynamo import DynamoRecordStore

        store = DynamoRecordStore(settings.records_table, host=settings.dynamodb_endpoint)
    cursors = overrides.get("cursors")
    secret = overrides.get("secret")
    if cursors is None or secret is None:
        from ehr.store.secrets import secret_bytes

        cursors = cursors or CursorCodec(lambda: secret_bytes(settings.cursor_secret_name))
        secret = secret or secret_bytes
    orders = overrides.get("lab_orders")
    partners = overrides.get("partners")
    if orders is None or partners is None:
        from ehr.store.lab_orders import DynamoLabOrders, DynamoPartners

        orders = orders or DynamoLabOrders(settings.records_table, host=settings.dynamodb_endpoint)
        partners = partners or DynamoPartners(settings.records_table, host=settings.dynamodb_endpoint)
    signals = overrides.get("signals")
    if signals is None:
        from ehr.labs.stepfunctions import StepFunctionsSignals

        signals = StepFunctionsSignals()
    fhir = FhirService(store)
    return LabWorkflow(
        store=store,
        bundles=BundleProcessor(fhir, SearchEngine(store, cursors)),
        orders=orders,
        partners=partners,
        signals=signals,
        secret=secret,
        result_timeout_seconds=settings.lab_result_timeout_seconds,
        deliver=overrides.get("deliver")
        or partial(webhook.deliver, timeout=settings.webhook_timeout_seconds),
    )
