"""The request pipeline every route goes through.

``HttpRequest`` → find the route → authenticate (verify the JWT, build the identity) → check
the URL's tenant against the token's → run the operation → ``HttpResponse``. Every refusal and
every unexpected failure is rendered as a FHIR OperationOutcome; nothing internal leaks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ehr.api.http import HttpRequest, HttpResponse
from ehr.api.routes import Route, route_index
from ehr.fhir.outcome import OperationOutcomeError, internal_error, not_found
from ehr.security.identity import Identity
from ehr.security.tenancy import Tenant, TenantDirectory, authorize_tenant
from ehr.security.tokens import TokenVerifier, bearer_token

SECURITY_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}


@dataclass(frozen=True)
class RequestContext:
    """What an operation gets: the request, its route, and (for authenticated routes) who asks."""

    request: HttpRequest
    route: Route
    identity: Identity | None = None
    tenant: Tenant | None = None


Operation = Callable[[RequestContext], HttpResponse]


class Authenticator(Protocol):
    def __call__(self, request: HttpRequest) -> Identity: ...


class BearerAuthenticator:
    """Verifies the request's bearer token and turns its claims into an Identity."""

    def __init__(self, verifier: TokenVerifier, *, tenant_claim: str) -> None:
        self._verifier = verifier
        self._tenant_claim = tenant_claim

    def __call__(self, request: HttpRequest) -> Identity:
        claims = self._verifier.verify(bearer_token(request.header("authorization")))
        return Identity.from_claims(claims, tenant_claim=self._tenant_claim)


class Api:
    """The operations of one function, dispatched by the route table."""

    def __init__(
        self,
        function: str,
        *,
        authenticate: Authenticator | None = None,
        tenants: TenantDirectory | None = None,
        logger: logging.Logger | Any = None,
        observe: Callable[[str, int], None] | None = None,
    ) -> None:
        self.function = function
        self.routes = route_index(function)
        self._operations: dict[str, Operation] = {}
        self._authenticate = authenticate
        self._tenants = tenants
        self._log = logger or logging.getLogger(f"ehr.{function}")
        # Told (operation id, status) after each request: the Lambda handler turns it into metrics.
        self._observe = observe

    def operation(self, operation_id: str) -> Callable[[Operation], Operation]:
        known = {r.operation_id for r in self.routes.values()}
        if operation_id not in known:
            raise KeyError(f"{operation_id!r} is not a route of function {self.function!r}")

        def register(fn: Operation) -> Operation:
            self._operations[operation_id] = fn
            return fn

        return register

    def missing_operations(self) -> set[str]:
        """Routes of this function that no operation serves (a test keeps this empty)."""
        return {r.operation_id for r in self.routes.values()} - set(self._operations)

    def handle(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        route = self.routes.get((request.method, request.resource))
        try:
            if route is None:
                raise not_found("No such route on this server.")
            response = self._operations[route.operation_id](self._context(request, route))
        except OperationOutcomeError as error:
            response = self._render(error)
            self._log.info(
                "request refused",
                extra={
                    "operation": route.operation_id if route else None,
                    "status": error.status,
                    "outcome_code": error.code,
                },
            )
        except Exception:  # noqa: BLE001 - the last line of defence: a 500 OperationOutcome, never a trace
            # The exception is logged with its type and traceback but never returned; resource
            # bodies are not part of exception messages the core raises.
            self._log.exception("request failed", extra={"operation": route.operation_id if route else None})
            response = self._render(internal_error())
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.request_id:
            response.headers.setdefault("X-Request-Id", request.request_id)
        self._log.debug(
            "request served",
            extra={"status": response.status, "ms": round((time.perf_counter() - started) * 1000, 2)},
        )
        if self._observe is not None:
            self._observe(route.operation_id if route else "unknownRoute", response.status)
        return response

    def resolve(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        """The Lambda entry: an API Gateway REST proxy event in, a proxy response out."""
        try:
            request = HttpRequest.from_apigw_event(event)
        except (ValueError, TypeError, AttributeError):
            self._log.exception("malformed API Gateway event")
            return self._render(internal_error()).to_apigw()
        return self.handle(request).to_apigw()

    def _context(self, request: HttpRequest, route: Route) -> RequestContext:
        if not route.auth:
            return RequestContext(request=request, route=route)
        if self._authenticate is None or self._tenants is None:
            raise RuntimeError(
                f"function {self.function!r} serves authenticated routes without an authenticator"
            )
        identity = self._authenticate(request)
        tenant = None
        if route.tenant_scoped:
            tenant = authorize_tenant(identity, request.path_params.get("tenant", ""), self._tenants)
        return RequestContext(request=request, route=route, identity=identity, tenant=tenant)

    @staticmethod
    def _render(error: OperationOutcomeError) -> HttpResponse:
        return HttpResponse.json(error.status, error.to_fhir(), headers=error.headers)
