"""Search execution: every search is DynamoDB Queries on index items, never a Scan.

One clause drives the search: its key ranges (``ehr.fhir.search.plan``) are Queried on the
index; every candidate's current version is then checked against all clauses (``matches``) using
the index entries stored with it. A search that no clause can drive (only ``:missing``, ``:not``…)
is driven by the type's ``_lastUpdated`` index: still a Query, its cost growing with the type.

Two modes:
- streaming: one key range, results in index order (or ``_sort`` on that same parameter); pages
  resume after the last hit returned, so paging never re-reads earlier pages;
- collecting: OR'ed ranges, chains or a ``_sort`` the driving index does not give: all matches
  are gathered (up to ``MAX_COLLECT``), sorted and paged by offset.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import urlencode

from ehr.fhir.cursors import CursorCodec
from ehr.fhir.outcome import Issue, OperationOutcomeError, invalid, precondition_failed
from ehr.fhir.search import definitions
from ehr.fhir.search.encoding import date_range
from ehr.fhir.search.extract import END_PREFIX, IndexTerm
from ehr.fhir.search.match import matches
from ehr.fhir.search.plan import KeyRange as PlanRange
from ehr.fhir.search.plan import key_ranges
from ehr.fhir.search.query import Include, SearchClause, SearchQuery, parse_query, resolve_chain
from ehr.security.scopes import AccessPolicy, Letter, require
from ehr.store import keys
from ehr.store.ports import IndexHit, KeyRange, Page, RecordStore, StoredResource

MAX_COLLECT: Final = 10_000
MAX_INCLUDES: Final = 1_000
EVERYTHING_DEFAULT_COUNT: Final = 100
EVERYTHING_MAX_COUNT: Final = 1_000
IGNORED_PARAMS: Final = frozenset({"_format", "_pretty", "_cursor"})


@dataclass
class _Visibility:
    """Which matches the caller's scopes let through; counts what it withheld."""

    access: AccessPolicy | None
    letter: Letter = "s"
    withheld: int = 0

    def __call__(self, stored: StoredResource) -> bool:
        if self.access is None or self.access.may(self.letter, stored):
            return True
        self.withheld += 1
        return False

    def may_include(self, stored: StoredResource) -> bool:
        if self.access is None or self.access.may_see(stored):
            return True
        self.withheld += 1
        return False


WITHHELD: Final = "Some matching resources were left out: the token's scopes do not reach them."


@dataclass(frozen=True)
class SearchPage:
    """A searchset Bundle and the resources in it (matches and includes), for the audit trail."""

    bundle: dict[str, Any]
    resources: list[StoredResource]
    # Resources of other facilities shared into the page (cross-facility $everything), with the
    # compartment each came from: audited in the owning tenant's trail.
    shared: tuple[tuple[SharedCompartment, StoredResource], ...] = ()


SOURCE_TAG_SYSTEM: Final = "urn:ehr:source-tenant"


@dataclass(frozen=True)
class SharedCompartment:
    """A patient compartment to read for $everything: the tenant's own, or the same person's
    record at another facility that the patient's Consent shares with the caller's tenant.

    ``permits`` says which resource types the consent covers; ``base`` is the owning tenant's
    FHIR base (the entries' fullUrl); shared resources are labelled with their source and are
    read-only to the receiver (they live in the owner's partition)."""

    tenant: str
    patient_id: str
    base: str
    remote: bool = False
    source_name: str = ""
    permits: Callable[[str], bool] = lambda _type: True

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.patient_id}" if self.remote else ""

    def label(self, body: dict[str, Any] | None) -> dict[str, Any] | None:
        if body is None:
            return None
        labelled = copy.deepcopy(body)
        meta = labelled.setdefault("meta", {})
        tag = {"system": SOURCE_TAG_SYSTEM, "code": self.tenant}
        if self.source_name:
            tag["display"] = self.source_name
        meta["tag"] = [*(meta.get("tag") or []), tag]
        return labelled

    def as_local(self, stored: StoredResource, patient_id: str) -> StoredResource:
        """The resource as the receiver's scopes see it: the owner's patient is the receiver's
        patient (the same person), so a ``patient/`` scope reaches it."""
        if stored.resource_type == "Patient" and stored.id == self.patient_id:
            return replace(stored, id=patient_id)
        return replace(
            stored,
            compartments=frozenset(patient_id if c == self.patient_id else c for c in stored.compartments),
        )


def _everything_count(params: Mapping[str, Sequence[str]]) -> int:
    if not params.get("_count"):
        return EVERYTHING_DEFAULT_COUNT
    text = params["_count"][-1]
    if not text.isdigit() or not 0 < int(text) <= EVERYTHING_MAX_COUNT:
        message = f"_count must be a whole number from 1 to {EVERYTHING_MAX_COUNT}."
        raise invalid(message, expression=["_count"])
    return int(text)


def _everything_types(params: Mapping[str, Sequence[str]]) -> frozenset[str] | None:
    from ehr.fhir.validation import known_resource_types

    values = [v for text in params.get("_type") or [] for v in text.split(",") if v.strip()]
    if not values:
        return None
    unknown = [v for v in values if v.strip() not in known_resource_types()]
    if unknown:
        names = ", ".join(unknown)[:120]
        raise invalid(f"_type names unknown resource types: {names}.", expression=["_type"])
    return frozenset(v.strip() for v in values)


def _match_entry(base: str, stored: StoredResource, body: dict[str, Any] | None) -> dict[str, Any]:
    url = f"{base}/{stored.resource_type}/{stored.id}"
    return {"fullUrl": url, "resource": body, "search": {"mode": "match"}}


@dataclass
class _Result:
    resources: list[StoredResource]
    next_state: dict[str, Any] | None
    total: int | None


def _terms(stored: StoredResource) -> list[IndexTerm]:
    return [IndexTerm(e.param, e.key, e.sort, e.high, e.text) for e in stored.index]


def _store_range(plan: PlanRange) -> KeyRange:
    return KeyRange(param=plan.param, key=plan.key, sort_low=plan.sort_low, sort_high=plan.sort_high)


class SearchEngine:
    def __init__(self, store: RecordStore, cursors: CursorCodec, *, max_collect: int = MAX_COLLECT) -> None:
        self.store = store
        self.cursors = cursors
        self.max_collect = max_collect

    # -- entry points --------------------------------------------------------------------------

    def search(
        self,
        tenant: str,
        resource_type: str,
        params: Mapping[str, Sequence[str]],
        *,
        base: str,
        strict: bool,
        access: AccessPolicy | None = None,
    ) -> SearchPage:
        if access is not None:
            require(access.identity, "s", resource_type)
        visible = _Visibility(access)
        search_params = {k: list(v) for k, v in params.items() if k not in IGNORED_PARAMS}
        query = parse_query(resource_type, search_params)
        warnings = []
        if query.unknown_params:
            names = ", ".join(sorted(query.unknown_params))
            if strict:
                raise invalid(
                    f"Unknown search parameter(s) for {resource_type}: {names}.",
                    expression=list(query.unknown_params),
                )
            warnings.append(
                Issue(
                    code="not-supported",
                    severity="warning",
                    diagnostics=f"Ignored unknown search parameter(s): {names}.",
                )
            )
        canonical = urlencode(sorted((k, v) for k, values in search_params.items() for v in values))
        scope = f"search|{resource_type}|{canonical}"
        state = self._state(tenant, scope, params)
        self_url = f"{base}/{resource_type}"
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        kept = {k: v for k, v in search_params.items() if k not in query.unknown_params}
        links = [{"relation": "self", "url": self_url + _query_suffix(kept)}]
        if query.summary == "count":
            bundle["total"] = self.count(tenant, query, visible)
            bundle["link"] = links
            return SearchPage(bundle, [])
        result = self._execute(tenant, query, state, visible)
        if result.next_state is not None:
            token = self.cursors.encode(tenant=tenant, scope=scope, state=result.next_state)
            links.append({"relation": "next", "url": self_url + _query_suffix({**kept, "_cursor": [token]})})
        if result.total is not None:
            bundle["total"] = result.total
        elif query.total == "accurate":
            bundle["total"] = self.count(tenant, query, _Visibility(access))
        bundle["link"] = links
        entries = [_entry(base, stored, "match", query) for stored in result.resources]
        included = self._includes(tenant, query, result.resources, visible)
        entries += [_entry(base, stored, "include", query) for stored in included]
        if visible.withheld:
            warnings.append(Issue(code="suppressed", severity="warning", diagnostics=WITHHELD))
        if warnings:
            entries.append(_outcome_entry(warnings))
        if entries:
            bundle["entry"] = entries
        return SearchPage(bundle, [*result.resources, *included])

    def find(
        self,
        tenant: str,
        resource_type: str,
        query_string: str,
        *,
        limit: int,
        header: str,
        access: AccessPolicy | None = None,
    ) -> list[StoredResource]:
        """Resources matching a condition (If-None-Exist, conditional update/delete/reference)."""
        from urllib.parse import parse_qs

        params = parse_qs(query_string.lstrip("?"), keep_blank_values=True)
        try:
            query = parse_query(resource_type, params)
        except OperationOutcomeError as error:
            raise invalid(
                f"The {header} condition is not a valid search: {error.issues[0].diagnostics}",
                expression=[header],
            ) from error
        if query.unknown_params or not query.clauses:
            raise invalid(
                f"The {header} condition needs known search parameters of {resource_type}.",
                expression=[header],
            )
        query = replace(query, count=limit, sort=())
        # A condition sees only what the caller may search: it must not reveal other resources.
        return self._execute(tenant, query, None, _Visibility(access)).resources

    @staticmethod
    def find_check(resource_type: str, query_string: str) -> None:
        """Raise what searching ``resource_type`` with ``query_string`` would raise for bad input."""
        from urllib.parse import parse_qs

        parse_query(resource_type, parse_qs(query_string, keep_blank_values=True))

    def find_for_condition(
        self,
        tenant: str,
        resource_type: str,
        query_string: str,
        *,
        header: str,
        access: AccessPolicy | None = None,
    ) -> StoredResource | None:
        found = self.find(tenant, resource_type, query_string, limit=2, header=header, access=access)
        if len(found) > 1:
            raise precondition_failed(f"The {header} condition matches more than one {resource_type}.")
        return found[0] if found else None

    def count(self, tenant: str, query: SearchQuery, visible: _Visibility | None = None) -> int:
        return len(self._collect(tenant, query, visible or _Visibility(None)))

    def everything(  # noqa: PLR0915 - one paging loop over the own and the shared compartments
        self,
        tenant: str,
        patient_id: str,
        params: Mapping[str, Sequence[str]],
        *,
        base: str,
        access: AccessPolicy | None = None,
        shared: Callable[[], Sequence[SharedCompartment]] | None = None,
    ) -> SearchPage:
        """The patient compartment, paged; then, when ``shared`` names them, the compartments of
        the same person at other facilities (cross-facility sharing under the patient's Consent).

        ``_type`` (comma-separated) keeps only those resource types: the federated search on
        the patient compartment. The cursor names the compartment it is in (``s``: "" for the
        tenant's own, ``{tenant}/{patient}`` for a shared one), so the consent is checked again on
        every page and a compartment that is no longer shared is skipped.
        """
        if access is not None:
            require(access.identity, "r", "Patient")
        patient = self.store.current(tenant, "Patient", patient_id)
        if patient is not None and access is not None:
            access.check("r", patient)
        if patient is None or patient.deleted:
            raise OperationOutcomeError(
                status=404,
                issues=(Issue(code="not-found", diagnostics=f"Patient/{patient_id} is not known."),),
            )
        count = _everything_count(params)
        types = _everything_types(params)
        scope = f"everything|{patient_id}|{count}|{','.join(sorted(types or ()))}"
        state = self._state(tenant, scope, params)
        own = SharedCompartment(tenant=tenant, patient_id=patient_id, base=base)
        # Asked after the patient is found and the caller may read it: no index lookup or
        # consent evaluation for a request that is refused anyway.
        sources = [own, *sorted(shared() if shared else (), key=lambda s: s.key)]
        position = 0
        cursor = None
        if state is not None:
            key = str(state.get("s", ""))
            position = next((i for i, s in enumerate(sources) if s.key >= key), len(sources))
            if position < len(sources) and sources[position].key == key:
                cursor = state.get("c")
        visible = _Visibility(access, letter="r")
        resources: list[StoredResource] = []
        remote: list[tuple[SharedCompartment, StoredResource]] = []
        entries: list[dict[str, Any]] = []
        while position < len(sources) and len(entries) < count:
            source = sources[position]
            found = self._compartment_page(source, count - len(entries), cursor, first=state is None)
            for stored in found.items:
                if types is not None and stored.resource_type not in types:
                    continue
                if source is own:
                    if not visible.may_include(stored):
                        continue
                    resources.append(stored)
                    entries.append(_match_entry(base, stored, stored.body))
                    continue
                if not source.permits(stored.resource_type) or not visible.may_include(
                    source.as_local(stored, patient_id)
                ):
                    continue
                remote.append((source, stored))
                entries.append(_match_entry(source.base, stored, source.label(stored.body)))
            cursor = found.cursor
            if cursor:
                break
            position += 1
        self_url = f"{base}/Patient/{patient_id}/$everything"
        kept = {k: v for k, v in params.items() if k in ("_count", "_type")}
        links = [{"relation": "self", "url": self_url + (f"?{urlencode(kept, doseq=True)}" if kept else "")}]
        if position < len(sources):
            next_state = {"s": sources[position].key, "c": cursor}
            token = self.cursors.encode(tenant=tenant, scope=scope, state=next_state)
            query = urlencode([*((k, v) for k, vs in kept.items() for v in vs), ("_cursor", token)])
            links.append({"relation": "next", "url": f"{self_url}?{query}"})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
        if visible.withheld:
            entries.append(
                _outcome_entry([Issue(code="suppressed", severity="warning", diagnostics=WITHHELD)])
            )
        if entries:
            bundle["entry"] = entries
        return SearchPage(bundle, resources, tuple(remote))

    def _compartment_page(
        self, source: SharedCompartment, limit: int, cursor: dict[str, Any] | None, *, first: bool
    ) -> Page[StoredResource]:
        """Up to ``limit`` current resources of one compartment, and resources they refer to
        outside any compartment (organizations, practitioners, medications, locations…), as
        $everything promises. The own Patient comes first on the first page."""
        page = self.store.compartment(source.tenant, source.patient_id, limit=limit, cursor=cursor)
        found = self.store.current_many(source.tenant, list(page.items))
        items = [
            found[ref]
            for ref in page.items
            if ref in found and not found[ref].deleted and ref != ("Patient", source.patient_id)
        ]
        if cursor is None:
            patient = self.store.current(source.tenant, "Patient", source.patient_id)
            if patient is not None and not patient.deleted and (first or source.remote):
                items.insert(0, patient)
        in_page = {(s.resource_type, s.id) for s in items}
        referenced = [ref for s in items for ref in _all_references(s) if ref not in in_page]
        outside = self.store.current_many(source.tenant, list(dict.fromkeys(referenced)))
        items += [s for s in outside.values() if not s.deleted and not s.compartments]
        return Page(tuple(items), page.cursor)

    def _state(self, tenant: str, scope: str, params: Mapping[str, Sequence[str]]) -> dict[str, Any] | None:
        tokens = params.get("_cursor") or []
        return self.cursors.decode(tokens[-1], tenant=tenant, scope=scope) if tokens else None

    @staticmethod
    def normalize_instant(text: str, *, expression: str) -> str:
        try:
            low, _ = date_range(text)
        except (ValueError, TypeError) as exc:
            raise invalid(f"{text[:40]!r} is not a FHIR date or instant.", expression=[expression]) from exc
        return _instant(low)

    # -- execution -----------------------------------------------------------------------------

    def _prepare(self, tenant: str, query: SearchQuery) -> SearchQuery | None:
        """Chains resolved to reference clauses; None when a chain finds nothing (no results)."""
        clauses = []
        for clause in query.clauses:
            if clause.chain is None:
                clauses.append(clause)
                continue
            references: list[str] = []
            for target in clause.chain.target_types:
                inner = SearchQuery(resource_type=target, clauses=(clause.chain.clause,))
                references += [f"{target}/{s.id}" for s in self._collect(tenant, inner)]
            if not references:
                return None
            clauses.append(resolve_chain(clause, references))
        return replace(query, clauses=tuple(clauses))

    def _driver(self, query: SearchQuery) -> tuple[SearchClause | None, list[PlanRange]]:
        best: tuple[int, SearchClause, list[PlanRange]] | None = None
        for clause in query.clauses:
            ranges = key_ranges(clause)
            if ranges is None:
                continue
            # Fewer ranges first; equality ranges (no sort bounds) before open ranges.
            cost = len(ranges) * 10 + sum(
                1 for r in ranges if r.sort_low is not None or r.sort_high is not None
            )
            cost += 0 if all(r.key for r in ranges) else 5
            if best is None or cost < best[0]:
                best = (cost, clause, ranges)
        if best is None:
            return None, [PlanRange(param="_lastUpdated", key="")]
        return best[1], best[2]

    def _execute(
        self, tenant: str, query: SearchQuery, state: Mapping[str, Any] | None, visible: _Visibility
    ) -> _Result:
        prepared = self._prepare(tenant, query)
        if prepared is None:
            return _Result([], None, 0)
        _, ranges = self._driver(prepared)
        sort = prepared.sort
        streaming = len(ranges) == 1 and (
            not sort or (len(sort) == 1 and sort[0].param.code == ranges[0].param)
        )
        if streaming and (state is None or "after" in state or "c" in state):
            descending = bool(sort and sort[0].descending)
            return self._stream(
                tenant, prepared, ranges[0], descending=descending, state=state, visible=visible
            )
        matches_all = self._collect(tenant, prepared, visible)
        ordered = _sorted(matches_all, prepared)
        offset = int((state or {}).get("offset", 0))
        page = ordered[offset : offset + prepared.count]
        following = offset + prepared.count
        next_state = {"offset": following} if following < len(ordered) else None
        return _Result(page, next_state, len(ordered))

    def _stream(
        self,
        tenant: str,
        query: SearchQuery,
        plan: PlanRange,
        *,
        descending: bool,
        state: Mapping[str, Any] | None,
        visible: _Visibility,
    ) -> _Result:
        if query.count == 0:
            return _Result([], None, None)
        key_range = _store_range(plan)
        after = IndexHit(*state["after"]) if state and state.get("after") else None
        cursor = state.get("c") if state else None
        found: list[StoredResource] = []
        last: IndexHit | None = None
        exhausted = False
        batch = max(query.count, 10)
        while len(found) < query.count:
            page = self.store.query_index(
                tenant,
                query.resource_type,
                key_range,
                limit=batch,
                descending=descending,
                cursor=cursor if after is None else None,
                after=after,
            )
            current = self.store.current_many(tenant, [(query.resource_type, h.id) for h in page.items])
            for hit in page.items:
                stored = current.get((query.resource_type, hit.id))
                last = hit
                if stored is None or stored.deleted or not _first_in_range(stored, plan, hit, descending):
                    continue
                if all(matches(c, _terms(stored)) for c in query.clauses) and visible(stored):
                    found.append(stored)
                    if len(found) == query.count:
                        break
            if len(found) == query.count:
                break
            if page.cursor is None:
                exhausted = True
                break
            if page.items:
                after, cursor = page.items[-1], None
            else:
                after, cursor = None, page.cursor
        next_state: dict[str, Any] | None = None
        if not exhausted and last is not None:
            next_state = {"after": [last.id, last.sort, last.high]}
        elif not exhausted and cursor is not None:
            next_state = {"c": cursor}
        return _Result(found, next_state, None)

    def _collect(
        self, tenant: str, query: SearchQuery, visible: _Visibility | None = None
    ) -> list[StoredResource]:
        prepared = self._prepare(tenant, query)
        if prepared is None:
            return []
        _, ranges = self._driver(prepared)
        ids: dict[str, None] = {}
        for plan in ranges:
            cursor: dict[str, Any] | None = None
            while True:
                page = self.store.query_index(
                    tenant,
                    prepared.resource_type,
                    _store_range(plan),
                    limit=1000,
                    descending=False,
                    cursor=cursor,
                )
                for hit in page.items:
                    ids.setdefault(hit.id)
                if len(ids) > self.max_collect:
                    raise OperationOutcomeError(
                        status=422,
                        issues=(
                            Issue(
                                code="too-costly",
                                diagnostics=f"The search matches more than {self.max_collect} candidates; "
                                "add criteria or remove _sort/_total.",
                            ),
                        ),
                    )
                if page.cursor is None:
                    break
                cursor = page.cursor
        found: list[StoredResource] = []
        id_list = list(ids)
        for start in range(0, len(id_list), 100):
            chunk = [(prepared.resource_type, i) for i in id_list[start : start + 100]]
            current = self.store.current_many(tenant, chunk)
            for ref in chunk:
                stored = current.get(ref)
                if (
                    stored is not None
                    and not stored.deleted
                    and all(matches(c, _terms(stored)) for c in prepared.clauses)
                    and (visible is None or visible(stored))
                ):
                    found.append(stored)
        return found

    # -- includes ------------------------------------------------------------------------------

    def _includes(
        self, tenant: str, query: SearchQuery, results: Sequence[StoredResource], visible: _Visibility
    ) -> list[StoredResource]:
        if not results or not (query.includes or query.revincludes):
            return []
        seen = {(s.resource_type, s.id) for s in results}
        included: list[StoredResource] = []
        frontier = list(results)
        first = True
        while frontier and len(included) < MAX_INCLUDES:
            wanted: list[tuple[str, str]] = []
            for include in query.includes:
                if first or include.iterate:
                    for stored in frontier:
                        wanted += [ref for ref in _references(stored, include) if ref not in seen]
            wanted = list(dict.fromkeys(wanted))
            seen.update(wanted)
            fetched = self.store.current_many(tenant, wanted)
            added = [fetched[ref] for ref in wanted if ref in fetched and not fetched[ref].deleted]
            for include in query.revincludes:
                if first or include.iterate:
                    added += self._revinclude(tenant, include, frontier, seen)
            permitted = [s for s in added if visible.may_include(s)]
            included += permitted
            frontier = permitted
            first = False
        return included[:MAX_INCLUDES]

    def _revinclude(
        self, tenant: str, include: Include, targets: Iterable[StoredResource], seen: set[tuple[str, str]]
    ) -> list[StoredResource]:
        params = (
            [include.param]
            if include.param
            else [
                p.code
                for p in definitions.supported_parameters(include.source_type).values()
                if p.type == "reference"
            ]
        )
        refs: list[tuple[str, str]] = []
        for target in targets:
            for param in params:
                page = self.store.query_index(
                    tenant,
                    include.source_type,
                    KeyRange(param=param, key=f"{target.resource_type}/{target.id}"),
                    limit=MAX_INCLUDES,
                    descending=False,
                    cursor=None,
                )
                for hit in page.items:
                    ref = (include.source_type, hit.id)
                    if ref not in seen:
                        seen.add(ref)
                        refs.append(ref)
        found = self.store.current_many(tenant, refs)
        return [found[r] for r in refs if r in found and not found[r].deleted]


def _references(stored: StoredResource, include: Include) -> list[tuple[str, str]]:
    if include.source_type != stored.resource_type:
        return []
    refs = []
    reference_params = {
        p.code
        for p in definitions.supported_parameters(stored.resource_type).values()
        if p.type == "reference"
    }
    for entry in stored.index:
        if entry.param not in reference_params or (include.param and entry.param != include.param):
            continue
        resource_type, _, resource_id = entry.key.partition("/")
        if not resource_id or "/" in resource_id or not resource_type[:1].isupper():
            continue
        if include.target_type and include.target_type != resource_type:
            continue
        refs.append((resource_type, resource_id))
    return refs


def _all_references(stored: StoredResource) -> list[tuple[str, str]]:
    refs = []
    for entry in stored.index:
        resource_type, _, resource_id = entry.key.partition("/")
        if resource_id and "/" not in resource_id and resource_type[:1].isupper() and resource_type.isalpha():
            refs.append((resource_type, resource_id))
    return refs


def _first_in_range(stored: StoredResource, plan: PlanRange, hit: IndexHit, descending: bool) -> bool:
    """Whether ``hit`` is the resource's first term in the range: it is emitted there only, so a
    resource with several values in one range appears once across all pages."""
    sorts = [keys.bounded_sort(t.sort) for t in _terms(stored) if plan.contains(t)]
    if not sorts:
        return True
    return hit.sort == (max(sorts) if descending else min(sorts))


def _sort_value(stored: StoredResource, code: str, descending: bool) -> str | None:
    if code == "_id":
        return stored.id
    if code == "_lastUpdated":
        return stored.last_updated
    entries = [e for e in stored.index if e.param == code and not e.key.startswith(END_PREFIX)]
    values = [e.sort for e in entries if e.sort] or [e.key for e in entries if e.key]  # tokens sort by code
    if not values:
        return None
    return max(values) if descending else min(values)


def _sorted(resources: list[StoredResource], query: SearchQuery) -> list[StoredResource]:
    ordered = list(resources)
    if not query.sort:
        ordered.sort(key=lambda s: s.last_updated, reverse=True)
        return ordered
    for key in reversed(query.sort):
        present = [s for s in ordered if _sort_value(s, key.param.code, key.descending) is not None]
        absent = [s for s in ordered if _sort_value(s, key.param.code, key.descending) is None]
        present.sort(
            key=lambda s: _sort_value(s, key.param.code, key.descending) or "", reverse=key.descending
        )
        ordered = present + absent
    return ordered


def _entry(base: str, stored: StoredResource, mode: str, query: SearchQuery) -> dict[str, Any]:
    body = stored.body or {}
    if query.elements and mode == "match":
        keep = set(query.elements) | {"resourceType", "id", "meta"}
        body = {k: v for k, v in body.items() if k in keep}
        meta = dict(body.get("meta") or {})
        meta["tag"] = [
            *meta.get("tag", []),
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"},
        ]
        body["meta"] = meta
    elif query.summary == "data":
        body = {k: v for k, v in body.items() if k != "text"}
    return {
        "fullUrl": f"{base}/{stored.resource_type}/{stored.id}",
        "resource": body,
        "search": {"mode": mode},
    }


def _outcome_entry(issues: Sequence[Issue]) -> dict[str, Any]:
    return {
        "resource": {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]},
        "search": {"mode": "outcome"},
    }


def _query_suffix(params: Mapping[str, Sequence[str]]) -> str:
    pairs = [(k, v) for k, values in params.items() for v in values]
    return ("?" + urlencode(pairs)) if pairs else ""


def _instant(encoded: str) -> str:
    return encoded
