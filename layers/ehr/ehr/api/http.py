"""One request shape in, one response shape out, and the API Gateway (REST v1) adapters."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ehr.api.routes import FHIR_JSON
from ehr.fhir import jsonio


@dataclass(frozen=True)
class HttpRequest:
    """A transport-independent HTTP request as the core sees it."""

    method: str
    resource: str  # the route template that matched, e.g. /tenants/{tenant}/fhir/metadata
    path: str  # the concrete path, without any stage prefix
    path_params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    base_url: str = ""  # scheme://host[/stage], where the API is served
    request_id: str = ""
    source_ip: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @classmethod
    def from_apigw_event(cls, event: Mapping[str, Any]) -> HttpRequest:
        """Adapt an API Gateway REST (v1) Lambda proxy event."""
        headers = {k.lower(): v for k, v in (event.get("headers") or {}).items() if v is not None}
        multi_query = event.get("multiValueQueryStringParameters") or {}
        single_query = event.get("queryStringParameters") or {}
        query: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in multi_query.items() if v is not None}
        for key, value in single_query.items():
            query.setdefault(key, (value,))
        raw = event.get("body") or ""
        body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode("utf-8")
        context = event.get("requestContext") or {}
        path = event.get("path") or "/"
        return cls(
            method=(event.get("httpMethod") or "GET").upper(),
            resource=event.get("resource") or path,
            path=path,
            path_params=dict(event.get("pathParameters") or {}),
            query=query,
            headers=headers,
            body=body,
            base_url=_base_url(headers, context, path),
            request_id=str(context.get("requestId") or ""),
            source_ip=str((context.get("identity") or {}).get("sourceIp") or ""),
        )


def _base_url(headers: Mapping[str, str], context: Mapping[str, Any], path: str) -> str:
    """Where the client reached the API: scheme, host and any stage prefix before ``path``."""
    host = headers.get("host") or context.get("domainName") or "localhost"
    scheme = headers.get("x-forwarded-proto") or "https"
    full_path = str(context.get("path") or path)
    prefix = full_path[: len(full_path) - len(path)] if full_path.endswith(path) else ""
    return f"{scheme}://{host}{prefix.rstrip('/')}"


@dataclass
class HttpResponse:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(
        cls,
        status: int,
        document: Any,
        *,
        content_type: str = FHIR_JSON,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        all_headers = {"Content-Type": f"{content_type}; charset=utf-8", **(headers or {})}
        return cls(status=status, body=jsonio.dumps(document), headers=all_headers)

    def to_apigw(self) -> dict[str, Any]:
        return {
            "statusCode": self.status,
            "headers": dict(self.headers),
            "body": self.body,
            "isBase64Encoded": False,
        }
