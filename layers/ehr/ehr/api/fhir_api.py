"""The FHIR REST API's operations, registered on the pipeline. Transport-free: the Lambda
handler, the local emulator and tests all serve this same ``Api``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from email.utils import format_datetime
from typing import Any, Final
from urllib.parse import parse_qs, urlencode

from ehr import names
from ehr.api.app import Api, RequestContext, purpose_of_use
from ehr.api.http import HttpRequest, HttpResponse
from ehr.bootstrap import FhirServices
from ehr.documents.service import UPLOAD_URL_OPERATION, stored_attachment
from ehr.fhir import jsonio
from ehr.fhir.capability import capability_statement
from ehr.fhir.outcome import (
    Issue,
    OperationOutcomeError,
    invalid,
    not_supported,
    operation_outcome,
    too_large,
)
from ehr.fhir.searching import SharedCompartment
from ehr.fhir.service import HISTORY_DEFAULT_COUNT, HISTORY_MAX_COUNT, WriteResult, check_type
from ehr.fhir.validation import parse_json
from ehr.security.scopes import AccessPolicy, require
from ehr.sharing.consent import DEFAULT_PURPOSE
from ehr.store.ports import StoredResource

MAX_BODY_BYTES: Final = 6 * 1024 * 1024  # Lambda's synchronous payload limit
JSON_TYPES: Final = ("application/fhir+json", "application/json", "application/json+fhir")
PATCH_TYPES: Final = ("application/json-patch+json",)
FORM_TYPE: Final = "application/x-www-form-urlencoded"


def implemented_capabilities() -> Any:
    from ehr.fhir.capabilities import implemented

    return implemented()


def build_fhir_api(  # noqa: PLR0915 - one small nested function per FHIR interaction
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
        audit=services.audit,
    )
    fhir = services.fhir
    search = services.search

    @api.operation("getCapabilityStatement")
    def get_capability_statement(ctx: RequestContext) -> HttpResponse:
        statement = capability_statement(
            fhir_base(ctx.request),
            implemented_capabilities(),
            token_endpoint=services.settings.token_endpoint,
        )
        return HttpResponse.json(200, statement)

    @api.operation("read")
    def read(ctx: RequestContext) -> HttpResponse:
        resource_type, resource_id = type_and_id(ctx)
        ctx.audit.references.append(f"{resource_type}/{resource_id}")
        if resource_type == "Binary" and services.documents is not None:
            document = fhir.store.current(tenant(ctx), "DocumentReference", resource_id)
            if document is not None and stored_attachment(document.body) is not None:
                return document_content(ctx, resource_id)
        stored = fhir.read(tenant(ctx), resource_type, resource_id, access=access(ctx))
        ctx.audit.saw([stored])
        return resource_response(200, stored, ctx.request)

    @api.operation("vread")
    def vread(ctx: RequestContext) -> HttpResponse:
        resource_type, resource_id = type_and_id(ctx)
        ctx.audit.references.append(f"{resource_type}/{resource_id}")
        stored = fhir.vread(
            tenant(ctx),
            resource_type,
            resource_id,
            ctx.request.path_params.get("vid", ""),
            access=access(ctx),
        )
        ctx.audit.saw([stored])
        return resource_response(200, stored, ctx.request)

    @api.operation("create")
    def create(ctx: RequestContext) -> HttpResponse:
        resource_type = writable_type(ctx)
        resource = json_body(ctx.request)
        if_none_exist = ctx.request.header("if-none-exist")
        if if_none_exist is not None:
            existing = search.find_for_condition(
                tenant(ctx), resource_type, if_none_exist, header="If-None-Exist", access=access(ctx)
            )
            if existing is not None:
                ctx.audit.saw([existing])
                return write_response(WriteResult("unchanged", existing), ctx.request)
        result = fhir.create(tenant(ctx), resource_type, resource, access=access(ctx))
        ctx.audit.saw([result.stored])
        return write_response(result, ctx.request)

    @api.operation("update")
    def update(ctx: RequestContext) -> HttpResponse:
        resource_type, resource_id = writable_type(ctx), ctx.request.path_params.get("id", "")
        ctx.audit.references.append(f"{resource_type}/{resource_id}")
        result = fhir.update(
            tenant(ctx),
            resource_type,
            resource_id,
            json_body(ctx.request),
            if_match=ctx.request.header("if-match"),
            access=access(ctx),
        )
        ctx.audit.saw([result.stored])
        return write_response(result, ctx.request)

    @api.operation("conditionalUpdate")
    def conditional_update(ctx: RequestContext) -> HttpResponse:
        resource_type = writable_type(ctx)
        resource = json_body(ctx.request)
        bundles = services.bundles.bind(access(ctx))
        result = bundles.conditional_update(
            tenant(ctx),
            resource_type,
            query_string(ctx.request),
            resource,
            if_match=ctx.request.header("if-match"),
        )
        ctx.audit.saw([result.stored])
        ctx.audit.query = query_string(ctx.request)
        return write_response(result, ctx.request)

    @api.operation("patch")
    def patch(ctx: RequestContext) -> HttpResponse:
        content_type = media_type(ctx.request)
        if content_type not in PATCH_TYPES:
            raise not_supported(
                "PATCH takes a JSON Patch document (Content-Type: application/json-patch+json).", status=415
            )
        resource_type, resource_id = writable_type(ctx), ctx.request.path_params.get("id", "")
        ctx.audit.references.append(f"{resource_type}/{resource_id}")
        result = fhir.patch(
            tenant(ctx),
            resource_type,
            resource_id,
            json_patch(body_bytes(ctx.request)),
            if_match=ctx.request.header("if-match"),
            access=access(ctx),
        )
        ctx.audit.saw([result.stored])
        return write_response(result, ctx.request)

    @api.operation("delete")
    def delete(ctx: RequestContext) -> HttpResponse:
        resource_type, resource_id = writable_type(ctx), ctx.request.path_params.get("id", "")
        ctx.audit.references.append(f"{resource_type}/{resource_id}")
        fhir.delete(tenant(ctx), resource_type, resource_id, access=access(ctx))
        return HttpResponse(status=204)

    @api.operation("conditionalDelete")
    def conditional_delete(ctx: RequestContext) -> HttpResponse:
        bundles = services.bundles.bind(access(ctx))
        bundles.conditional_delete(tenant(ctx), writable_type(ctx), query_string(ctx.request))
        ctx.audit.saw(bundles.touched)
        ctx.audit.query = query_string(ctx.request)
        return HttpResponse(status=204)

    @api.operation("instanceHistory")
    def instance_history(ctx: RequestContext) -> HttpResponse:
        resource_type, resource_id = type_and_id(ctx)
        ctx.audit.references.append(f"{resource_type}/{resource_id}")
        return history_response(ctx, resource_type, resource_id)

    @api.operation("typeHistory")
    def type_history(ctx: RequestContext) -> HttpResponse:
        return history_response(ctx, path_type(ctx), None)

    def history_response(ctx: RequestContext, resource_type: str, resource_id: str | None) -> HttpResponse:
        if resource_type == "AuditEvent":
            raise not_supported("The audit trail is read by search: AuditEvent?patient=…&date=…")
        params = query_params(ctx.request)
        count = int_param(params, "_count", HISTORY_DEFAULT_COUNT, HISTORY_MAX_COUNT)
        since = params.get("_since", [None])[-1]
        if since is not None:
            since = search.normalize_instant(since, expression="_since")
        scope = f"history|{resource_type}|{resource_id}|{since}|{count}"
        cursor_token = params.get("_cursor", [None])[-1]
        cursor = (
            services.cursors.decode(cursor_token, tenant=tenant(ctx), scope=scope) if cursor_token else None
        )
        items, next_state = fhir.history(
            tenant(ctx),
            resource_type,
            resource_id,
            since=since,
            count=count,
            cursor=cursor,
            access=access(ctx),
        )
        ctx.audit.saw(items)
        base = fhir_base(ctx.request)
        self_url = f"{base}/{resource_type}{'/' + resource_id if resource_id else ''}/_history"
        links = [{"relation": "self", "url": self_url + keep_query(params)}]
        if next_state:
            token = services.cursors.encode(tenant=tenant(ctx), scope=scope, state=next_state)
            links.append({"relation": "next", "url": self_url + keep_query(params, _cursor=token)})
        bundle = {
            "resourceType": "Bundle",
            "type": "history",
            "link": links,
            "entry": [history_entry(base, stored) for stored in items],
        }
        return HttpResponse.json(200, bundle)

    @api.operation("searchType")
    def search_type(ctx: RequestContext) -> HttpResponse:
        return search_response(ctx, query_params(ctx.request))

    @api.operation("searchTypePost")
    def search_type_post(ctx: RequestContext) -> HttpResponse:
        path_type(ctx)
        if media_type(ctx.request) != FORM_TYPE:
            raise not_supported(
                "POST _search takes application/x-www-form-urlencoded parameters.", status=415
            )
        params = {k: list(v) for k, v in query_params(ctx.request).items()}
        body = body_bytes(ctx.request).decode("utf-8", "replace")
        for key, values in parse_qs(body, keep_blank_values=True).items():
            params.setdefault(key, []).extend(values)
        return search_response(ctx, params)

    def search_response(ctx: RequestContext, params: Mapping[str, list[str]]) -> HttpResponse:
        resource_type = path_type(ctx)
        ctx.audit.query = urlencode(
            [(k, v) for k, values in params.items() if k != "_cursor" for v in values]
        )
        if resource_type == "AuditEvent":
            return audit_search(ctx, params)
        page = search.search(
            tenant(ctx),
            resource_type,
            params,
            base=fhir_base(ctx.request),
            strict=prefer(ctx.request).get("handling") == "strict",
            access=access(ctx),
        )
        ctx.audit.saw(page.resources)
        return HttpResponse.json(200, page.bundle)

    def audit_search(ctx: RequestContext, params: Mapping[str, list[str]]) -> HttpResponse:
        from ehr.fhir.auditing import audit_bundle

        require(ctx.identity, "s", "AuditEvent")
        bundle, patients = audit_bundle(
            services.audit, services.cursors, tenant(ctx), params, base=fhir_base(ctx.request)
        )
        ctx.audit.references += [f"Patient/{p}" for p in patients]
        return HttpResponse.json(200, bundle)

    @api.operation("instanceOperation")
    def instance_operation(ctx: RequestContext) -> HttpResponse:
        resource_type, resource_id = type_and_id(ctx)
        operation = ctx.request.path_params.get("operation", "")
        if resource_type == "Patient" and operation == "$everything":
            ctx.audit.subtype = "everything"
            ctx.audit.references.append(f"Patient/{resource_id}")
            purpose = purpose_of_use(ctx.request) or DEFAULT_PURPOSE
            sharing = services.sharing

            def shared() -> list[SharedCompartment]:
                """Asked only once the patient exists and the caller may read it."""
                if sharing is None:
                    return []
                return sharing.shared_compartments(
                    tenant(ctx), resource_id, purpose=purpose, base_of=base_of(ctx.request)
                )

            page = search.everything(
                tenant(ctx),
                resource_id,
                query_params(ctx.request),
                base=fhir_base(ctx.request),
                access=access(ctx),
                shared=shared,
            )
            ctx.audit.saw(page.resources)
            if page.shared:
                disclose(ctx, page.shared, "everything", purpose)
            return HttpResponse.json(200, page.bundle)
        raise not_supported(f"{operation[:40]!r} is not an operation this server runs on {resource_type}.")

    def document_content(ctx: RequestContext, document_id: str) -> HttpResponse:
        """Binary/{id} of a stored document: authorised and audited here, the bytes from S3."""
        assert services.documents is not None
        reference = f"DocumentReference/{document_id}"
        ctx.audit.references.append(reference)
        stored = fhir.read(tenant(ctx), "DocumentReference", document_id, access=access(ctx))
        ctx.audit.saw([stored])
        url = services.documents.download_url(tenant(ctx), stored)
        return HttpResponse(status=302, headers={"Location": url})

    @api.operation("instanceOperationPost")
    def instance_operation_post(ctx: RequestContext) -> HttpResponse:
        resource_type, resource_id = type_and_id(ctx)
        operation = ctx.request.path_params.get("operation", "")
        if resource_type == "DocumentReference" and operation == UPLOAD_URL_OPERATION:
            if services.documents is None:
                raise not_supported("This deployment stores no documents.")
            ctx.audit.subtype = "upload-url"
            ctx.audit.action = "U"
            ctx.audit.references.append(f"DocumentReference/{resource_id}")
            require(ctx.identity, "u", "DocumentReference")
            stored = fhir.read(tenant(ctx), "DocumentReference", resource_id, access=access(ctx))
            access(ctx).check("u", stored)
            ctx.audit.saw([stored])
            return HttpResponse.json(200, services.documents.upload_parameters(tenant(ctx), stored))
        raise not_supported(f"{operation[:40]!r} is not an operation this server runs on {resource_type}.")

    @api.operation("typeOperationPost")
    def type_operation_post(ctx: RequestContext) -> HttpResponse:
        resource_type = path_type(ctx)
        operation = ctx.request.path_params.get("id", "")
        if resource_type == "Patient" and operation == "$match":
            ctx.audit.subtype = "$match"
            ctx.audit.action = "E"
            require(ctx.identity, "s", "Patient")
            if services.sharing is None:
                raise not_supported("This deployment has no master patient index.")
            purpose = purpose_of_use(ctx.request) or DEFAULT_PURPOSE
            bundle, own, shared = services.sharing.match(
                tenant(ctx),
                json_body(ctx.request),
                access=access(ctx),
                base_of=base_of(ctx.request),
                purpose=purpose,
            )
            ctx.audit.saw(own)
            if shared:
                disclose(ctx, shared, "$match", purpose)
            return HttpResponse.json(200, bundle)
        raise not_supported(f"{operation[:40]!r} is not an operation this server runs on {resource_type}.")

    def disclose(
        ctx: RequestContext,
        shared: Sequence[tuple[SharedCompartment, StoredResource]],
        subtype: str,
        purpose: str,
    ) -> None:
        """Audit another facility's records in its own trail (fail closed) and in this one."""
        assert services.sharing is not None
        from ehr.sharing.federation import Disclosure

        disclosure = Disclosure(
            receiver=tenant(ctx),
            identity=ctx.identity,
            purpose=purpose,
            subtype=subtype,
            request_id=ctx.request.request_id or None,
            source_ip=ctx.request.source_ip or None,
        )
        ctx.audit.references += services.sharing.record_disclosures(shared, disclosure)
        ctx.audit.purpose = purpose

    @api.operation("postBundle")
    def post_bundle(ctx: RequestContext) -> HttpResponse:
        bundle = json_body(ctx.request)
        if isinstance(bundle, dict) and bundle.get("type") == "batch":
            ctx.audit.subtype = "batch"
        bundles = services.bundles.bind(access(ctx))
        try:
            response = bundles.process(tenant(ctx), bundle, base=fhir_base(ctx.request))
        finally:
            ctx.audit.saw(bundles.touched)
        return HttpResponse.json(200, response)

    return api


# -- request helpers -------------------------------------------------------------------------------


def tenant(ctx: RequestContext) -> str:
    assert ctx.tenant is not None  # every FHIR route is tenant-scoped; the pipeline resolved it
    return ctx.tenant.tenant_id


def path_type(ctx: RequestContext) -> str:
    resource_type = ctx.request.path_params.get("type", "")
    check_type(resource_type)
    return resource_type


def type_and_id(ctx: RequestContext) -> tuple[str, str]:
    return path_type(ctx), ctx.request.path_params.get("id", "")


def writable_type(ctx: RequestContext) -> str:
    """The path's type, refusing AuditEvent: the trail cannot be written through the API."""
    resource_type = path_type(ctx)
    if resource_type == "AuditEvent":
        raise OperationOutcomeError(
            status=405,
            issues=(
                Issue(
                    code="not-supported",
                    diagnostics="AuditEvents are written by the server only; they cannot be "
                    "created, changed or deleted through the API.",
                ),
            ),
            headers={"Allow": "GET"},
        )
    return resource_type


def access(ctx: RequestContext) -> AccessPolicy:
    return AccessPolicy(ctx.identity)


def base_of(request: HttpRequest) -> Callable[[str], str]:
    """The FHIR base of any tenant on this server (another facility's, for shared records)."""
    return lambda other: f"{request.base_url}/tenants/{other}/fhir"


def fhir_base(request: HttpRequest) -> str:
    return f"{request.base_url}/tenants/{request.path_params.get('tenant', '')}/fhir"


def media_type(request: HttpRequest) -> str:
    return (request.header("content-type") or "").split(";")[0].strip().lower()


def body_bytes(request: HttpRequest) -> bytes:
    if len(request.body) > MAX_BODY_BYTES:
        raise too_large(f"The request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB.")
    if not request.body:
        raise invalid("The request needs a body.")
    return request.body


def json_body(request: HttpRequest) -> Any:
    content_type = media_type(request)
    if content_type and content_type not in JSON_TYPES:
        raise not_supported(
            f"Content-Type {content_type[:60]!r} is not accepted; send application/fhir+json.", status=415
        )
    return parse_json(body_bytes(request))


def json_patch(body: bytes) -> Any:
    """A JSON Patch document (an array, so not what ``parse_json`` accepts for resources)."""
    try:
        operations = jsonio.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid("The body is not valid JSON.") from exc
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise invalid("A JSON Patch document is an array of operation objects.")
    return operations


def query_params(request: HttpRequest) -> dict[str, list[str]]:
    return {k: list(v) for k, v in request.query.items()}


def query_string(request: HttpRequest) -> str:
    return urlencode([(k, v) for k, values in request.query.items() for v in values])


def int_param(params: Mapping[str, list[str]], name: str, default: int, maximum: int) -> int:
    values = params.get(name)
    if not values:
        return default
    text = values[-1]
    if not text.isdigit() or not 0 < int(text) <= maximum:
        raise invalid(f"{name} must be a whole number from 1 to {maximum}.", expression=[name])
    return int(text)


def keep_query(params: Mapping[str, list[str]], **replace: str) -> str:
    pairs = [(k, v) for k, values in params.items() if k not in replace and k != "_cursor" for v in values]
    pairs += list(replace.items())
    return ("?" + urlencode(pairs)) if pairs else ""


def prefer(request: HttpRequest) -> dict[str, str]:
    found = {}
    for part in (request.header("prefer") or "").split(";"):
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key:
                found[key.lower()] = value.strip().strip('"').lower()
    return found


# -- response helpers ------------------------------------------------------------------------------


def http_date(instant: str) -> str:
    return format_datetime(datetime.fromisoformat(instant.replace("Z", "+00:00")), usegmt=True)


def version_headers(stored: StoredResource) -> dict[str, str]:
    return {"ETag": f'W/"{stored.version}"', "Last-Modified": http_date(stored.last_updated)}


def resource_response(status: int, stored: StoredResource, request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(status, stored.body, headers=version_headers(stored))


def write_response(result: WriteResult, request: HttpRequest) -> HttpResponse:
    stored = result.stored
    if stored is None:
        return HttpResponse(status=204)
    headers = version_headers(stored)
    headers["Location"] = f"{fhir_base(request)}/{stored.resource_type}/{stored.id}/_history/{stored.version}"
    wanted = prefer(request).get("return", "representation")
    if wanted == "minimal":
        return HttpResponse(status=result.status, headers=headers)
    if wanted == "operationoutcome":
        message = {
            "created": "Created",
            "updated": "Updated",
            "unchanged": "A matching resource already exists",
        }
        outcome = operation_outcome(
            [
                Issue(
                    code="informational",
                    severity="information",
                    diagnostics=f"{message.get(result.outcome, 'Done')}: {stored.resource_type}/{stored.id}",
                )
            ]
        )
        return HttpResponse.json(result.status, outcome, headers=headers)
    return HttpResponse.json(result.status, stored.body, headers=headers)


def history_entry(base: str, stored: StoredResource) -> dict[str, Any]:
    url = f"{stored.resource_type}/{stored.id}"
    method = {"create": "POST", "update": "PUT", "delete": "DELETE"}[stored.operation]
    entry: dict[str, Any] = {
        "fullUrl": f"{base}/{url}",
        "request": {"method": method, "url": stored.resource_type if method == "POST" else url},
        "response": {
            "status": {"create": "201 Created", "update": "200 OK", "delete": "204 No Content"}[
                stored.operation
            ],
            "etag": f'W/"{stored.version}"',
            "lastModified": stored.last_updated,
        },
    }
    if stored.body is not None:
        entry["resource"] = stored.body
    return entry


def raise_outcome(status: int, code: str, message: str) -> None:
    raise OperationOutcomeError(status=status, issues=(Issue(code=code, diagnostics=message),))
