"""The composition root: builds adapters from validated settings. Handlers, the local emulator
and tests all call it; tests pass fakes through ``overrides``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ehr import names
from ehr.api.app import BearerAuthenticator
from ehr.security.tenancy import TenantDirectory
from ehr.security.tokens import KeySource, RemoteJwks, StaticJwks, TokenVerifier
from ehr.settings import (
    AuthSettings,
    DocumentSettings,
    DocumentVerifierSettings,
    FhirApiSettings,
    GatewayAuditSettings,
    Hl7v2InboundSettings,
    LabWorkflowSettings,
    SharingNotifierSettings,
    SharingSettings,
    StoreSettings,
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
    from ehr.security.gateway_audit import GatewayRefusalAuditor
    from ehr.sharing.federation import CrossFacility
    from ehr.sharing.mpi import MasterPatientIndex
    from ehr.sharing.notify import Notifier
    from ehr.sharing.subscriptions import AllowList
    from ehr.store.ports import RecordStore


def key_source(settings: AuthSettings) -> KeySource:
    if settings.jwks_json:
        return StaticJwks(settings.jwks_json)
    assert settings.jwks_url  # the settings model guarantees one of the two
    return RemoteJwks(settings.jwks_url)


def authenticator(settings: AuthSettings, *, keys: KeySource | None = None) -> BearerAuthenticator:
    verifier = TokenVerifier(
        issuer=settings.issuer,
        audience=settings.audience,
        keys=keys or key_source(settings),
        profile=settings.token_profile,
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
    sharing: CrossFacility | None = None


def document_store(settings: DocumentSettings) -> DocumentStore | None:
    """The S3 document store the settings name, or None when no bucket is configured."""
    if not settings.documents_bucket or not settings.documents_key_arn:
        return None
    from ehr.documents.s3 import S3DocumentStore

    return S3DocumentStore(
        settings.documents_bucket, settings.documents_key_arn, endpoint=settings.s3_endpoint
    )


def master_patient_index(settings: SharingSettings) -> MasterPatientIndex | None:
    """The master patient index the settings name, or None when this deployment has none."""
    if not settings.mpi_table or not settings.mpi_key_secret_name:
        return None
    from ehr.sharing.mpi import MasterPatientIndex
    from ehr.store.mpi_dynamo import DynamoPatientIndex
    from ehr.store.secrets import secret_bytes

    name = settings.mpi_key_secret_name
    host = getattr(settings, "dynamodb_endpoint", None)
    return MasterPatientIndex(DynamoPatientIndex(settings.mpi_table, host=host), lambda: secret_bytes(name))


def endpoint_policy(settings: SharingSettings) -> AllowList:
    """Where the tenants' Subscriptions may deliver (docs/subscriptions.md)."""
    from ehr.sharing.subscriptions import AllowList

    return AllowList(settings.endpoint_prefixes(), allow_loopback_http=settings.subscription_allow_loopback)


def audit_sink(settings: StoreSettings) -> AuditSink:
    """The audit trail on DynamoDB (``EHR_AUDIT_TABLE``)."""
    from ehr.store.audit_dynamo import DynamoAuditSink

    return DynamoAuditSink(settings.audit_table, host=settings.dynamodb_endpoint)


def bootstrap_verifier(settings: DocumentVerifierSettings, **overrides: Any) -> UploadVerifier:
    from ehr.documents.verify import UploadVerifier
    from ehr.fhir.service import FhirService

    store = overrides.get("store")
    if store is None:
        from ehr.store.dynamo import DynamoRecordStore

        store = DynamoRecordStore(settings.records_table, host=settings.dynamodb_endpoint)
    audit = overrides["audit"] if overrides.get("audit") is not None else audit_sink(settings)
    documents = overrides.get("documents") or document_store(settings)
    if documents is None:
        raise ValueError("the document verifier needs EHR_DOCUMENTS_BUCKET and EHR_DOCUMENTS_KEY_ARN")
    # No document hook on this FhirService: the verifier alone moves docStatus after an upload.
    return UploadVerifier(FhirService(store), documents, audit=audit)


def bootstrap_gateway_audit(settings: GatewayAuditSettings, **overrides: Any) -> GatewayRefusalAuditor:
    """The auditor of requests API Gateway refused at the authorizer (``tenants``/``audit`` fakes)."""
    from ehr.security.gateway_audit import GatewayRefusalAuditor

    tenants = overrides.get("tenants")
    if tenants is None:
        from ehr.store.tenants import DynamoTenantDirectory

        tenants = DynamoTenantDirectory(settings.records_table, host=settings.dynamodb_endpoint)
    audit = overrides["audit"] if overrides.get("audit") is not None else audit_sink(settings)
    return GatewayRefusalAuditor(audit, tenants)


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
    audit = overrides["audit"] if overrides.get("audit") is not None else audit_sink(settings)
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
    fhir = FhirService(store, documents=documents, subscriptions=endpoint_policy(settings))
    search = SearchEngine(store, cursors)
    mpi = overrides.get("mpi") or master_patient_index(settings)
    sharing = None
    if mpi is not None:
        from ehr.sharing.federation import CrossFacility
        from ehr.store.dynamo import now_instant

        sharing = CrossFacility(
            store=store, search=search, mpi=mpi, tenants=tenants, audit=audit, clock=now_instant
        )
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
        sharing=sharing,
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


def bootstrap_notifier(settings: SharingNotifierSettings, **overrides: Any) -> Notifier:
    """The fan-out of committed changes to Subscriptions and consented facilities."""
    from ehr.fhir.cursors import CursorCodec
    from ehr.fhir.searching import SearchEngine
    from ehr.fhir.service import FhirService
    from ehr.sharing.notify import Notifier
    from ehr.sharing.subscriptions import SqsDeadLetters, SubscriptionDeliverer
    from ehr.store.dynamo import now_instant
    from ehr.store.secrets import secret_bytes

    store = overrides.get("store")
    if store is None:
        from ehr.store.dynamo import DynamoRecordStore

        store = DynamoRecordStore(settings.records_table, host=settings.dynamodb_endpoint)
    cursors = overrides.get("cursors") or CursorCodec(lambda: secret_bytes(settings.cursor_secret_name))
    policy = endpoint_policy(settings)
    deliverer = overrides.get("deliverer") or SubscriptionDeliverer(
        overrides.get("secret") or (lambda tenant: secret_bytes(names.subscription_secret_name(tenant))),
        policy,
        attempts=settings.subscription_attempts,
        backoff=settings.subscription_backoff_seconds,
        timeout=settings.subscription_timeout_seconds,
    )
    dead_letters = overrides.get("dead_letters")
    if dead_letters is None:
        if not settings.subscription_dead_letter_queue_url:
            raise ValueError("the notifier needs EHR_SUBSCRIPTION_DEAD_LETTER_QUEUE_URL")
        dead_letters = SqsDeadLetters(settings.subscription_dead_letter_queue_url)
    publisher = overrides.get("publisher")
    if publisher is None:
        from ehr.events.eventbridge import EventBridgePublisher

        publisher = EventBridgePublisher()
    return Notifier(
        fhir=FhirService(store),
        search=SearchEngine(store, cursors),
        mpi=overrides.get("mpi") or master_patient_index(settings),
        deliverer=deliverer,
        dead_letters=dead_letters,
        publisher=publisher,
        bus=settings.event_bus_name,
        clock=now_instant,
    )
