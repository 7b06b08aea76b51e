"""The whole platform on one machine: emulated AWS, the real handlers, an HTTP server."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3

from ehr import names
from ehr.security.gateway_audit import is_refusal
from ehr.security.tenancy import new_tenant
from ehr.settings import (
    AuditArchiverSettings,
    AuthorizerSettings,
    ChangePublisherSettings,
    DiscoverySettings,
    DocumentVerifierSettings,
    FhirApiSettings,
    GatewayAuditSettings,
    LabWorkflowSettings,
    SharingNotifierSettings,
    TokenCustomizerSettings,
    environment_for,
)
from ehr.store.tenants import DynamoTenantDirectory
from infra.local import bridges
from infra.local.audit_stream import StreamPoller
from infra.local.backend_services import (
    TokenEndpoint,
    TokenRequestError,
    clients_dir,
    create_client_key,
    register_client,
)
from infra.local.cloud import LocalCloud, LocalResources
from infra.local.gateway import (
    MAX_BODY_BYTES,
    GatewayResult,
    LocalFunctions,
    LocalGateway,
    cloudwatch_logs_event,
)
from infra.local.issuer import DevIssuer, ehr_home

TOKEN_PATH = "/auth/token"  # noqa: S105 - a URL path, not a secret
LAB_PARTNER = "acme-lab"
access_log = logging.getLogger("ehr_local.access")
log = logging.getLogger("ehr_local")


def record_refusal(functions: LocalFunctions, entry: dict[str, str]) -> None:
    """API Gateway's access log → subscription filter → gateway_audit, done in-process.

    The cloud's filter passes the refusals only (``is_refusal`` is the same test); Lambda retries
    a failed delivery there, here a failure is logged and the 401 is answered all the same.
    """
    if not is_refusal(entry):
        return
    event = cloudwatch_logs_event([entry], log_group="local-access-log", filter_name="GatewayRefusals")
    try:
        functions.invoke(names.FN_GATEWAY_AUDIT, event)
    except Exception:
        log.exception("the gateway refusal could not be recorded in the audit trail")


def function_environment(
    resources: LocalResources,
    issuer: DevIssuer,
    token_endpoint: str | None = None,
    *,
    lab_result_timeout: int | None = None,
) -> dict[str, str]:
    """Every function's environment, built from its settings model as the CDK stack does."""
    auth: dict[str, Any] = {
        "environment": "local",
        "issuer": issuer.issuer,
        "audience": issuer.audience,
        "jwks_json": json.dumps(issuer.jwks()),
        "tenant_claim": names.DEFAULT_TENANT_CLAIM,
        "token_endpoint": token_endpoint,
        "token_endpoint_auth_methods": "private_key_jwt" if token_endpoint else None,
    }
    # Local mode: Subscriptions may deliver to receivers on this machine (http://127.0.0.1).
    sharing: dict[str, Any] = {
        "mpi_table": resources.mpi_table,
        "mpi_key_secret_name": resources.mpi_key_secret_name,
        "subscription_allow_loopback": True,
    }
    env = {
        **environment_for(AuthorizerSettings, **auth),
        **environment_for(DiscoverySettings, **auth),
        **environment_for(
            FhirApiSettings,
            records_table=resources.records_table,
            audit_table=resources.audit_table,
            cursor_secret_name=resources.cursor_secret_name,
            **sharing,
            **auth,
        ),
        **environment_for(
            DocumentVerifierSettings,
            environment=auth["environment"],
            records_table=resources.records_table,
            audit_table=resources.audit_table,
            documents_bucket=resources.documents_bucket,
            documents_key_arn=resources.data_key_arn,
            s3_endpoint=resources.s3_endpoint or None,
        ),
        **environment_for(
            AuditArchiverSettings, environment=auth["environment"], archive_bucket=resources.archive_bucket
        ),
        **environment_for(
            LabWorkflowSettings,
            environment=auth["environment"],
            records_table=resources.records_table,
            audit_table=resources.audit_table,
            cursor_secret_name=resources.cursor_secret_name,
            lab_result_timeout_seconds=lab_result_timeout,
        ),
        **environment_for(
            ChangePublisherSettings,
            environment=auth["environment"],
            event_bus_name=resources.event_bus_name,
            **sharing,
        ),
        **environment_for(
            SharingNotifierSettings,
            environment=auth["environment"],
            records_table=resources.records_table,
            audit_table=resources.audit_table,
            cursor_secret_name=resources.cursor_secret_name,
            event_bus_name=resources.event_bus_name,
            subscription_dead_letter_queue_url=resources.subscription_dead_letter_queue_url,
            **sharing,
        ),
        **environment_for(
            GatewayAuditSettings,
            environment=auth["environment"],
            records_table=resources.records_table,
            audit_table=resources.audit_table,
        ),
        # Loaded like every function, never invoked: the local issuer puts the tenant into its
        # tokens itself, so no Cognito trigger runs here.
        **environment_for(
            TokenCustomizerSettings, environment=auth["environment"], tenant_claim=auth["tenant_claim"]
        ),
        "POWERTOOLS_SERVICE_NAME": names.SERVICE_NAME,
        "POWERTOOLS_METRICS_NAMESPACE": names.METRICS_NAMESPACE,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    env.setdefault("POWERTOOLS_LOG_LEVEL", os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"))
    return env


def seed_demo_clients() -> dict[str, Path]:
    """A Backend Services client per demo partner (acme-lab): key under $EHR_HOME, created once."""
    keys: dict[str, Path] = {}
    for tenant_id, kind, _ in names.DEMO_TENANTS:
        if kind != "lab":
            continue
        client_id = f"{tenant_id}-system"
        key_path = clients_dir() / "keys" / f"{client_id}.pem"
        if not key_path.exists() or not (clients_dir() / f"{client_id}.json").exists():
            key_path, jwks = create_client_key(client_id)
            register_client(client_id, tenant_id, "system/*.cruds", jwks)
        keys[client_id] = key_path
    return keys


def seed_lab_partner(resources: LocalResources, webhook_url: str, secret: bytes) -> None:
    """Every demo clinic sends lab orders to acme-lab: its partner record (webhook and HMAC
    secret) and, in the clinic's chart, the lab's Organization (``urn:ehr:partner|acme-lab``)."""
    from ehr.fhir.bundles import BundleProcessor
    from ehr.fhir.cursors import CursorCodec
    from ehr.fhir.searching import SearchEngine
    from ehr.fhir.service import FhirService
    from ehr.labs.ports import Partner
    from ehr.store.dynamo import DynamoRecordStore
    from ehr.store.lab_orders import DynamoPartners
    from ehr.store.secrets import secret_bytes

    store = DynamoRecordStore(resources.records_table)
    bundles = BundleProcessor(
        FhirService(store),
        SearchEngine(store, CursorCodec(lambda: secret_bytes(resources.cursor_secret_name))),
    )
    partners = DynamoPartners(resources.records_table)
    secrets_manager = boto3.client("secretsmanager", region_name=resources.region)
    for tenant_id, kind, _ in names.DEMO_TENANTS:
        if kind != "clinic":
            continue
        secret_name = names.partner_secret_name(tenant_id, LAB_PARTNER)
        try:
            secrets_manager.create_secret(Name=secret_name, SecretString=secret.decode())
        except secrets_manager.exceptions.ResourceExistsException:
            secrets_manager.put_secret_value(SecretId=secret_name, SecretString=secret.decode())
        partners.register(tenant_id, Partner(LAB_PARTNER, webhook_url, secret_name, "ACMELAB"))
        organization = {
            "resourceType": "Organization",
            "identifier": [{"system": names.PARTNER_SYSTEM, "value": LAB_PARTNER}],
            "active": True,
            "type": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}
                    ],
                    "text": "Laboratory",
                }
            ],
            "name": "ACME Laboratory (demo partner)",
        }
        bundles.process(
            tenant_id,
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": organization,
                        "request": {
                            "method": "PUT",
                            "url": f"Organization?identifier={names.PARTNER_SYSTEM}|{LAB_PARTNER}",
                        },
                    }
                ],
            },
            base="",
        )


def subscription_key_path(tenant: str) -> Path:
    """Where local mode keeps a tenant's Subscription signing key, for webhook receivers to
    verify ``X-EHR-Signature`` (in the cloud: the Secrets Manager secret ``ehr/subscriptions/{tenant}``)."""
    return ehr_home() / "subscriptions" / f"{tenant}.key"


def subscription_key(tenant: str) -> str:
    """The tenant's key, created once and kept across restarts."""
    path = subscription_key_path(tenant)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def seed_demo_tenants(resources: LocalResources) -> list[str]:
    """The demo tenants; in each clinic's store an Organization for every tenant
    (``urn:ehr:tenant|{tenant}``, what a Consent names as actor); and each tenant's key that
    signs its Subscription webhooks."""
    from ehr.fhir.bundles import BundleProcessor
    from ehr.fhir.cursors import CursorCodec
    from ehr.fhir.searching import SearchEngine
    from ehr.fhir.service import FhirService
    from ehr.sharing.consent import TENANT_SYSTEM, tenant_organization
    from ehr.store.dynamo import DynamoRecordStore
    from ehr.store.secrets import secret_bytes

    directory = DynamoTenantDirectory(resources.records_table)
    for tenant_id, kind, name in names.DEMO_TENANTS:
        directory.register(new_tenant(tenant_id, kind, name))  # type: ignore[arg-type]
    store = DynamoRecordStore(resources.records_table)
    bundles = BundleProcessor(
        FhirService(store),
        SearchEngine(store, CursorCodec(lambda: secret_bytes(resources.cursor_secret_name))),
    )
    secrets_manager = boto3.client("secretsmanager", region_name=resources.region)
    for tenant_id, _, _ in names.DEMO_TENANTS:
        secret_name = names.subscription_secret_name(tenant_id)
        key = subscription_key(tenant_id)
        try:
            secrets_manager.create_secret(Name=secret_name, SecretString=key)
        except secrets_manager.exceptions.ResourceExistsException:
            secrets_manager.put_secret_value(SecretId=secret_name, SecretString=key)
        entries = [
            {
                "resource": tenant_organization(other, other_name),
                "request": {"method": "PUT", "url": f"Organization?identifier={TENANT_SYSTEM}|{other}"},
            }
            for other, _, other_name in names.DEMO_TENANTS
        ]
        bundles.process(
            tenant_id, {"resourceType": "Bundle", "type": "transaction", "entry": entries}, base=""
        )
    return [t[0] for t in names.DEMO_TENANTS]


class _Handler(BaseHTTPRequestHandler):
    server_version = "ehr-local"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    gateway: LocalGateway  # set on the subclass the server builds
    token_endpoint: TokenEndpoint | None = None

    def _serve(self) -> None:
        started = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        if self.path.partition("?")[0] == TOKEN_PATH and self.token_endpoint is not None:
            result = self._token(self.rfile.read(min(length, 65536)) if length else b"")
        elif length > MAX_BODY_BYTES:
            body = b""
            self.close_connection = True
            result = self.gateway.handle(
                self.command, self.path, dict(self.headers.items()), b"x" * (MAX_BODY_BYTES + 1)
            )
        else:
            body = self.rfile.read(length) if length else b""
            result = self.gateway.handle(
                self.command, self.path, dict(self.headers.items()), body, source_ip=self.client_address[0]
            )
        self.send_response(result.status)
        for key, value in result.headers.items():
            if key.lower() not in ("content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(result.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(result.body)
        # Path without the query string: a query can carry PHI (Patient?name=…), ids cannot.
        access_log.info(
            "%s %s %d %.1fms",
            self.command,
            self.path.partition("?")[0],
            result.status,
            (time.perf_counter() - started) * 1000,
        )

    def _token(self, body: bytes) -> GatewayResult:
        """The local issuer's OAuth token endpoint (SMART Backend Services)."""
        assert self.token_endpoint is not None
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"}
        try:
            if self.command != "POST":
                raise TokenRequestError("invalid_request", "use POST", 405)
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type != "application/x-www-form-urlencoded":
                raise TokenRequestError("invalid_request", "send application/x-www-form-urlencoded")
            answer = self.token_endpoint.token(
                parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            )
            return GatewayResult(200, headers, json.dumps(answer).encode())
        except TokenRequestError as error:
            return GatewayResult(error.status, headers, json.dumps(error.body()).encode())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:  # the access log above replaces it
        return


class LocalPlatform:
    """Start with ``start()``; ``stop()`` shuts the server and the emulation down."""

    def __init__(
        self,
        *,
        issuer: DevIssuer | None = None,
        seed: bool = True,
        lab_simulator: bool = True,
        lab_result_timeout: int | None = None,
        lab_delay: float = 1.0,
    ) -> None:
        self.issuer = issuer or DevIssuer()
        self.seed = seed
        self.with_lab_simulator = lab_simulator
        self.lab_result_timeout = lab_result_timeout
        self.lab_delay = lab_delay
        self.lab_simulator: Any = None
        self.lab_url = ""
        self.records_stream: StreamPoller | None = None
        self._restore_bridges: Any = None
        self.cloud = LocalCloud()
        self.resources: LocalResources | None = None
        self.seeded: list[str] = []
        self.demo_clients: dict[str, Path] = {}
        self.gateway: LocalGateway | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.audit_stream: StreamPoller | None = None
        self._saved_env: dict[str, str | None] = {}

    def boot(self, *, token_endpoint: str | None = None) -> LocalGateway:
        """Emulated AWS, function environments, handlers loaded, demo tenants seeded."""
        self.resources = self.cloud.start()
        environment = function_environment(
            self.resources, self.issuer, token_endpoint, lab_result_timeout=self.lab_result_timeout
        )
        for key, value in environment.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        functions = LocalFunctions()
        functions.load_all()
        if self.seed:
            self.seeded = seed_demo_tenants(self.resources)
        self.gateway = LocalGateway(functions, on_refusal=lambda entry: record_refusal(functions, entry))
        # S3 → EventBridge → document_verifier, as in the cloud: the local S3 server hands each
        # object stored in the documents bucket to the real verifier handler.
        if self.cloud.s3_server is not None:
            self.cloud.s3_server.guard.notify[self.resources.documents_bucket] = lambda event: (
                functions.invoke(names.FN_DOCUMENT_VERIFIER, event)
            )
        # Step Functions' Lambda tasks and EventBridge's Lambda/state-machine targets run the
        # real handlers (infra/local/bridges.py).
        self._restore_bridges = bridges.install(functions.invoke, self.resources.function_names)
        # The records table's stream feeds the change publisher (events on the bus, which start
        # lab-order workflows), as the event source mapping does in the cloud.
        self.records_stream = StreamPoller(
            self.resources.records_table,
            lambda event: functions.invoke(names.FN_CHANGE_PUBLISHER, event),
            region=self.resources.region,
        )
        self.records_stream.start(interval=0.3)
        # The audit table's stream feeds the real archiver, as the event source mapping does.
        self.audit_stream = StreamPoller(
            self.resources.audit_table,
            lambda event: functions.invoke(names.FN_AUDIT_ARCHIVER, event),
            region=self.resources.region,
        )
        return self.gateway

    def start(self, host: str = "127.0.0.1", port: int = 8080) -> str:
        """Bind, boot (the functions learn the token endpoint's URL), then serve HTTP on a thread."""
        handler = type("Handler", (_Handler,), {})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        base = f"http://{bound_host}:{bound_port}"
        handler.token_endpoint = TokenEndpoint(self.issuer, url=base + TOKEN_PATH)
        handler.gateway = self.boot(token_endpoint=base + TOKEN_PATH)
        if self.seed:
            self.demo_clients = seed_demo_clients()
            if self.with_lab_simulator:
                self.start_lab_simulator(base, host)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ehr-local-http", daemon=True)
        self._thread.start()
        return base

    def start_lab_simulator(self, base: str, host: str = "127.0.0.1") -> str:
        """The demo lab (acme-lab) on a free port; every demo clinic's partner record points at it."""
        from infra.local.lab_simulator import LabSimulator

        assert self.resources is not None
        secret = secrets.token_hex(32).encode()
        issuer = self.issuer
        self.lab_simulator = LabSimulator(
            platform=base,
            secret=secret,
            token=lambda: issuer.mint(
                tenant=LAB_PARTNER, scope="system/*.cruds", client_id="acme-lab-system"
            ),
            delay=self.lab_delay,
        )
        url: str = self.lab_simulator.start(host, 0)
        seed_lab_partner(self.resources, url, secret)
        self.lab_url = url
        return url

    def stop(self) -> None:
        if self.lab_simulator is not None:
            self.lab_simulator.stop()
            self.lab_simulator = None
        if self.records_stream is not None:
            self.records_stream.stop()
        if self._restore_bridges is not None:
            self._restore_bridges()
            self._restore_bridges = None
        if self.audit_stream is not None:
            self.audit_stream.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.cloud.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
