"""Bundle rules: R4's invariants for every Bundle, and what a batch/transaction sent to the base needs.

:data:`CHECKS` holds the invariants any Bundle must keep (bdl-1 .. bdl-12 and the fullUrl rules),
run by the walk wherever a Bundle appears. :func:`submission_issues` adds the rules for a Bundle
POSTed to the server base: it must be a batch or a transaction, every entry's request must be
something the server can carry out, and a transaction's ``urn:uuid:`` references must resolve to an
entry of the same Bundle.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from ehr.fhir.validation.issues import Issues, show
from ehr.fhir.validation.scope import Check, Scope

SUBMITTABLE_TYPES: Final = ("batch", "transaction")
BUNDLE_TYPES: Final = frozenset(
    {
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
    }
)
NEEDS_REQUEST: Final = frozenset({"batch", "transaction", "history"})
NEEDS_RESPONSE: Final = frozenset({"batch-response", "transaction-response", "history"})
NEEDS_RESOURCE: Final = frozenset({"POST", "PUT", "PATCH"})
PATCH_BODIES: Final = frozenset({"Binary", "Parameters"})
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_UUID_URN: Final = re.compile(
    r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_OID_URN: Final = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _entries(bundle: Mapping[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    entries = bundle.get("entry")
    if isinstance(entries, list):
        for i, entry in enumerate(entries):
            if isinstance(entry, dict):
                yield i, entry


def _resource(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    resource = entry.get("resource")
    return resource if isinstance(resource, dict) else None


def _fail(issues: Issues, loc: str, key: str, text: str) -> None:
    issues.add("invariant", loc, f"{loc}: {text} ({key}).")


def bundle_invariants(issues: Issues, bundle: dict[str, Any], loc: str, scope: Scope) -> None:
    kind = bundle.get("type")
    if "total" in bundle and kind not in ("searchset", "history"):
        _fail(issues, f"{loc}.total", "bdl-1", "total is only for searchset and history Bundles")
    seen: dict[tuple[str, str | None], int] = {}
    for i, entry in _entries(bundle):
        where = f"{loc}.entry[{i}]"
        if "search" in entry and kind != "searchset":
            _fail(issues, f"{where}.search", "bdl-2", "entry.search is only for searchset Bundles")
        # an unknown type is reported by its binding, not entry by entry
        if isinstance(kind, str) and kind in BUNDLE_TYPES:
            if ("request" in entry) != (kind in NEEDS_REQUEST):
                text = "is required in" if kind in NEEDS_REQUEST else "is not allowed in"
                _fail(issues, f"{where}.request", "bdl-3", f"entry.request {text} a {kind} Bundle")
            if ("response" in entry) != (kind in NEEDS_RESPONSE):
                text = "is required in" if kind in NEEDS_RESPONSE else "is not allowed in"
                _fail(issues, f"{where}.response", "bdl-4", f"entry.response {text} a {kind} Bundle")
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and kind != "history":
            resource = _resource(entry) or {}
            meta = resource.get("meta")
            version = meta.get("versionId") if isinstance(meta, dict) else None
            first = seen.setdefault((full_url, version if isinstance(version, str) else None), i)
            if first != i:
                _fail(
                    issues,
                    f"{where}.fullUrl",
                    "bdl-7",
                    f"the fullUrl {show(full_url)} is already used by entry[{first}]; fullUrls must "
                    "be unique unless the entries are different versions",
                )
    if kind == "document":
        identifier = bundle.get("identifier")
        if not (isinstance(identifier, dict) and "system" in identifier and "value" in identifier):
            _fail(issues, loc, "bdl-9", "a document needs an identifier with a system and a value")
        if "timestamp" not in bundle:
            _fail(issues, loc, "bdl-10", "a document needs a timestamp")
    first_types = {"document": ("Composition", "bdl-11"), "message": ("MessageHeader", "bdl-12")}
    if isinstance(kind, str) and kind in first_types:
        expected, key = first_types[kind]
        first_entry = next(_entries(bundle), (0, {}))[1]
        if (_resource(first_entry) or {}).get("resourceType") != expected:
            _fail(issues, loc, key, f"the first entry of a {kind} must be a {expected}")


def entry_invariants(issues: Issues, entry: dict[str, Any], loc: str, scope: Scope) -> None:
    if not any(k in entry for k in ("resource", "request", "response")):
        _fail(issues, loc, "bdl-5", "an entry needs a resource, a request or a response")
    full_url = entry.get("fullUrl")
    if not isinstance(full_url, str) or not full_url:
        return
    where = f"{loc}.fullUrl"
    if "/_history/" in full_url:
        _fail(issues, where, "bdl-8", "the fullUrl cannot be a version-specific URL")
    if full_url.lower().startswith("urn:uuid:"):
        if not _UUID_URN.fullmatch(full_url):
            issues.add("value", where, f"{where}: {show(full_url)} is not urn:uuid: followed by a UUID.")
        return
    if full_url.lower().startswith("urn:oid:"):
        if not _OID_URN.fullmatch(full_url):
            issues.add("value", where, f"{where}: {show(full_url)} is not urn:oid: followed by an OID.")
        return
    if not _SCHEME.match(full_url):
        issues.add(
            "value",
            where,
            f"{where}: the fullUrl must be an absolute URL or a urn:uuid:, not {show(full_url)}.",
        )
        return
    resource = _resource(entry)
    if resource is None:
        return
    resource_type, resource_id = resource.get("resourceType"), resource.get("id")
    if (
        isinstance(resource_type, str)
        and isinstance(resource_id, str)
        and not full_url.split("?", 1)[0].endswith(f"/{resource_type}/{resource_id}")
    ):
        issues.add(
            "invalid",
            where,
            f"{where}: {show(full_url)} disagrees with the resource's type and id "
            f"({resource_type}/{resource_id}); it must end with them.",
        )


CHECKS: Final[Mapping[str, tuple[Check, ...]]] = {
    "Bundle": (bundle_invariants,),
    "Bundle.entry": (entry_invariants,),
}


# --- submission to the server base ----------------------------------------------------------------


def _references(value: object, loc: str) -> Iterator[tuple[str, str]]:
    """(reference, where) for every Reference.reference string under ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item, f"{loc}.reference"
            elif isinstance(item, (dict, list)):
                yield from _references(item, f"{loc}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _references(item, f"{loc}[{i}]")


def _request_target(url: str) -> tuple[str, str | None] | None:
    """(type, id or None) of a relative request URL ``Type``, ``Type/id`` or ``Type?query``."""
    if _SCHEME.match(url):
        return None
    path = url.lstrip("/").split("?", 1)[0]
    parts = path.split("/")
    if not parts[0]:
        return None
    if len(parts) == 1:
        return parts[0], None
    if len(parts) == 2 and not parts[1].startswith("$"):
        return parts[0], parts[1]
    return parts[0], "$"  # an operation or a deeper path: no id to compare


def _check_request(issues: Issues, entry: dict[str, Any], where: str, known_types: frozenset[str]) -> None:
    request = entry.get("request")
    if not isinstance(request, dict):
        return  # bdl-3 and the walk report it
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or not isinstance(url, str) or not url:
        return  # the walk reports missing or malformed method/url
    resource = _resource(entry)
    if method in NEEDS_RESOURCE and resource is None:
        issues.add("required", f"{where}.resource", f"{where}.resource: a {method} entry needs a resource.")
        return
    target = _request_target(url)
    if target is None:
        return
    target_type, target_id = target
    if target_type.startswith("$"):
        return  # a system-level operation
    if target_type not in known_types:
        issues.add(
            "invalid",
            f"{where}.request.url",
            f"{where}.request.url: {show(target_type)} is not a resource type this server knows.",
        )
        return
    if resource is None or target_id == "$":
        return
    resource_type = resource.get("resourceType")
    if method == "PATCH":
        if not isinstance(resource_type, str) or resource_type not in PATCH_BODIES:
            issues.add(
                "invalid",
                f"{where}.resource",
                f"{where}.resource: a PATCH entry carries its patch as a Binary (JSON Patch) or "
                f"Parameters (FHIRPath Patch), not a {show(resource_type)}.",
            )
        return
    if method not in ("POST", "PUT"):
        return
    if method == "POST" and target_id is not None:
        issues.add(
            "invalid",
            f"{where}.request.url",
            f"{where}.request.url: a create (POST) goes to the resource type ({show(target_type)}), "
            f"not to {show(url)}.",
        )
        return
    if isinstance(resource_type, str) and resource_type != target_type:
        issues.add(
            "invalid",
            f"{where}.resource",
            f"{where}.resource: the resource is a {show(resource_type)} but the request URL is for "
            f"{show(target_type)}.",
        )
        return
    if method == "PUT" and target_id is not None:
        resource_id = resource.get("id")
        if not _ID.fullmatch(target_id):
            issues.add(
                "value", f"{where}.request.url", f"{where}.request.url: {show(target_id)} is not a valid id."
            )
        elif resource_id is None:
            issues.add(
                "required",
                f"{where}.resource.id",
                f"{where}.resource.id: an update (PUT {show(url)}) needs the resource's id in the body.",
            )
        elif resource_id != target_id:
            issues.add(
                "invalid",
                f"{where}.resource.id",
                f"{where}.resource.id: {show(resource_id)} does not match the id in the request URL "
                f"({show(target_id)}).",
            )


def submission_issues(bundle: dict[str, Any], issues: Issues, known_types: frozenset[str]) -> None:
    """The rules for a Bundle submitted to the server base (``POST [base]``)."""
    kind = bundle.get("type")
    if isinstance(kind, str) and kind not in SUBMITTABLE_TYPES:
        issues.add(
            "invalid",
            "Bundle.type",
            f"Bundle.type: only batch and transaction Bundles can be submitted to the server base, "
            f"not {show(kind)}.",
        )
        return
    full_urls: dict[str, tuple[int, object]] = {}
    for i, entry in _entries(bundle):
        where = f"Bundle.entry[{i}]"
        _check_request(issues, entry, where, known_types)
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            meta = (_resource(entry) or {}).get("meta")
            version = meta.get("versionId") if isinstance(meta, dict) else None
            first, first_version = full_urls.setdefault(full_url, (i, version))
            # Same fullUrl and version: bdl-7 has said so already.
            if first != i and first_version != version:
                issues.add(
                    "invalid",
                    f"{where}.fullUrl",
                    f"{where}.fullUrl: {show(full_url)} is already used by entry[{first}]; each entry of "
                    f"a {kind} needs its own fullUrl (bdl-7).",
                )
    if kind != "transaction":
        return
    for i, entry in _entries(bundle):
        for target, where in _references(entry.get("resource"), f"Bundle.entry[{i}].resource"):
            if target.startswith("urn:uuid:") and target not in full_urls:
                issues.add(
                    "invalid",
                    where,
                    f"{where}: {show(target)} is not the fullUrl of any entry in this transaction.",
                )
