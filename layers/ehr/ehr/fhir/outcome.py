"""FHIR OperationOutcome errors: how the domain says no, and how every layer renders it.

Domain code raises ``OperationOutcomeError`` through the small factories below; one function
maps an outcome to its HTTP status; one renderer turns it into the response body. Messages are
written for the API's users and never carry stack traces, internal names or PHI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Severity = Literal["fatal", "error", "warning", "information"]

# FHIR issue-type code -> HTTP status (DESIGN.md "HTTP interface").
STATUS_BY_CODE: Final[Mapping[str, int]] = {
    "invalid": 400,
    "structure": 400,
    "required": 400,
    "value": 400,
    "invariant": 400,
    "login": 401,
    "unknown": 401,
    "expired": 401,
    "forbidden": 403,
    "security": 403,
    "suppressed": 403,
    "not-found": 404,
    "not-supported": 404,
    "deleted": 410,
    "conflict": 409,
    "duplicate": 409,
    "too-long": 413,
    "business-rule": 422,
    "processing": 422,
    "throttled": 429,
    "exception": 500,
    "timeout": 504,
    "transient": 503,
}


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    code: str
    diagnostics: str
    severity: Severity = "error"
    expression: tuple[str, ...] = ()

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


@dataclass
class OperationOutcomeError(Exception):
    """A request the platform refuses, with the HTTP status and issues to answer with."""

    status: int
    issues: tuple[Issue, ...]
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.status, "; ".join(i.diagnostics for i in self.issues))

    @property
    def code(self) -> str:
        return self.issues[0].code

    def to_fhir(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def status_for(code: str) -> int:
    """The HTTP status an OperationOutcome issue code is answered with."""
    return STATUS_BY_CODE.get(code, 400)


def _error(
    code: str,
    diagnostics: str,
    *,
    expression: Iterable[str] = (),
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> OperationOutcomeError:
    return OperationOutcomeError(
        status=status if status is not None else status_for(code),
        issues=(Issue(code=code, diagnostics=diagnostics, expression=tuple(expression)),),
        headers=dict(headers or {}),
    )


def invalid(
    diagnostics: str, *, expression: Iterable[str] = (), code: str = "invalid"
) -> OperationOutcomeError:
    return _error(code, diagnostics, expression=expression)


def unauthorized(diagnostics: str, *, error: str = "invalid_token") -> OperationOutcomeError:
    # RFC 6750: a 401 carries a WWW-Authenticate challenge.
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return _error("login", diagnostics, headers={"WWW-Authenticate": challenge})


def forbidden(diagnostics: str) -> OperationOutcomeError:
    return _error("forbidden", diagnostics)


def not_found(diagnostics: str) -> OperationOutcomeError:
    return _error("not-found", diagnostics)


def not_supported(diagnostics: str, *, status: int = 404) -> OperationOutcomeError:
    return _error("not-supported", diagnostics, status=status)


def gone(diagnostics: str) -> OperationOutcomeError:
    return _error("deleted", diagnostics)


def conflict(diagnostics: str) -> OperationOutcomeError:
    return _error("conflict", diagnostics)


def precondition_failed(diagnostics: str) -> OperationOutcomeError:
    return _error("conflict", diagnostics, status=412)


def too_large(diagnostics: str) -> OperationOutcomeError:
    return _error("too-long", diagnostics)


def unprocessable(diagnostics: str, *, expression: Iterable[str] = ()) -> OperationOutcomeError:
    return _error("business-rule", diagnostics, expression=expression)


def throttled(diagnostics: str) -> OperationOutcomeError:
    return _error("throttled", diagnostics)


def internal_error() -> OperationOutcomeError:
    return _error("exception", "The server could not complete the request; it has been logged.")


@dataclass(frozen=True)
class GatewayResponse:
    """An answer API Gateway gives before any function runs, rendered as an OperationOutcome.

    CDK installs these as API Gateway responses; the local emulator answers with the same ones.
    """

    response_type: str
    status: int | None  # None: keep the status API Gateway chose (the DEFAULT_* catch-alls)
    code: str
    diagnostics: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return operation_outcome([Issue(code=self.code, diagnostics=self.diagnostics)])


GATEWAY_RESPONSES: Final[tuple[GatewayResponse, ...]] = (
    # API Gateway answers an unknown route with MISSING_AUTHENTICATION_TOKEN (403); a FHIR
    # server answers 404.
    GatewayResponse("MISSING_AUTHENTICATION_TOKEN", 404, "not-found", "No such route on this server."),
    GatewayResponse("RESOURCE_NOT_FOUND", 404, "not-found", "No such route on this server."),
    GatewayResponse(
        "UNAUTHORIZED",
        401,
        "login",
        "A valid bearer token is required.",
        {"WWW-Authenticate": 'Bearer error="invalid_token"'},
    ),
    GatewayResponse("ACCESS_DENIED", 403, "forbidden", "The token does not permit this request."),
    GatewayResponse(
        "EXPIRED_TOKEN",
        401,
        "expired",
        "The bearer token has expired.",
        {"WWW-Authenticate": 'Bearer error="invalid_token"'},
    ),
    GatewayResponse("THROTTLED", 429, "throttled", "Too many requests; retry later."),
    GatewayResponse("QUOTA_EXCEEDED", 429, "throttled", "Request quota exceeded; retry later."),
    GatewayResponse(
        "REQUEST_TOO_LARGE", 413, "too-long", "The request body is larger than this server accepts."
    ),
    GatewayResponse(
        "WAF_FILTERED", 403, "forbidden", "The request was blocked by the web application firewall."
    ),
    GatewayResponse("DEFAULT_4XX", None, "invalid", "The request could not be accepted."),
    GatewayResponse("DEFAULT_5XX", None, "exception", "The server could not complete the request."),
)


def gateway_response(response_type: str) -> GatewayResponse:
    for response in GATEWAY_RESPONSES:
        if response.response_type == response_type:
            return response
    raise KeyError(response_type)
