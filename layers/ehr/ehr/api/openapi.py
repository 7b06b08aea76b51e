"""OpenAPI 3.1 generated from the route table (never written by hand)."""

from __future__ import annotations

from typing import Any, Final

import ehr
from ehr.api.routes import ROUTES, Route

_STANDARD_ERRORS: Final = {
    "400": "Invalid request",
    "404": "Unknown route, tenant or resource",
    "500": "Unexpected failure (no internals disclosed)",
}
_AUTH_ERRORS: Final = {
    "401": "Missing, malformed, expired or wrongly signed bearer token",
    "403": "The token does not permit this request (for example another tenant)",
}

_PARAM_DESCRIPTIONS: Final = {
    "tenant": "Tenant (facility) id; must match the tenant of the bearer token.",
}


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Serverless EHR API",
            "version": ehr.__version__,
            "description": "FHIR R4, SMART on FHIR discovery and platform routes. Every error body is a "
            "FHIR OperationOutcome.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "smart": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "SMART on FHIR access token; its claims carry the tenant and scopes.",
                }
            },
            "schemas": {
                "OperationOutcome": {
                    "type": "object",
                    "required": ["resourceType", "issue"],
                    "properties": {
                        "resourceType": {"const": "OperationOutcome"},
                        "issue": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["severity", "code"],
                                "properties": {
                                    "severity": {"enum": ["fatal", "error", "warning", "information"]},
                                    "code": {"type": "string"},
                                    "diagnostics": {"type": "string"},
                                    "expression": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
                "FhirResource": {
                    "type": "object",
                    "required": ["resourceType"],
                    "properties": {"resourceType": {"type": "string"}},
                    "additionalProperties": True,
                },
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def _operation(route: Route) -> dict[str, Any]:
    outcome = {"$ref": "#/components/schemas/OperationOutcome"}
    error_content = {"application/fhir+json": {"schema": outcome}}
    success_schema = (
        {"$ref": "#/components/schemas/FhirResource"}
        if route.produces.endswith("fhir+json")
        else {"type": "object"}
        if route.produces.endswith("json")
        else {"type": "string"}
    )
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {route.produces: {"schema": success_schema}}}
    }
    errors = dict(_STANDARD_ERRORS)
    if route.auth:
        errors.update(_AUTH_ERRORS)
    for code, text in sorted(errors.items()):
        responses[code] = {"description": text, "content": error_content}
    for status, description in route.responses.items():  # the route's own answers win
        if status < 400:
            responses[str(status)] = {"description": description}
        elif route.produces.endswith("json"):
            responses[str(status)] = {"description": description, "content": error_content}
        else:  # e.g. an HL7 ACK answering a message that was refused
            responses[str(status)] = {
                "description": description,
                "content": {route.produces: {"schema": success_schema}},
            }
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": list(route.tags),
        "responses": responses,
        "security": [{"smart": []}] if route.auth else [],
    }
    if route.path_parameters:
        operation["parameters"] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": _PARAM_DESCRIPTIONS.get(name, name),
            }
            for name in route.path_parameters
        ]
    return operation
