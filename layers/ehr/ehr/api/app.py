"""The request pipeline every route goes through.

``HttpRequest`` → find the route → authenticate (verify the JWT, build the identity) → check
the URL's tenant against the token's → run the operation → ``HttpResponse``. Every refusal and
every unexpected failure is rendered as a FHIR OperationOutcome; nothing internal leaks.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ehr.api.http import HttpRequest, HttpResponse
from ehr.api.routes import Route, route_index
from ehr.fhir.outcome import Issue, OperationOutcomeError, internal_error, not_found
from ehr.security.audit import Action, AuditRecord, AuditSink, AuditUnavailableError
from ehr.security.identity import TENANT_ID, Identity
from ehr.security.tenancy import Tenant, TenantDirectory, authorize_tenant
from ehr.security.tokens import TokenVerifier, bearer_token
from ehr.store.ports import StoredResource

SECURITY_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}


@dataclass
class AuditNote:
    """What an operation tells the audit trail about the request it served."""

    subtype: str | None = None
    action: Action | None = None
    touched: list[StoredResource] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    query: str | None = None
    resource_type: str | None = None
    identity: Identity | None = None
    purpose: str | None = None  # the purpose of use the operation acted on, when it chose one

    def saw(self, resources: Iterable[StoredResource | None]) -> None:
        self.touched += [r for r in resources if r is not None]


@dataclass(frozen=True)
class RequestContext:
    """What an operation gets: the request, its route, and (for authenticated routes) who asks."""

    request: HttpRequest
    route: Route
    identity: Identity | None = None
    tenant: Tenant | None = None
    audit: AuditNote = field(default_factory=AuditNote)


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
        audit: AuditSink | None = None,
        clock: Callable[[], str] | None = None,
    ) -> None:
        self.function = function
        self.routes = route_index(function)
        self._operations: dict[str, Operation] = {}
        self._authenticate = authenticate
        self._tenants = tenants
        self._log = logger or logging.getLogger(f"ehr.{function}")
        # Told (operation id, status) after each request: the Lambda handler turns it into metrics.
        self._observe = observe
        # With a sink, every request to an authenticated tenant route leaves one audit record,
        # and a request whose record cannot be stored answers 503 instead of its data.
        self._audit = audit
        self._clock = clock or _now

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
        note = AuditNote()
        try:
            if route is None:
                raise not_found("No such route on this server.")
            response = self._operations[route.operation_id](self._context(request, route, note))
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
        if self._audit is not None and route is not None and route.auth and route.tenant_scoped:
            try:
                response = self._record(request, route, note, response)
            except Exception:  # noqa: BLE001 - recording must never turn into an unhandled failure
                self._log.exception("audit recording failed", extra={"operation": route.operation_id})
                if response.status < 400:
                    response = self._render(audit_unavailable())  # fail closed: no data without its record
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

    def _context(self, request: HttpRequest, route: Route, note: AuditNote) -> RequestContext:
        if not route.auth:
            return RequestContext(request=request, route=route, audit=note)
        if self._authenticate is None or self._tenants is None:
            raise RuntimeError(
                f"function {self.function!r} serves authenticated routes without an authenticator"
            )
        identity = self._authenticate(request)
        note.identity = identity
        tenant = None
        if route.tenant_scoped:
            tenant = authorize_tenant(identity, request.path_params.get("tenant", ""), self._tenants)
        return RequestContext(request=request, route=route, identity=identity, tenant=tenant, audit=note)

    def _record(
        self, request: HttpRequest, route: Route, note: AuditNote, response: HttpResponse
    ) -> HttpResponse:
        """Store the request's audit record; fail closed when that is not possible."""
        assert self._audit is not None
        tenant_id = request.path_params.get("tenant", "")
        if self._tenants is None or not TENANT_ID.match(tenant_id) or self._tenants.get(tenant_id) is None:
            return response  # no such tenant: nobody's trail to write, and nothing was disclosed
        identity = note.identity
        patients = sorted(
            {p for r in note.touched for p in r.compartments}
            | {r.id for r in note.touched if r.resource_type == "Patient"}
        )
        references = list(dict.fromkeys([*note.references, *(r.reference for r in note.touched)]))
        default_subtype, default_action = SUBTYPES.get(route.operation_id, ("operation", "E"))
        record = AuditRecord(
            id=str(uuid.uuid4()),
            tenant=tenant_id,
            recorded=self._clock(),
            action=note.action or default_action,
            subtype=note.subtype or default_subtype,
            outcome="0" if response.status < 400 else "4" if response.status < 500 else "8",
            status=response.status,
            client_id=identity.client_id if identity else None,
            user=identity.subject if identity else None,
            fhir_user=identity.fhir_user if identity else None,
            source_ip=request.source_ip or None,
            request_id=request.request_id or None,
            purpose_of_use=note.purpose or _purpose(request),
            entities=tuple(references[:MAX_AUDIT_ENTITIES]),
            patients=tuple(patients[:MAX_AUDIT_ENTITIES]),
            query=note.query,
            resource_type=note.resource_type or request.path_params.get("type"),
        )
        try:
            self._audit.record(record)
        except AuditUnavailableError:
            self._log.error(
                "audit record not stored; the response is withheld",
                extra={"operation": route.operation_id, "status": response.status},
            )
            return self._render(audit_unavailable())
        return response

    @staticmethod
    def _render(error: OperationOutcomeError) -> HttpResponse:
        return HttpResponse.json(error.status, error.to_fhir(), headers=error.headers)


MAX_AUDIT_ENTITIES = 1000
# operation id -> (AuditEvent subtype: restful-interaction code, AuditEvent action)
SUBTYPES: dict[str, tuple[str, Action]] = {
    "read": ("read", "R"),
    "vread": ("vread", "R"),
    "update": ("update", "U"),
    "conditionalUpdate": ("update", "U"),
    "patch": ("patch", "U"),
    "delete": ("delete", "D"),
    "conditionalDelete": ("delete", "D"),
    "create": ("create", "C"),
    "searchType": ("search-type", "E"),
    "searchTypePost": ("search-type", "E"),
    "typeHistory": ("history-type", "R"),
    "instanceHistory": ("history-instance", "R"),
    "postBundle": ("transaction", "E"),
    "instanceOperation": ("operation", "E"),
    "getCapabilityStatement": ("capabilities", "R"),
}
_PURPOSE = re.compile(r"^[A-Za-z0-9._-]{1,40}$")


def purpose_of_use(request: HttpRequest) -> str | None:
    """The request's ``X-Purpose-Of-Use`` (a v3 ActReason code such as TREAT), if well-formed."""
    return _purpose(request)


def _purpose(request: HttpRequest) -> str | None:
    value = (request.header("x-purpose-of-use") or "").strip()
    return value if _PURPOSE.match(value) else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def audit_unavailable() -> OperationOutcomeError:
    return OperationOutcomeError(
        status=503,
        issues=(
            Issue(
                code="transient",
                diagnostics="The request could not be recorded in the audit trail; "
                "nothing was returned. Retry later.",
            ),
        ),
        headers={"Retry-After": "5"},
    )
