"""The HL7 v2 endpoint on the request pipeline: ``POST /tenants/{tenant}/hl7v2``.

Authentication, the tenant check and the audit record are the pipeline's, as for every route;
the answer is always HL7 (ACK per message), except the pipeline's own refusals (401/403/404),
which come before any message is read and are OperationOutcomes like everywhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ehr import names
from ehr.api.app import Api, RequestContext
from ehr.api.fhir_api import fhir_base
from ehr.api.http import HttpResponse
from ehr.api.routes import HL7_ER7
from ehr.bootstrap import FhirServices
from ehr.hl7v2.inbound import Hl7v2Inbound
from ehr.security.scopes import AccessPolicy

ACCEPTED_MEDIA_TYPES = frozenset(
    {HL7_ER7, "application/hl7-v2", "text/plain", "application/octet-stream", ""}
)


def build_hl7v2_api(
    services: FhirServices,
    inbound: Hl7v2Inbound,
    *,
    logger: logging.Logger | Any = None,
    observe: Callable[[str, int], None] | None = None,
) -> Api:
    api = Api(
        names.FN_HL7V2_INBOUND,
        authenticate=services.authenticate,
        tenants=services.tenants,
        logger=logger,
        observe=observe,
        audit=services.audit,
    )

    @api.operation("postHl7v2Message")
    def post_message(ctx: RequestContext) -> HttpResponse:
        assert ctx.tenant is not None and ctx.identity is not None  # authenticated, tenant-scoped route
        media = (ctx.request.header("content-type") or "").split(";", 1)[0].strip().lower()
        if media not in ACCEPTED_MEDIA_TYPES:
            reply = inbound.unsupported_media(media)
        else:
            reply = inbound.receive(
                ctx.tenant.tenant_id,
                ctx.request.body,
                access=AccessPolicy(ctx.identity),
                base=fhir_base(ctx.request),
                sender_kind=ctx.tenant.kind,
            )
        ctx.audit.subtype = "hl7v2-message"
        ctx.audit.action = "C"
        ctx.audit.saw(reply.touched)
        ctx.audit.references += reply.references
        ctx.audit.resource_type = "Bundle"
        headers = {"Content-Type": f"{HL7_ER7}; charset=utf-8"}
        if reply.status == 503:
            headers["Retry-After"] = "5"
        return HttpResponse(status=reply.status, body=reply.body, headers=headers)

    return api
