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
HL7_ER7: Final = "x-application/hl7-v2+er7"
JSON: Final = "application/json"

TYPE: Final = "/tenants/{tenant}/fhir/{type}"
INSTANCE: Final = "/tenants/{tenant}/fhir/{type}/{id}"

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
    consumes: bool = False  # takes a request body
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
        "POST",
        "/tenants/{tenant}/fhir",
        names.FN_FHIR_API,
        "postBundle",
        "Process a batch or transaction Bundle.",
        tags=("fhir",),
        consumes=True,
    ),
    Route("GET", TYPE, names.FN_FHIR_API, "searchType", "Search resources of a type.", tags=("fhir",)),
    Route(
        "POST",
        TYPE,
        names.FN_FHIR_API,
        "create",
        "Create a resource (server-assigned id; If-None-Exist).",
        tags=("fhir",),
        consumes=True,
        responses={201: "Created"},
    ),
    Route(
        "PUT",
        TYPE,
        names.FN_FHIR_API,
        "conditionalUpdate",
        "Update the one resource matching the search.",
        tags=("fhir",),
        consumes=True,
        responses={201: "Created"},
    ),
    Route(
        "DELETE",
        TYPE,
        names.FN_FHIR_API,
        "conditionalDelete",
        "Delete the resource(s) matching the search.",
        tags=("fhir",),
        responses={204: "Deleted"},
    ),
    Route(
        "POST",
        f"{TYPE}/_search",
        names.FN_FHIR_API,
        "searchTypePost",
        "Search resources of a type with parameters in a form body.",
        tags=("fhir",),
        consumes=True,
    ),
    Route(
        "POST",
        f"{TYPE}/{{id}}",
        names.FN_FHIR_API,
        "typeOperationPost",
        "Run an operation on a type: Patient/$match (master patient index, across facilities).",
        tags=("fhir",),
        consumes=True,
    ),
    Route(
        "GET",
        f"{TYPE}/_history",
        names.FN_FHIR_API,
        "typeHistory",
        "History of all resources of a type.",
        tags=("fhir",),
    ),
    Route(
        "GET",
        INSTANCE,
        names.FN_FHIR_API,
        "read",
        "Read the current version of a resource; Binary/{id} of a stored document redirects to its content.",
        tags=("fhir",),
        responses={302: "Redirect to a presigned download URL (Binary of a stored document)", 410: "Deleted"},
    ),
    Route(
        "PUT",
        INSTANCE,
        names.FN_FHIR_API,
        "update",
        "Update a resource, or create it with this id.",
        tags=("fhir",),
        consumes=True,
        responses={201: "Created", 409: "Conflict", 412: "Version mismatch"},
    ),
    Route(
        "PATCH",
        INSTANCE,
        names.FN_FHIR_API,
        "patch",
        "Patch a resource with a JSON Patch document.",
        tags=("fhir",),
        consumes=True,
        responses={412: "Version mismatch", 422: "Patch cannot be applied"},
    ),
    Route(
        "DELETE",
        INSTANCE,
        names.FN_FHIR_API,
        "delete",
        "Delete a resource (history is kept).",
        tags=("fhir",),
        responses={204: "Deleted"},
    ),
    Route(
        "GET",
        f"{INSTANCE}/_history",
        names.FN_FHIR_API,
        "instanceHistory",
        "History of one resource.",
        tags=("fhir",),
    ),
    Route(
        "GET",
        f"{INSTANCE}/_history/{{vid}}",
        names.FN_FHIR_API,
        "vread",
        "Read one version of a resource.",
        tags=("fhir",),
        responses={410: "That version is a deletion"},
    ),
    Route(
        "GET",
        f"{INSTANCE}/{{operation}}",
        names.FN_FHIR_API,
        "instanceOperation",
        "Run an operation on a resource: Patient/{id}/$everything.",
        tags=("fhir",),
    ),
    Route(
        "POST",
        f"{INSTANCE}/{{operation}}",
        names.FN_FHIR_API,
        "instanceOperationPost",
        "Run an operation on a resource: DocumentReference/{id}/$upload-url (a presigned PUT).",
        tags=("fhir",),
        consumes=True,
        responses={409: "The document's content is already uploaded or not expected"},
    ),
    Route(
        "POST",
        "/tenants/{tenant}/hl7v2",
        names.FN_HL7V2_INBOUND,
        "postHl7v2Message",
        "Receive one HL7 v2 message (ER7) or a batch; answers with the HL7 ACK for each message.",
        tags=("hl7v2",),
        produces=HL7_ER7,
        consumes=True,
        responses={
            400: "ACK AR: the message cannot be read",
            503: "ACK AE: not processed now (store unavailable or a duplicate in progress); retry",
        },
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
