"""Per-environment configuration of the CDK app: one typed model, read from ``cdk.json`` context.

``cdk.json`` holds ``"environments": {"dev": {...}, "prod": {...}}``; ``-c env=NAME`` picks one
(default ``dev``). Values are validated here, before any construct is built, so a typo fails the
synth with a message that names the field instead of a traceback from deep inside the CDK.

This module does not import ``aws_cdk``: it is plain configuration, testable on its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ehr import names
from ehr.security.identity import TENANT_ID

ENV_CONTEXT_KEY: Final = "env"
ENVIRONMENTS_CONTEXT_KEY: Final = "environments"
DEFAULT_ENV: Final = "dev"

# CloudWatch Logs accepts only these retention periods (days -> aws_logs.RetentionDays member).
RETENTION_DAYS: Final[Mapping[int, str]] = {
    1: "ONE_DAY",
    3: "THREE_DAYS",
    5: "FIVE_DAYS",
    7: "ONE_WEEK",
    14: "TWO_WEEKS",
    30: "ONE_MONTH",
    60: "TWO_MONTHS",
    90: "THREE_MONTHS",
    120: "FOUR_MONTHS",
    150: "FIVE_MONTHS",
    180: "SIX_MONTHS",
    365: "ONE_YEAR",
    400: "THIRTEEN_MONTHS",
    545: "EIGHTEEN_MONTHS",
    731: "TWO_YEARS",
    1096: "THREE_YEARS",
    1827: "FIVE_YEARS",
    2192: "SIX_YEARS",
    2557: "SEVEN_YEARS",
    2922: "EIGHT_YEARS",
    3288: "NINE_YEARS",
    3653: "TEN_YEARS",
}

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DOMAIN_PREFIX = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_STAGE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# Lambda allows 4 KB of environment variables per function; the allow-list shares them.
MAX_SUBSCRIPTION_ENDPOINTS_CHARS: Final = 2048


class ConfigError(Exception):
    """The app's configuration is invalid; the message names the context key and each bad field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthConfig(_Model):
    """Which token issuer the API trusts.

    ``cognito``: the stack creates a Cognito user pool (resource server with SMART-style
    ``system/*`` scopes, a client-credentials app client, a hosted domain); issuer, JWKS URL and
    token endpoint are derived from it. ``oidc``: an external OpenID Connect issuer whose
    ``issuer``, ``jwks_url`` and ``token_endpoint`` are given here.
    """

    mode: Literal["cognito", "oidc"] = "cognito"
    issuer: str | None = Field(default=None, description="oidc: expected `iss` of access tokens (https URL).")
    audience: str | None = Field(
        default=None,
        description="Expected `aud`. Default: names.DEFAULT_AUDIENCE (oidc); the app client id (cognito).",
    )
    jwks_url: str | None = Field(default=None, description="oidc: the issuer's JWKS URL (https).")
    token_endpoint: str | None = Field(
        default=None, description="oidc: the issuer's OAuth 2.0 token endpoint."
    )
    token_endpoint_auth_methods: str | None = Field(
        default=None,
        description="oidc: space-separated client authentication methods of the token endpoint "
        "(e.g. 'private_key_jwt'), listed in the SMART configuration.",
    )
    tenant_claim: str = Field(default=names.DEFAULT_TENANT_CLAIM, min_length=1)
    cognito_domain_prefix: str | None = Field(
        default=None,
        description="cognito: hosted-domain prefix, unique per region. Default: ehr-{env}-{account}.",
    )

    @field_validator("issuer", "jwks_url", "token_endpoint")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value

    @field_validator("cognito_domain_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not _DOMAIN_PREFIX.match(value):
            raise ValueError("must be lower-case letters, digits and hyphens (1-63 characters)")
        if any(word in value for word in ("aws", "amazon", "cognito")):
            raise ValueError("Cognito rejects prefixes containing 'aws', 'amazon' or 'cognito'")
        return value

    @model_validator(mode="after")
    def _mode_fields(self) -> Self:
        if self.mode == "oidc":
            missing = [f for f in ("issuer", "jwks_url") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"mode 'oidc' requires {', '.join(missing)}")
            if self.cognito_domain_prefix is not None:
                raise ValueError("cognito_domain_prefix applies to mode 'cognito' only")
        else:
            given = [f for f in ("issuer", "jwks_url", "token_endpoint") if getattr(self, f) is not None]
            if given:
                raise ValueError(f"mode 'cognito' derives {', '.join(given)} from the user pool; remove them")
        return self


class EnvironmentConfig(_Model):
    """Everything that differs between deployments of the one stack."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,15}$", description="Environment name (dev, prod, ...).")
    account: str | None = Field(default=None, pattern=r"^\d{12}$", description="Pin the stack to an account.")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$", description="Pin a region.")

    removal_policy: Literal["destroy", "retain"] = Field(
        description="What happens to stateful resources when the stack is deleted."
    )
    deletion_protection: bool = Field(description="DynamoDB tables and the user pool refuse deletion.")
    log_retention_days: int = Field(description="CloudWatch Logs retention of every log group.")

    api_stage_name: str = Field(default="v1", description="API Gateway stage name (part of the base URL).")
    api_throttle_rate_limit: float = Field(gt=0, description="Stage steady-state requests per second.")
    api_throttle_burst_limit: int = Field(gt=0, description="Stage burst capacity (requests).")
    waf_rate_limit: int = Field(
        ge=10, le=2_000_000_000, description="Requests per source IP per 5 minutes before WAF blocks."
    )
    authorizer_cache_ttl_seconds: int = Field(ge=0, le=3600, description="Authorizer result cache TTL.")

    function_memory_mb: int = Field(default=1024, ge=128, le=10240)
    function_timeout_seconds: int = Field(default=15, ge=1, le=29, description="<= API Gateway's 29 s limit.")
    sharing_notifier_timeout_seconds: int = Field(
        default=300,
        ge=30,
        le=900,
        description="Timeout of the sharing_notifier function, which no API waits for: one event may "
        "deliver to several Subscriptions, each with retries and back-off (about 25 s for a dead endpoint).",
    )
    reserved_concurrency: dict[str, int] = Field(
        default_factory=dict,
        description="Reserved concurrency per function name; functions not listed use the account pool.",
    )
    backup_retention_days: int | None = Field(
        default=None, ge=1, description="AWS Backup daily backups of the tables, kept this long; null: none."
    )

    auth: AuthConfig = Field(default_factory=AuthConfig)
    alarm_email: str | None = Field(default=None, description="Subscribe this address to the alarm topic.")
    subscription_endpoints: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per tenant, the HTTPS URL prefixes its FHIR Subscriptions may deliver to "
        '({"clinic-a": ["https://hooks.clinic-a.example/fhir"]}); a tenant not listed may deliver nowhere.',
    )

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in RETENTION_DAYS:
            allowed = ", ".join(str(d) for d in RETENTION_DAYS)
            raise ValueError(f"CloudWatch Logs accepts only {allowed}")
        return value

    @field_validator("api_stage_name")
    @classmethod
    def _stage(cls, value: str) -> str:
        if not _STAGE.match(value):
            raise ValueError("must be 1-64 letters, digits or underscores")
        return value

    @field_validator("reserved_concurrency")
    @classmethod
    def _known_functions(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(names.FUNCTIONS))
        if unknown:
            raise ValueError(f"unknown function(s) {', '.join(unknown)}; known: {', '.join(names.FUNCTIONS)}")
        bad = sorted(fn for fn, n in value.items() if n < 1)
        if bad:
            raise ValueError(f"reserved concurrency must be >= 1 ({', '.join(bad)})")
        return value

    @field_validator("alarm_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError("is not an e-mail address")
        return value

    @field_validator("subscription_endpoints")
    @classmethod
    def _endpoints(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        problems = [f"'{tenant}' is not a tenant id" for tenant in value if not TENANT_ID.match(tenant)]
        for tenant, prefixes in value.items():
            problems += [f"{tenant}: {problem}" for p in prefixes if (problem := _endpoint_problem(p))]
        if problems:
            raise ValueError("; ".join(problems))
        if len(json.dumps(value, separators=(",", ":"))) > MAX_SUBSCRIPTION_ENDPOINTS_CHARS:
            raise ValueError(
                f"is longer than {MAX_SUBSCRIPTION_ENDPOINTS_CHARS} characters as JSON (it is passed in "
                "environment variables, which Lambda limits to 4 KB per function)"
            )
        return value

    @model_validator(mode="after")
    def _burst(self) -> Self:
        if self.api_throttle_burst_limit < self.api_throttle_rate_limit:
            raise ValueError("api_throttle_burst_limit must be >= api_throttle_rate_limit")
        return self

    @property
    def retain(self) -> bool:
        return self.removal_policy == "retain"

    @property
    def stack_name(self) -> str:
        return f"{names.STACK_NAME}-{self.name}"

    def timeout_seconds(self, function: str) -> int:
        """The timeout of ``function``: the notifier's own, every other function's the common one."""
        if function == names.FN_SHARING_NOTIFIER:
            return self.sharing_notifier_timeout_seconds
        return self.function_timeout_seconds

    def subscription_endpoints_json(self) -> str | None:
        """``subscription_endpoints`` as the functions' ``EHR_SUBSCRIPTION_ENDPOINTS`` (None when empty,
        so the variable is left out and the settings' default, no endpoint at all, applies)."""
        if not self.subscription_endpoints:
            return None
        return json.dumps(self.subscription_endpoints, separators=(",", ":"), sort_keys=True)


def _endpoint_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a Subscription endpoint prefix, or None."""
    try:
        parts = urlsplit(prefix)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"'{prefix}' is not a URL"
    if parts.scheme != "https" or not parts.hostname:
        return f"'{prefix}' is not an https:// URL with a host"
    if parts.username or parts.password or parts.query or parts.fragment:
        return f"'{prefix}' has user info, a query or a fragment"
    return None


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(environment)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def load_config(context: Mapping[str, Any], env: str | None = None) -> EnvironmentConfig:
    """Validate the configuration of environment ``env`` from the app's context.

    ``context`` is what ``app.node.try_get_context`` sees: ``environments`` (a mapping, or its JSON
    text when given with ``-c``) and optionally ``env``.
    """
    name = env or context.get(ENV_CONTEXT_KEY) or DEFAULT_ENV
    environments = context.get(ENVIRONMENTS_CONTEXT_KEY)
    if isinstance(environments, str):
        try:
            environments = json.loads(environments)
        except ValueError as exc:
            raise ConfigError(f"context '{ENVIRONMENTS_CONTEXT_KEY}' is not valid JSON: {exc}") from exc
    if not isinstance(environments, Mapping) or not environments:
        raise ConfigError(
            f"context '{ENVIRONMENTS_CONTEXT_KEY}' is missing: cdk.json must define "
            f'"context": {{"{ENVIRONMENTS_CONTEXT_KEY}": {{"dev": {{...}}}}}}'
        )
    if name not in environments:
        known = ", ".join(sorted(environments))
        raise ConfigError(f"unknown environment '{name}' (-c {ENV_CONTEXT_KEY}=...); known: {known}")
    values = environments[name]
    if not isinstance(values, Mapping):
        raise ConfigError(f"context '{ENVIRONMENTS_CONTEXT_KEY}.{name}' must be an object")
    try:
        return EnvironmentConfig.model_validate({"name": name, **values})
    except ValidationError as exc:
        raise ConfigError(
            f"invalid configuration for environment '{name}' "
            f"(cdk.json context '{ENVIRONMENTS_CONTEXT_KEY}.{name}'):\n{_describe(exc)}"
        ) from None


def cdk_json_context(project_root: Path) -> dict[str, Any]:
    """The ``context`` block of ``cdk.json``: defaults when the app runs without the CDK CLI."""
    path = project_root / "cdk.json"
    if not path.is_file():
        return {}
    context = json.loads(path.read_text(encoding="utf-8")).get("context", {})
    return dict(context) if isinstance(context, Mapping) else {}
