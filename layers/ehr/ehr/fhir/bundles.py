"""Batch and transaction Bundles, and the conditional interactions they share with the REST API.

A transaction is resolved completely before anything is written — ids assigned, conditional
creates/updates/deletes/references resolved, ``urn:uuid`` references rewritten, every resource
validated — and then committed as one atomic store commit (staged when large), so it lands
whole or not at all. A batch runs each entry on its own and reports each entry's outcome.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from ehr.fhir import jsonio
from ehr.fhir.outcome import Issue, OperationOutcomeError, invalid, not_supported, precondition_failed
from ehr.fhir.service import FhirService, WriteResult, check_type, parse_version, stored_from_write
from ehr.fhir.validation import validate_bundle, validate_resource
from ehr.security.scopes import AccessPolicy, require
from ehr.store.ports import StoredResource, Write

if TYPE_CHECKING:
    from ehr.fhir.searching import SearchEngine

METHOD_ORDER: Final = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT: Final = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    resource: dict[str, Any] | None
    request: Mapping[str, Any]
    full_url: str | None
    target: tuple[str, str] | None = None  # (type, id) the entry writes or reads
    current: StoredResource | None = None
    skip_write: bool = False  # conditional create matched an existing resource
    outcome_status: int = 200
    write: Write | None = None
    response: dict[str, Any] = field(default_factory=dict)


class BundleProcessor:
    def __init__(
        self, fhir: FhirService, search: SearchEngine, *, access: AccessPolicy | None = None
    ) -> None:
        self.fhir = fhir
        self.search = search
        self.access = access
        self.touched: list[StoredResource] = []  # what the request read or wrote, for the audit trail

    def bind(self, access: AccessPolicy | None) -> BundleProcessor:
        """A processor for one request: its scopes checked on every entry, what it touched kept."""
        return BundleProcessor(self.fhir, self.search, access=access)

    # -- conditional interactions (REST and bundles) ---------------------------------------------

    def conditional_update(
        self,
        tenant: str,
        resource_type: str,
        query: str,
        resource: dict[str, Any],
        *,
        if_match: str | None = None,
    ) -> WriteResult:
        if not query:
            raise invalid("A conditional update needs search parameters in the URL.")
        match = self.search.find_for_condition(tenant, resource_type, query, header="url", access=self.access)
        if match is None:
            resource_id = resource.get("id") if isinstance(resource.get("id"), str) else None
            if resource_id:
                return self.fhir.update(
                    tenant, resource_type, resource_id, resource, if_match=if_match, access=self.access
                )
            return self.fhir.create(tenant, resource_type, resource, access=self.access)
        if "id" in resource and resource["id"] != match.id:
            raise invalid(
                "The resource id does not match the resource the condition found.",
                expression=[f"{resource_type}.id"],
            )
        return self.fhir.update(
            tenant,
            resource_type,
            match.id,
            {**resource, "id": match.id},
            if_match=if_match,
            access=self.access,
        )

    def conditional_delete(self, tenant: str, resource_type: str, query: str) -> None:
        if not query:
            raise invalid("A conditional delete needs search parameters in the URL.")
        match = self.search.find_for_condition(tenant, resource_type, query, header="url", access=self.access)
        if match is not None:
            self.fhir.delete(tenant, resource_type, match.id, access=self.access)

    # -- bundles -------------------------------------------------------------------------------

    def process(self, tenant: str, bundle: Any, *, base: str) -> dict[str, Any]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise invalid(
                "POST to the FHIR base takes a Bundle of type batch or transaction.", expression=["Bundle"]
            )
        if bundle.get("type") == "batch":
            return self._batch(tenant, bundle, base, _entry_failures(bundle))
        validate_bundle(bundle)
        return self._transaction(tenant, bundle, base)

    def _entries(self, bundle: Mapping[str, Any]) -> list[_Entry]:
        entries = []
        for n, raw in enumerate(bundle.get("entry") or []):
            request = raw.get("request") or {}
            entries.append(
                _Entry(
                    index=n,
                    method=str(request.get("method", "")).upper(),
                    url=str(request.get("url", "")),
                    resource=copy.deepcopy(raw.get("resource")),
                    request=request,
                    full_url=raw.get("fullUrl"),
                )
            )
        return entries

    def _transaction(self, tenant: str, bundle: Mapping[str, Any], base: str) -> dict[str, Any]:
        entries = self._entries(bundle)
        id_map: dict[str, str] = {}
        now = self.fhir.clock()
        for entry in sorted(entries, key=lambda e: METHOD_ORDER.get(e.method, 9)):
            with _at(entry):
                self._resolve(tenant, entry, id_map, base)
        targets: dict[tuple[str, str], int] = {}
        for entry in entries:
            if entry.method in ("GET", "HEAD") or entry.skip_write or entry.target is None:
                continue
            if entry.target in targets:
                raise invalid(
                    f"Entries {targets[entry.target]} and {entry.index} both change "
                    f"{entry.target[0]}/{entry.target[1]}.",
                    expression=[f"Bundle.entry[{entry.index}]"],
                )
            targets[entry.target] = entry.index
        writes: list[Write] = []
        for entry in entries:
            if entry.method in ("GET", "HEAD") or entry.skip_write or entry.target is None:
                continue
            with _at(entry):
                if entry.resource is not None:
                    # validate_bundle validated every entry's resource; rewriting references
                    # changes only reference strings, so what is left is the type the url names.
                    entry.resource = self._rewrite_references(tenant, entry.resource, id_map)
                    if entry.resource.get("resourceType") != entry.target[0]:
                        raise invalid(
                            f"The entry's resource is not a {entry.target[0]}.",
                            expression=["resource.resourceType"],
                        )
                entry.write = self.fhir.prepare(
                    tenant,
                    entry.target[0],
                    entry.target[1],
                    entry.resource,
                    entry.current,
                    delete=entry.method == "DELETE",
                    last_updated=now,
                    access=self.access,
                )
                writes.append(entry.write)
        # GET entries run after the writes (they see them), so check now that each can succeed:
        # a transaction that would answer an error must not have written anything.
        written = {e.target for e in entries if e.target is not None and not e.skip_write}
        for entry in entries:
            if entry.method in ("GET", "HEAD"):
                with _at(entry):
                    self._check_read_entry(tenant, entry, written)
        self.fhir.commit(tenant, writes, precondition=any(e.request.get("ifMatch") for e in entries))
        self.touched += [stored_from_write(w) for w in writes]
        self.touched += [w.previous for w in writes if w.deleted and w.previous is not None]
        response_entries = []
        for entry in entries:
            if entry.method in ("GET", "HEAD"):
                response_entries.append(self._read_entry(tenant, entry, base))
            else:
                response_entries.append(self._write_entry(entry, base))
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": response_entries}

    def _resolve(self, tenant: str, entry: _Entry, id_map: dict[str, str], base: str) -> None:
        """Decide what the entry writes (target, current version, outcome) before anything is written."""
        if entry.method in ("GET", "HEAD"):
            return
        path, _, query = entry.url.partition("?")
        parts = [p for p in path.split("/") if p]
        if entry.method == "POST":
            self._resolve_create(tenant, entry, parts, query)
        elif entry.method in ("PUT", "PATCH", "DELETE"):
            self._resolve_change(tenant, entry, parts, query)
        else:
            raise not_supported(f"Bundle entries cannot use {entry.method!r}.", status=400)
        if entry.full_url and entry.target is not None:
            id_map[entry.full_url] = f"{entry.target[0]}/{entry.target[1]}"
            if entry.full_url.startswith(base + "/"):
                id_map[entry.full_url[len(base) + 1 :]] = id_map[entry.full_url]

    def _resolve_create(self, tenant: str, entry: _Entry, parts: list[str], query: str) -> None:
        if len(parts) != 1 or query:
            raise invalid("A POST entry's url is the resource type.", expression=["request.url"])
        resource_type = parts[0]
        check_type(resource_type)
        if_none_exist = entry.request.get("ifNoneExist")
        existing = (
            self.search.find_for_condition(
                tenant, resource_type, if_none_exist, header="ifNoneExist", access=self.access
            )
            if if_none_exist
            else None
        )
        if existing is not None:
            entry.target, entry.skip_write, entry.current = (resource_type, existing.id), True, existing
        else:
            entry.target, entry.outcome_status = (resource_type, self.fhir.new_id()), 201

    def _resolve_change(self, tenant: str, entry: _Entry, parts: list[str], query: str) -> None:
        if not parts:
            raise invalid("The entry's url names no resource.", expression=["request.url"])
        resource_type = parts[0]
        check_type(resource_type)
        if query and len(parts) == 1:
            if not self._resolve_condition(tenant, entry, resource_type, query):
                return
        elif len(parts) == 2 and not query:
            entry.target = (resource_type, parts[1])
            entry.current = self.fhir.store.current(tenant, resource_type, parts[1])
        else:
            raise invalid(
                f"{entry.method} entries take Type/id or Type?search in url.", expression=["request.url"]
            )
        self._check_entry_version(entry)
        if entry.method == "DELETE":
            entry.skip_write = entry.current is None or entry.current.deleted
            entry.outcome_status = 204
            return
        assert entry.target is not None
        if entry.method == "PATCH":
            entry.resource = self._apply_patch(entry)
        elif entry.resource is not None:
            body_id = entry.resource.get("id")
            if body_id is not None and body_id != entry.target[1]:
                raise invalid(
                    "The resource id differs from the id in the entry's url.", expression=["resource.id"]
                )
            entry.resource = {**entry.resource, "id": entry.target[1]}
        entry.outcome_status = 201 if entry.current is None or entry.current.deleted else 200

    def _resolve_condition(self, tenant: str, entry: _Entry, resource_type: str, query: str) -> bool:
        """Conditional PUT/PATCH/DELETE: find the target; False when there is nothing to do."""
        match = self.search.find_for_condition(
            tenant, resource_type, query, header="request.url", access=self.access
        )
        if match is not None:
            entry.target, entry.current = (resource_type, match.id), match
            return True
        if entry.method == "DELETE":
            entry.skip_write, entry.outcome_status = True, 204
            return False
        if entry.method == "PATCH":
            raise OperationOutcomeError(
                status=404,
                issues=(Issue(code="not-found", diagnostics="No resource matches the conditional patch."),),
            )
        body_id = (entry.resource or {}).get("id")
        entry.target = (resource_type, body_id if isinstance(body_id, str) else self.fhir.new_id())
        return True

    def _check_entry_version(self, entry: _Entry) -> None:
        if_match = entry.request.get("ifMatch")
        if if_match is None:
            return
        wanted = parse_version(str(if_match), expression="request.ifMatch")
        if entry.current is None or entry.current.deleted or entry.current.version != wanted:
            raise precondition_failed(f"ifMatch asked for version {wanted}, which is not current.")

    def _apply_patch(self, entry: _Entry) -> dict[str, Any]:
        import jsonpatch

        patch_resource = entry.resource or {}
        if (
            patch_resource.get("resourceType") != "Binary"
            or patch_resource.get("contentType") != "application/json-patch+json"
        ):
            raise not_supported(
                "PATCH entries take a Binary with contentType application/json-patch+json.", status=400
            )
        if entry.current is None or entry.current.deleted or entry.current.body is None:
            raise OperationOutcomeError(
                status=404, issues=(Issue(code="not-found", diagnostics="Nothing to patch."),)
            )
        try:
            operations = jsonio.loads(base64.b64decode(patch_resource.get("data", ""), validate=True))
            patched = jsonpatch.apply_patch(copy.deepcopy(entry.current.body), operations)
        except (ValueError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
            raise OperationOutcomeError(
                status=422,
                issues=(Issue(code="processing", diagnostics=f"The patch cannot be applied: {exc}"),),
            ) from exc
        if not isinstance(patched, dict) or patched.get("id") != entry.current.id:
            raise OperationOutcomeError(
                status=422,
                issues=(Issue(code="processing", diagnostics="A patch may not change the resource's id."),),
            )
        return patched

    def _rewrite_references(
        self, tenant: str, resource: dict[str, Any], id_map: Mapping[str, str]
    ) -> dict[str, Any]:
        for holder in _reference_holders(resource):
            reference = holder["reference"]
            if reference in id_map:
                holder["reference"] = id_map[reference]
            elif reference.startswith("urn:uuid:") or reference.startswith("urn:oid:"):
                raise invalid(
                    f"The reference {reference!r} names no entry of this transaction.",
                    expression=["reference"],
                )
            elif "?" in reference and not reference.startswith(("http:", "https:")):
                resource_type, _, query = reference.partition("?")
                check_type(resource_type)
                match = self.search.find_for_condition(
                    tenant, resource_type, query, header="reference", access=self.access
                )
                if match is None:
                    raise precondition_failed(f"No resource matches the conditional reference {reference!r}.")
                holder["reference"] = f"{resource_type}/{match.id}"
        return resource

    def _write_entry(self, entry: _Entry, base: str) -> dict[str, Any]:
        response: dict[str, Any] = {
            "status": STATUS_TEXT.get(entry.outcome_status, str(entry.outcome_status))
        }
        stored = entry.write
        if stored is not None and not stored.deleted:
            response["location"] = f"{stored.resource_type}/{stored.id}/_history/{stored.version}"
            response["etag"] = f'W/"{stored.version}"'
            response["lastModified"] = stored.last_updated
        elif entry.skip_write and entry.current is not None and not entry.current.deleted:
            response["location"] = (
                f"{entry.current.resource_type}/{entry.current.id}/_history/{entry.current.version}"
            )
            response["etag"] = f'W/"{entry.current.version}"'
        result: dict[str, Any] = {"response": response}
        if entry.full_url:
            result["fullUrl"] = entry.full_url
        return result

    def _check_read_entry(self, tenant: str, entry: _Entry, written: set[tuple[str, str]]) -> None:
        path, _, query = entry.url.partition("?")
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise invalid("GET entries name a resource type.", expression=["request.url"])
        check_type(parts[0])
        if len(parts) == 1:
            if self.access is not None:
                require(self.access.identity, "s", parts[0])
            self.search.find_check(parts[0], query)
        elif len(parts) in (2, 4) and (parts[0], parts[1]) not in written:
            if len(parts) == 4 and parts[2] == "_history":
                self.fhir.vread(tenant, parts[0], parts[1], parts[3], access=self.access)
            elif len(parts) == 2:
                self.fhir.read(tenant, parts[0], parts[1], access=self.access)
            else:
                raise invalid(
                    "GET entries take Type, Type/id, Type/id/_history/vid or Type?search.",
                    expression=["request.url"],
                )

    def _read_entry(self, tenant: str, entry: _Entry, base: str) -> dict[str, Any]:
        path, _, query = entry.url.partition("?")
        parts = [p for p in path.split("/") if p]
        if len(parts) == 1:
            check_type(parts[0])
            bundle = self.search.search(
                tenant,
                parts[0],
                {k: v for k, v in parse_qs(query).items()},
                base=base,
                strict=False,
                access=self.access,
            )
            self.touched += bundle.resources
            return {"resource": bundle.bundle, "response": {"status": "200 OK"}}
        if len(parts) == 2:
            stored = self.fhir.read(tenant, parts[0], parts[1], access=self.access)
        elif len(parts) == 4 and parts[2] == "_history":
            stored = self.fhir.vread(tenant, parts[0], parts[1], parts[3], access=self.access)
        else:
            raise invalid(
                "GET entries take Type, Type/id, Type/id/_history/vid or Type?search.",
                expression=["request.url"],
            )
        self.touched.append(stored)
        return {
            "resource": stored.body,
            "response": {
                "status": "200 OK",
                "etag": f'W/"{stored.version}"',
                "lastModified": stored.last_updated,
            },
        }

    def _batch(
        self, tenant: str, bundle: Mapping[str, Any], base: str, failures: Mapping[int, OperationOutcomeError]
    ) -> dict[str, Any]:
        results = []
        for entry in self._entries(bundle):
            failure = failures.get(entry.index)
            if failure is not None:
                results.append({"response": {"status": str(failure.status), "outcome": failure.to_fhir()}})
                continue
            try:
                results.append(self._batch_entry(tenant, entry, base))
            except OperationOutcomeError as error:
                results.append({"response": {"status": str(error.status), "outcome": error.to_fhir()}})
        return {"resourceType": "Bundle", "type": "batch-response", "entry": results}

    def _batch_entry(self, tenant: str, entry: _Entry, base: str) -> dict[str, Any]:
        if entry.method in ("GET", "HEAD"):
            return self._read_entry(tenant, entry, base)
        path, _, query = entry.url.partition("?")
        parts = [p for p in path.split("/") if p]
        resource_type = parts[0] if parts else ""
        check_type(resource_type)
        result: WriteResult
        if entry.method == "POST" and len(parts) == 1:
            if_none_exist = entry.request.get("ifNoneExist")
            existing = (
                self.search.find_for_condition(
                    tenant, resource_type, if_none_exist, header="ifNoneExist", access=self.access
                )
                if if_none_exist
                else None
            )
            result = (
                WriteResult("unchanged", existing)
                if existing
                else self.fhir.create(tenant, resource_type, entry.resource or {}, access=self.access)
            )
        elif entry.method == "PUT" and len(parts) == 2:
            result = self.fhir.update(
                tenant,
                resource_type,
                parts[1],
                entry.resource or {},
                if_match=entry.request.get("ifMatch"),
                access=self.access,
            )
        elif entry.method == "PUT" and query:
            result = self.conditional_update(
                tenant, resource_type, query, entry.resource or {}, if_match=entry.request.get("ifMatch")
            )
        elif entry.method == "DELETE" and len(parts) == 2:
            result = self.fhir.delete(tenant, resource_type, parts[1], access=self.access)
        elif entry.method == "DELETE" and query:
            self.conditional_delete(tenant, resource_type, query)
            result = WriteResult("deleted", None)
        elif entry.method == "PATCH" and len(parts) == 2:
            entry.target = (resource_type, parts[1])
            entry.current = self.fhir.read(tenant, resource_type, parts[1], access=self.access)
            patched = self._apply_patch(entry)
            validate_resource(patched, expected_type=resource_type, expected_id=parts[1], require_id=True)
            write = self.fhir.prepare(
                tenant, resource_type, parts[1], patched, entry.current, access=self.access
            )
            self.fhir.commit(tenant, [write])
            result = WriteResult("updated", self.fhir.store.current(tenant, resource_type, parts[1]))
        else:
            raise invalid(
                f"{entry.method} {entry.url[:80]!r} is not a batch interaction this server runs.",
                expression=["request.url"],
            )
        response: dict[str, Any] = {"status": STATUS_TEXT.get(result.status, str(result.status))}
        if result.stored is not None:
            stored = result.stored
            self.touched.append(stored)
            response.update(
                location=f"{stored.resource_type}/{stored.id}/_history/{stored.version}",
                etag=f'W/"{stored.version}"',
                lastModified=stored.last_updated,
            )
        return {"response": response}


class _at:
    """Prefix the expressions of errors raised inside with the entry they concern."""

    def __init__(self, entry: _Entry) -> None:
        self.entry = entry

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if isinstance(error, OperationOutcomeError):
            prefix = f"Bundle.entry[{self.entry.index}]"
            error.issues = tuple(
                Issue(
                    code=i.code,
                    severity=i.severity,
                    diagnostics=i.diagnostics,
                    expression=tuple(e if e.startswith("Bundle.") else f"{prefix}.{e}" for e in i.expression)
                    or (prefix,),
                )
                for i in error.issues
            )


def _entry_failures(bundle: dict[str, Any]) -> dict[int, OperationOutcomeError]:
    """A batch's invalid entries, each to fail on its own; problems of the Bundle itself raise."""
    try:
        validate_bundle(bundle)
    except OperationOutcomeError as error:
        own: dict[int, list[Issue]] = {}
        for issue in error.issues:
            match = _ENTRY_EXPRESSION.match(issue.expression[0]) if issue.expression else None
            if match is None:
                raise
            own.setdefault(int(match.group(1)), []).append(issue)
        return {
            n: OperationOutcomeError(status=error.status, issues=tuple(issues)) for n, issues in own.items()
        }
    return {}


# Only an entry's own resource fails alone; fullUrl and request rules concern the Bundle.
_ENTRY_EXPRESSION = re.compile(r"^Bundle\.entry\[(\d+)\]\.resource\b")


def _reference_holders(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            yield from _reference_holders(value)
    elif isinstance(node, list):
        for item in node:
            yield from _reference_holders(item)
