"""The FHIR REST API's operations, registered on the pipeline. Transport-free: the Lambda
handler, the local emulator and tests all serve this same ``Api``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ehr import names
from ehr.api.app import Api, RequestContext
from ehr.api.http import HttpResponse
from ehr.bootstrap import FhirServices
from ehr.fhir.capability import CapabilityRegistry, capability_statement


def implemented_capabilities() -> CapabilityRegistry:
    """Everything this server implements for FHIR clients (the foundation: only `metadata`)."""
    return CapabilityRegistry()


def build_fhir_api(
    services: FhirServices,
    *,
    logger: logging.Logger | Any = None,
    observe: Callable[[str, int], None] | None = None,
) -> Api:
    api = Api(
        names.FN_FHIR_API,
        authenticate=services.authenticate,
        tenants=services.tenants,
        logger=logger,
        observe=observe,
    )
    registry = implemented_capabilities()

    @api.operation("getCapabilityStatement")
    def get_capability_statement(ctx: RequestContext) -> HttpResponse:
        base = f"{ctx.request.base_url}/tenants/{ctx.request.path_params['tenant']}/fhir"
        statement = capability_statement(base, registry, token_endpoint=services.settings.token_endpoint)
        return HttpResponse.json(200, statement)

    return api
