"""Platform discovery routes: health, OpenAPI, SMART configuration and the issuer's JWKS."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ehr import names
from ehr.api.app import Api, RequestContext
from ehr.api.http import HttpResponse
from ehr.api.openapi import openapi_document
from ehr.api.routes import JSON
from ehr.security.smart import smart_configuration
from ehr.settings import DiscoverySettings


def build_discovery_api(
    settings: DiscoverySettings,
    *,
    logger: logging.Logger | Any = None,
    observe: Callable[[str, int], None] | None = None,
) -> Api:
    api = Api(names.FN_DISCOVERY, logger=logger, observe=observe)

    def jwks_uri(ctx: RequestContext) -> str:
        return settings.jwks_url or f"{ctx.request.base_url}/.well-known/jwks.json"

    @api.operation("getHealth")
    def get_health(ctx: RequestContext) -> HttpResponse:
        return HttpResponse.json(200, {"status": "ok"}, content_type=JSON)

    @api.operation("getOpenApi")
    def get_openapi(ctx: RequestContext) -> HttpResponse:
        return HttpResponse.json(200, openapi_document(ctx.request.base_url), content_type=JSON)

    def smart(ctx: RequestContext) -> HttpResponse:
        document = smart_configuration(
            issuer=settings.issuer,
            jwks_uri=jwks_uri(ctx),
            token_endpoint=settings.token_endpoint,
            token_auth_methods=settings.token_endpoint_auth_methods,
        )
        return HttpResponse.json(200, document, content_type=JSON)

    api.operation("getSmartConfiguration")(smart)
    api.operation("getTenantSmartConfiguration")(smart)

    @api.operation("getJwks")
    def get_jwks(ctx: RequestContext) -> HttpResponse:
        if settings.jwks_json:
            return HttpResponse.json(
                200, json.loads(settings.jwks_json), content_type="application/jwk-set+json"
            )
        return HttpResponse(status=302, headers={"Location": jwks_uri(ctx)})

    return api
