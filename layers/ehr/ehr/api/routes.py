"""The route table: the single source for API Gateway (CDK), the local router and OpenAPI.

Paths are API Gateway resource templates (``{name}`` path parameters). A route names the
function that serves it and the operation inside that function; the function's dispatcher
looks an incoming event up by ``(httpMethod, resource)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from ehr import names

FHIR_JSON: Final = "application/fhir+json"
JSON: Final = "application/json"

_PARAM = re.compile(r"\{([A-Za-z0-9_]+)\+?\}")


@dataclass(frozen=True)
class Route:
    """One HTTP route of the platform."""

    method: str
    path: str
    function: str
    operation_id: str
    summary: str
    auth: bool = True
    tenant_scoped: bool = True
    tags: tuple[str, ...] = ()
    produces: str = FHIR_JSON
    # Extra documented responses beyond the pipeline's standard ones, e.g. {302: "redirect"}.
    responses: dict[int, str] = field(default_factory=dict)

    @property
    def path_parameters(self) -> tuple[str, ...]:
        return tuple(_PARAM.findall(self.path))

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)


ROUTES: Final[tuple[Route, ...]] = (
    Route(
        "GET",
        "/health",
        names.FN_DISCOVERY,
        "getHealth",
        "Liveness check: answers 200 when the function can serve requests.",
        auth=False,
        tenant_scoped=False,
        tags=("platform",),
        produces=JSON,
    ),
    Route(
        "GET",
        "/openapi.json",
        names.FN_DISCOVERY,
        "getOpenApi",
        "OpenAPI 3.1 description of every route, generated from the route table.",
        auth=False,
        tenant_scoped=False,
        tags=("platform",),
        produces=JSON,
    ),
    Route(
        "GET",
        "/.well-known/smart-configuration",
        names.FN_DISCOVERY,
        "getSmartConfiguration",
        "SMART on FHIR discovery document of the token issuer this deployment trusts.",
        auth=False,
        tenant_scoped=False,
        tags=("smart",),
        produces=JSON,
    ),
    Route(
        "GET",
        "/.well-known/jwks.json",
        names.FN_DISCOVERY,
        "getJwks",
        "Public keys of the issuer (served in local mode; a redirect to the issuer's JWKS in the cloud).",
        auth=False,
        tenant_scoped=False,
        tags=("smart",),
        produces=JSON,
        responses={302: "Redirect to the configured issuer's JWKS"},
    ),
    Route(
        "GET",
        "/tenants/{tenant}/fhir/.well-known/smart-configuration",
        names.FN_DISCOVERY,
        "getTenantSmartConfiguration",
        "SMART discovery relative to a tenant's FHIR base URL, where SMART clients look for it.",
        auth=False,
        tenant_scoped=False,
        tags=("smart",),
        produces=JSON,
    ),
    Route(
        "GET",
        "/tenants/{tenant}/fhir/metadata",
        names.FN_FHIR_API,
        "getCapabilityStatement",
        "FHIR CapabilityStatement listing what this server really implements.",
        tags=("fhir",),
    ),
)


def routes_for(function: str) -> tuple[Route, ...]:
    return tuple(r for r in ROUTES if r.function == function)


def route_index(function: str | None = None) -> dict[tuple[str, str], Route]:
    """Routes keyed by ``(method, resource template)``, optionally of one function."""
    return {r.key: r for r in ROUTES if function is None or r.function == function}
