"""A small FHIR client over the in-process local API Gateway, and helpers the API tests share.

Requests go through ``LocalGateway.handle`` exactly as ``ehr local`` sends them: route match,
TOKEN authorizer, proxy event, the real ``fhir_api`` handler. Replies are parsed with decimals
as ``Decimal`` so that a test sees the digits the server wrote.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import simplejson

HOST = "127.0.0.1:8080"
ORIGIN = f"http://{HOST}"
SCOPE = "user/*.cruds"
FHIR_JSON = "application/fhir+json"
PATCH_JSON = "application/json-patch+json"
FORM = "application/x-www-form-urlencoded"

# External samples live beside the repository and are used as they are (STYLE.md 15).
SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def loads(data: bytes | str) -> Any:
    """JSON as a client reads it: numbers with a fraction or exponent as ``Decimal``."""
    if isinstance(data, bytes):
        data = data.decode("utf-8-sig")
    return json.loads(data, parse_float=Decimal)


def digits(value: Any) -> Any:
    """``value`` with every ``Decimal`` replaced by its text, so ``1.50`` and ``1.5`` differ."""
    if isinstance(value, Decimal):
        return ("decimal", str(value))
    if isinstance(value, dict):
        return {k: digits(v) for k, v in value.items()}
    if isinstance(value, list):
        return [digits(v) for v in value]
    return value


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    @property
    def json(self) -> Any:
        return loads(self.body) if self.body else None

    @property
    def issues(self) -> list[dict[str, Any]]:
        document = self.json
        assert document["resourceType"] == "OperationOutcome", document
        return list(document["issue"])

    @property
    def codes(self) -> set[str]:
        return {issue["code"] for issue in self.issues}

    @property
    def expressions(self) -> set[str]:
        return {e for issue in self.issues for e in issue.get("expression", [])}

    def __repr__(self) -> str:  # readable assertion failures
        return f"Reply({self.status}, {self.body[:600]!r})"


class FhirClient:
    """One tenant's FHIR base, reached through the local API Gateway with a bearer token."""

    def __init__(self, gateway: Any, tenant: str, token: str) -> None:
        self.gateway = gateway
        self.tenant = tenant
        self.token = token
        self.base_path = f"/tenants/{tenant}/fhir"
        self.base_url = ORIGIN + self.base_path

    # -- raw HTTP ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str = "",
        *,
        json_body: Any = None,
        body: bytes | None = None,
        params: Mapping[str, Any] | Iterable[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = FHIR_JSON,
    ) -> Reply:
        """``path`` is relative to the FHIR base (``Patient/1``), or absolute from the host."""
        url = path if path.startswith("/") else f"{self.base_path}/{path}".rstrip("/")
        if params:
            pairs = params.items() if isinstance(params, Mapping) else params
            url += ("&" if "?" in url else "?") + urlencode(list(pairs), doseq=True)
        all_headers = {"Host": HOST, "Authorization": f"Bearer {self.token}"}
        if json_body is not None:
            body = simplejson.dumps(json_body, use_decimal=True).encode("utf-8")
        if body is not None and content_type:
            all_headers["Content-Type"] = content_type
        all_headers.update(headers or {})
        result = self.gateway.handle(method, url, all_headers, body or b"")
        return Reply(result.status, result.headers, result.body)

    def get(self, path: str = "", **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str = "", **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Reply:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Reply:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Reply:
        return self.request("DELETE", path, **kwargs)

    def follow(self, url: str) -> Reply:
        """GET a link the server handed out (absolute URL on this host)."""
        assert url.startswith(ORIGIN + "/"), url
        return self.get(url[len(ORIGIN) :])

    # -- FHIR shortcuts ------------------------------------------------------------------------

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        reply = self.post(resource["resourceType"], json_body=resource)
        assert reply.status == 201, reply
        return reply.json

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        reply = self.get(f"{resource_type}/{resource_id}")
        assert reply.status == 200, reply
        return reply.json

    def search(self, resource_type: str, params: Any = None, **kwargs: Any) -> dict[str, Any]:
        reply = self.get(resource_type, params=params, **kwargs)
        assert reply.status == 200, reply
        bundle = reply.json
        assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "searchset")
        return bundle

    def search_ids(self, resource_type: str, params: Any = None) -> list[str]:
        """Ids of the matches of one page, in the server's order."""
        return match_ids(self.search(resource_type, params))

    def pages(self, first: Reply) -> list[dict[str, Any]]:
        """Every page of a paged Bundle, following next links until there is none."""
        assert first.status == 200, first
        pages = [first.json]
        while (url := next_link(pages[-1])) is not None:
            reply = self.follow(url)
            assert reply.status == 200, reply
            pages.append(reply.json)
            assert len(pages) < 100, "next links never end"
        return pages

    def transaction(self, entries: list[dict[str, Any]], kind: str = "transaction") -> Reply:
        return self.post(json_body={"resourceType": "Bundle", "type": kind, "entry": entries})


def match_ids(bundle: Mapping[str, Any]) -> list[str]:
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode", "match") == "match"
    ]


def next_link(bundle: Mapping[str, Any]) -> str | None:
    return next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)


def location_ref(location: str) -> str:
    """``Type/id`` of a Location header or ``response.location`` (``…/Type/id/_history/n``)."""
    path = location.split("/_history/", maxsplit=1)[0]
    return "/".join(path.rstrip("/").split("/")[-2:])


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def post_entry(resource: dict[str, Any], full_url: str | None = None, **request: Any) -> dict[str, Any]:
    """A transaction/batch entry that creates ``resource``."""
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def without_server_fields(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as a client sent it: no id, no meta.versionId/lastUpdated."""
    kept = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        kept["meta"] = meta
    return kept
