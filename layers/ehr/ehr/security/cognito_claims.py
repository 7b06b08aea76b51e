"""The tenant claim of Cognito access tokens: the pre token generation trigger (event version V3_0).

Cognito's client-credentials tokens carry no tenant, and the API refuses a token without one. Before
Cognito issues an access token it calls the trigger with a ``TokenGeneration_ClientCredentials``
event; the tenant comes from the app client that authenticated (``callerContext.clientId``), never
from anything the client sends: ``request.clientMetadata`` (the token request's
``aws_client_metadata``) and the requested scopes are not read.

An administrator binds an app client to a tenant when onboarding a partner, by the client's name:
``tenant.{tenant}`` or ``tenant.{tenant}.{label}`` (``ehr.names.cognito_tenant_client_name``).
Only administrators can name app clients, the binding is created and deleted with the client, and
"." never occurs in a tenant id, so a name binds at most one tenant. A client whose name binds none
gets no tenant claim (the claim is suppressed), and the API then refuses its tokens: fail closed.
When the name cannot be read (throttled, denied, unreachable), the trigger fails and so does the
token request; the partner retries instead of holding a token that every route would refuse.

The client lookup is a port (``AppClientDirectory``): ``CognitoAppClients`` asks Cognito
(``DescribeUserPoolClient``), ``FakeAppClients`` serves tests. ``TenantBindings`` caches answers per
warm function for ``client_cache_seconds``, so a renamed or re-bound client takes effect within
that time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from ehr import names
from ehr.security.identity import TENANT_ID

if TYPE_CHECKING:
    from ehr.settings import TokenCustomizerSettings

CLIENT_CREDENTIALS: Final = "TokenGeneration_ClientCredentials"
MAX_CACHED_CLIENTS: Final = 1024

# Why a token got no tenant (logged with the client id; never a secret or request data).
BOUND: Final = "bound"
UNBOUND_CLIENT: Final = "client binds no tenant"
NOT_CLIENT_CREDENTIALS: Final = "not a client-credentials grant"
MALFORMED_EVENT: Final = "event names no pool or client"


class ClientLookupError(Exception):
    """The app client's name could not be read; the token must not be issued without a decision."""

    def __init__(self, client_id: str, reason: str) -> None:
        super().__init__(f"app client {client_id}: its name could not be read ({reason})")
        self.client_id = client_id
        self.reason = reason


class AppClientDirectory(Protocol):
    """Names of a user pool's app clients."""

    def client_name(self, user_pool_id: str, client_id: str) -> str | None:
        """The app client's name; None when the pool has no such client.

        Raises ``ClientLookupError`` when the directory cannot answer."""
        ...


def tenant_of_client_name(name: str | None) -> str | None:
    """The tenant an app client name binds: ``tenant.{tenant}[.{label}]``, else None.

    Strict on purpose: the prefix is case-sensitive, the tenant must be a valid tenant id as it
    stands (no trimming, no case folding) and a label, when a separator follows, is not empty."""
    if not name or not name.startswith(names.COGNITO_TENANT_CLIENT_PREFIX):
        return None
    rest = name[len(names.COGNITO_TENANT_CLIENT_PREFIX) :]
    tenant, separator, label = rest.partition(names.COGNITO_CLIENT_LABEL_SEPARATOR)
    if separator and not label.strip():
        return None
    return tenant if TENANT_ID.match(tenant) else None


class TenantBindings:
    """App client -> tenant, resolved through the directory and remembered for ``ttl_seconds``.

    Answers (a tenant or no tenant) are cached per pool and client; lookup failures are not."""

    def __init__(
        self,
        directory: AppClientDirectory,
        *,
        ttl_seconds: float = 300,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_CACHED_CLIENTS,
    ) -> None:
        self._directory = directory
        self._ttl = ttl_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}

    def tenant_for(self, user_pool_id: str, client_id: str) -> str | None:
        key = (user_pool_id, client_id)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        tenant = tenant_of_client_name(self._directory.client_name(user_pool_id, client_id))
        if self._ttl > 0:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[key] = (now + self._ttl, tenant)
        return tenant


@dataclass(frozen=True)
class TokenDecision:
    """What the trigger decided for one token (identifiers only, for logs and metrics)."""

    client_id: str | None
    user_pool_id: str | None
    trigger_source: str | None
    tenant: str | None
    reason: str


class TokenCustomizer:
    """Sets the response of a V3_0 pre token generation event: the bound tenant in the access
    token's ``tenant_claim``, or that claim suppressed."""

    def __init__(self, bindings: TenantBindings, *, tenant_claim: str) -> None:
        if not tenant_claim:
            raise ValueError("the tenant claim needs a name")
        self.bindings = bindings
        self.tenant_claim = tenant_claim

    def __call__(self, event: dict[str, Any]) -> TokenDecision:
        """Decide, and write the decision into ``event["response"]`` (the event is returned to Cognito).

        Raises ``ClientLookupError`` when the client's binding cannot be read."""
        trigger = _str(event.get("triggerSource"))
        caller = event.get("callerContext")
        client_id = _str(caller.get("clientId")) if isinstance(caller, Mapping) else None
        pool_id = _str(event.get("userPoolId"))
        tenant: str | None = None
        if trigger != CLIENT_CREDENTIALS:
            reason = NOT_CLIENT_CREDENTIALS  # user sign-ins are not bound to a tenant (yet)
        elif client_id is None or pool_id is None:
            reason = MALFORMED_EVENT
        else:
            tenant = self.bindings.tenant_for(pool_id, client_id)
            reason = BOUND if tenant else UNBOUND_CLIENT
        event["response"] = access_token_override(self.tenant_claim, tenant)
        return TokenDecision(client_id, pool_id, trigger, tenant, reason)


def access_token_override(tenant_claim: str, tenant: str | None) -> dict[str, Any]:
    """The V2_0/V3_0 trigger response: add the tenant claim, or suppress it when there is none."""
    access: dict[str, Any] = (
        {"claimsToAddOrOverride": {tenant_claim: tenant}} if tenant else {"claimsToSuppress": [tenant_claim]}
    )
    return {"claimsAndScopeOverrideDetails": {"accessTokenGeneration": access}}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# --- adapters -------------------------------------------------------------------------------------


class CognitoAppClients:
    """``AppClientDirectory`` over Cognito's ``DescribeUserPoolClient``.

    Only the name is kept from the answer (which also holds the client secret). Timeouts and
    retries are short: Cognito waits about five seconds for its trigger."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def _cognito(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "cognito-idp",
                config=Config(
                    connect_timeout=1, read_timeout=2, retries={"max_attempts": 2, "mode": "standard"}
                ),
            )
        return self._client

    def client_name(self, user_pool_id: str, client_id: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._cognito().describe_user_pool_client(UserPoolId=user_pool_id, ClientId=client_id)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            if code == "ResourceNotFoundException":
                return None
            raise ClientLookupError(client_id, code) from exc
        except BotoCoreError as exc:
            raise ClientLookupError(client_id, type(exc).__name__) from exc
        name = (answer.get("UserPoolClient") or {}).get("ClientName")
        return name if isinstance(name, str) else None


class FakeAppClients:
    """In-memory ``AppClientDirectory``: ``{(pool id, client id): name}``; counts lookups."""

    def __init__(self, clients: Mapping[tuple[str, str], str] | None = None) -> None:
        self.clients: dict[tuple[str, str], str] = dict(clients or {})
        self.lookups: list[tuple[str, str]] = []
        self.failure: str | None = None  # set to make every lookup fail with this reason

    def client_name(self, user_pool_id: str, client_id: str) -> str | None:
        self.lookups.append((user_pool_id, client_id))
        if self.failure is not None:
            raise ClientLookupError(client_id, self.failure)
        return self.clients.get((user_pool_id, client_id))


def build_token_customizer(
    settings: TokenCustomizerSettings, *, directory: AppClientDirectory | None = None
) -> TokenCustomizer:
    """The trigger's core from its settings (Cognito itself unless a directory is given)."""
    bindings = TenantBindings(directory or CognitoAppClients(), ttl_seconds=settings.client_cache_seconds)
    return TokenCustomizer(bindings, tenant_claim=settings.tenant_claim)
