"""The CapabilityStatement: generated from what the server really implements, nothing more.

Capabilities register here as they are built (resource types with their interactions and
search parameters, system interactions, operations); the statement lists exactly those.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import ehr

FHIR_VERSION: Final = "4.0.1"
SOFTWARE_NAME: Final = "Serverless EHR"
SMART_SERVICE: Final = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
        }
    ],
    "text": "OAuth2 bearer tokens (SMART on FHIR); the tenant comes from the token",
}
OAUTH_URIS_EXTENSION: Final = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

_STARTED = datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: str
    definition: str | None = None


@dataclass(frozen=True)
class ResourceCapability:
    type: str
    interactions: tuple[str, ...]
    search_params: tuple[SearchParam, ...] = ()
    versioning: str = "versioned"
    conditional_create: bool = False
    conditional_update: bool = False
    conditional_delete: str = "not-supported"
    search_includes: bool = True
    operations: tuple[tuple[str, str], ...] = ()  # (name, OperationDefinition canonical)


@dataclass
class CapabilityRegistry:
    """What is implemented; the statement is rendered from this alone."""

    resources: list[ResourceCapability] = field(default_factory=list)
    system_interactions: list[str] = field(default_factory=list)

    def add_resources(self, capabilities: Iterable[ResourceCapability]) -> None:
        self.resources.extend(capabilities)


def capability_statement(
    base_url: str, registry: CapabilityRegistry, *, token_endpoint: str | None = None
) -> dict[str, Any]:
    security: dict[str, Any] = {"service": [SMART_SERVICE]}
    if token_endpoint:
        security["extension"] = [
            {"url": OAUTH_URIS_EXTENSION, "extension": [{"url": "token", "valueUri": token_endpoint}]}
        ]
    rest: dict[str, Any] = {"mode": "server", "security": security}
    if registry.resources:
        rest["resource"] = [_resource(r) for r in sorted(registry.resources, key=lambda r: r.type)]
    if registry.system_interactions:
        rest["interaction"] = [{"code": code} for code in registry.system_interactions]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _STARTED,
        "publisher": "Serverless EHR project",
        "kind": "instance",
        "software": {"name": SOFTWARE_NAME, "version": ehr.__version__},
        "implementation": {"description": f"{SOFTWARE_NAME} FHIR R4 API", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [rest],
    }


def _resource(capability: ResourceCapability) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "type": capability.type,
        "interaction": [{"code": code} for code in capability.interactions],
        "versioning": capability.versioning,
        "conditionalCreate": capability.conditional_create,
        "conditionalUpdate": capability.conditional_update,
        "conditionalDelete": capability.conditional_delete,
    }
    if capability.search_params:
        resource["searchParam"] = [
            {"name": p.name, "type": p.type, **({"definition": p.definition} if p.definition else {})}
            for p in capability.search_params
        ]
    if capability.operations:
        resource["operation"] = [{"name": n, "definition": d} for n, d in capability.operations]
    return resource
