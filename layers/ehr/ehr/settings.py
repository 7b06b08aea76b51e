"""Function settings: one pydantic model per function, validated once at cold start.

The CDK stack and the local emulator build a function's environment with
``environment_for(Model, **values)``, so the variable names are defined here only.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Self, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ehr import names

ENV_PREFIX = "EHR_"
# Settings only local mode sets (the cloud stack never does).
LOCAL_ONLY_SETTINGS = frozenset(
    {"jwks_json", "dynamodb_endpoint", "s3_endpoint", "subscription_allow_loopback"}
)


class AuthSettings(BaseSettings):
    """How incoming bearer tokens are verified."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    environment: str = Field(default="dev", description="Deployment environment name (dev, prod, local).")
    issuer: str = Field(description="Expected `iss` of access tokens.")
    audience: str = Field(default=names.DEFAULT_AUDIENCE, description="Expected `aud` of access tokens.")
    jwks_url: str | None = Field(default=None, description="Where the issuer publishes its keys.")
    jwks_json: str | None = Field(
        default=None, description="The issuer's public JWKS inline (local mode, where no URL is reachable)."
    )
    tenant_claim: str = Field(default=names.DEFAULT_TENANT_CLAIM, description="Claim naming the tenant.")
    token_profile: Literal["jwt", "cognito-access"] = Field(
        default="jwt",
        description="jwt: `aud` must equal the audience; cognito-access: Cognito access tokens "
        "(no `aud`; `token_use` access, `client_id`), the stack's own pool as issuer.",
    )
    token_endpoint: str | None = Field(default=None, description="Issuer's OAuth 2.0 token endpoint.")
    token_endpoint_auth_methods: str | None = Field(
        default=None, description="Space-separated client authentication methods the token endpoint accepts."
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if bool(self.jwks_url) == bool(self.jwks_json):
            raise ValueError("exactly one of EHR_JWKS_URL and EHR_JWKS_JSON must be set")
        if self.jwks_json:
            try:
                keys = json.loads(self.jwks_json).get("keys")
            except (ValueError, AttributeError) as exc:
                raise ValueError("EHR_JWKS_JSON is not a JWKS document") from exc
            if not isinstance(keys, list) or not keys:
                raise ValueError("EHR_JWKS_JSON holds no keys")
        return self


class StoreSettings(BaseSettings):
    """Where records live."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    records_table: str = Field(description="DynamoDB table of clinical records.")
    audit_table: str = Field(description="DynamoDB table of AuditEvents (append-only).")
    dynamodb_endpoint: str | None = Field(
        default=None, description="DynamoDB endpoint override (local mode with DynamoDB Local)."
    )


class FhirStoreSettings(StoreSettings):
    """Settings of functions that page through FHIR searches."""

    cursor_secret_name: str = Field(description="Secrets Manager secret whose value keys the paging cursors.")


class DocumentSettings(BaseSettings):
    """Where clinical documents (DocumentReference attachments) live; see docs/documents.md."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    documents_bucket: str | None = Field(default=None, description="S3 bucket of document contents.")
    documents_key_arn: str | None = Field(
        default=None, description="KMS key (ARN) that encrypts document contents (SSE-KMS)."
    )
    s3_endpoint: str | None = Field(default=None, description="S3 endpoint override (local mode).")
    upload_url_seconds: int = Field(default=600, ge=1, le=3600, description="Lifetime of presigned PUTs.")
    download_url_seconds: int = Field(default=300, ge=1, le=3600, description="Lifetime of presigned GETs.")

    @model_validator(mode="after")
    def _bucket_and_key(self) -> Self:
        if bool(self.documents_bucket) != bool(self.documents_key_arn):
            raise ValueError("EHR_DOCUMENTS_BUCKET and EHR_DOCUMENTS_KEY_ARN are set together")
        return self


class SharingSettings(BaseSettings):
    """Cross-facility sharing: the master patient index and Subscription webhooks (docs/sharing.md)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    mpi_table: str | None = Field(
        default=None, description="DynamoDB table of the master patient index (cross-tenant, no PHI)."
    )
    mpi_key_secret_name: str | None = Field(
        default=None,
        description="Secrets Manager secret whose value keys the index's tokenised demographics.",
    )
    subscription_endpoints: str = Field(
        default="{}",
        description='Per-tenant allow-list of Subscription endpoint URL prefixes, JSON: {"tenant": ["https://…"]}.',
    )
    subscription_allow_loopback: bool = Field(
        default=False, description="Local mode: let Subscriptions deliver to http://127.0.0.1 and localhost."
    )

    @model_validator(mode="after")
    def _index_and_key(self) -> Self:
        if bool(self.mpi_table) != bool(self.mpi_key_secret_name):
            raise ValueError("EHR_MPI_TABLE and EHR_MPI_KEY_SECRET_NAME are set together")
        try:
            endpoints = json.loads(self.subscription_endpoints)
        except ValueError as exc:
            raise ValueError("EHR_SUBSCRIPTION_ENDPOINTS is not JSON") from exc
        if not isinstance(endpoints, dict) or not all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in endpoints.values()
        ):
            raise ValueError("EHR_SUBSCRIPTION_ENDPOINTS maps tenants to lists of URL prefixes")
        return self

    def endpoint_prefixes(self) -> dict[str, tuple[str, ...]]:
        return {str(k): tuple(v) for k, v in json.loads(self.subscription_endpoints).items()}


class FhirApiSettings(AuthSettings, FhirStoreSettings, DocumentSettings, SharingSettings):
    """Settings of the FHIR REST function."""


class Hl7v2InboundSettings(FhirApiSettings):
    """Settings of the HL7 v2 inbound function: the FHIR store it writes to, and the documents
    bucket whose ``{tenant}/_hl7v2/`` prefix archives every message with its ACK."""

    hl7v2_lease_seconds: int = Field(
        default=120,
        ge=10,
        le=900,
        description="How long a message's processing claim holds before a resend may take it over.",
    )


class LabWorkflowSettings(FhirStoreSettings):
    """Settings of the lab-order workflow's step function (statemachines/lab_order.asl.json)."""

    environment: str = Field(default="dev", description="Deployment environment name (dev, prod, local).")
    lab_result_timeout_seconds: int = Field(
        default=72 * 3600,
        ge=1,
        le=365 * 24 * 3600,
        description="How long an order waits for results before it is put on hold (default 72 h).",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="Timeout of one delivery to a lab partner's webhook."
    )


class ChangePublisherSettings(SharingSettings):
    """Settings of the function that turns the records table's stream into events on the bus and
    keeps the master patient index up to date with every committed Patient version."""

    environment: str = Field(default="dev", description="Deployment environment name (dev, prod, local).")
    event_bus_name: str = Field(description="EventBridge bus the platform's change events go to.")
    dynamodb_endpoint: str | None = Field(
        default=None, description="DynamoDB endpoint override (local mode with DynamoDB Local)."
    )


class SharingNotifierSettings(FhirStoreSettings, SharingSettings):
    """Settings of the function that fans committed changes out to Subscriptions and to the
    facilities a patient consented to share with."""

    environment: str = Field(default="dev", description="Deployment environment name (dev, prod, local).")
    event_bus_name: str = Field(description="EventBridge bus the cross-facility notifications go to.")
    subscription_dead_letter_queue_url: str | None = Field(
        default=None, description="SQS queue that keeps notifications whose delivery failed."
    )
    subscription_attempts: int = Field(
        default=4, ge=1, le=10, description="Delivery attempts per notification."
    )
    subscription_backoff_seconds: float = Field(
        default=0.5, ge=0, le=30, description="First back-off between delivery attempts (doubles each time)."
    )
    subscription_timeout_seconds: float = Field(
        default=5.0, gt=0, le=30, description="Timeout of one delivery to a Subscription endpoint."
    )


class DocumentVerifierSettings(StoreSettings, DocumentSettings):
    """Settings of the function that verifies uploaded documents when S3 reports a new object."""

    environment: str = Field(default="dev", description="Deployment environment name (dev, prod, local).")


class DiscoverySettings(AuthSettings):
    """Settings of the discovery function (SMART configuration, JWKS, OpenAPI, health)."""


class AuthorizerSettings(AuthSettings):
    """Settings of the API Gateway token authorizer."""


class GatewayAuditSettings(StoreSettings):
    """Settings of the function that records the requests API Gateway refused at the authorizer.

    It reads only tenant registrations from the records table (is the URL's tenant one of ours?)
    and only appends to the audit table.
    """

    environment: str = Field(default="dev", description="Deployment environment name (dev, prod, local).")


class AuditArchiverSettings(BaseSettings):
    """Settings of the function that copies the audit table's stream into the Object Lock archive."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    environment: str = Field(default="dev", description="Deployment environment name (dev, prod, local).")
    archive_bucket: str = Field(description="S3 bucket (Object Lock, COMPLIANCE) of archived AuditEvents.")


class TokenCustomizerSettings(BaseSettings):
    """Settings of Cognito's pre token generation trigger (``ehr.security.cognito_claims``).

    No user pool id: the trigger event names its pool, and a pool id here would make the pool
    depend on the function that the pool itself invokes (a CloudFormation cycle).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    environment: str = Field(default="dev", description="Deployment environment name (dev, prod, local).")
    tenant_claim: str = Field(
        default=names.DEFAULT_TENANT_CLAIM, description="Claim that carries the tenant in access tokens."
    )
    client_cache_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="How long a warm function remembers an app client's tenant binding (0: ask every time).",
    )


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def env_name(model: type[BaseSettings], field: str) -> str:
    if field not in model.model_fields:
        raise KeyError(f"{model.__name__} has no setting {field!r}")
    return f"{ENV_PREFIX}{field.upper()}"


def environment_for(model: type[BaseSettings], **values: Any) -> dict[str, str]:
    """The environment variables that configure ``model`` with ``values``.

    Unknown names raise ``KeyError``; values are not validated here because the CDK passes
    unresolved tokens. ``None`` values are left out.
    """
    return {env_name(model, key): str(value) for key, value in values.items() if value is not None}


class SettingsError(Exception):
    """A function's environment does not validate; the message names each bad variable."""

    def __init__(self, model: type[BaseSettings], error: ValidationError) -> None:
        problems = []
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"]) or "settings"
            problems.append(f"{ENV_PREFIX}{where.upper()}: {item['msg']}")
        super().__init__(f"{model.__name__} is misconfigured: " + "; ".join(problems))
        self.model = model


def load_settings(model: type[SettingsT]) -> SettingsT:
    """Validate a function's environment at cold start, with a readable error."""
    try:
        return model()
    except ValidationError as exc:
        raise SettingsError(model, exc) from exc
