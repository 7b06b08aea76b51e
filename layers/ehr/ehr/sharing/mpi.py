"""The master patient index (MPI): which local Patient records, across all tenants, are one person.

The index is fed by committed Patient versions (``record``, called from the records-table stream)
and answers ``$match`` (``match``). It holds only what matching needs — keyed tokens of normalised
identifiers and demographics (``ehr.sharing.mpi_features``), never a copy of the chart and never a
raw name, date, phone or postal code — so it is the one deliberately cross-tenant store.

- **Matching.** Candidates come from keyed lookups of the query's blocking tokens (never a scan);
  each is scored: an equal identifier ``system|value`` is ``certain`` (score 1.0); otherwise the
  demographics are weighed (names by phonetic codes and Bloom-filter bigram similarity, birth
  date, sex, postal code, address, phone) and graded ``certain`` / ``probable`` / ``possible``.
- **Enterprise ids.** A record takes the enterprise id of a ``certain`` match (same or another
  tenant), keeps its own while no certain match points elsewhere, and otherwise gets a new one.
  Probable and possible matches are never linked automatically; they only show in ``$match``.
- **Merge / unmerge.** A version whose ``Patient.link`` says ``replaced-by`` (an ADT^A40 merge) is
  no longer a candidate and its enterprise id follows the survivor's (records elsewhere linked
  through it follow too); a later version without that link is a candidate again, with an
  enterprise id recomputed from its own features.
- **Ordering.** A version older than or equal to the indexed one is ignored, and every write is
  conditional on the state it was computed from, so stream redelivery can never regress the index.

``PatientIndex`` is the storage port; ``InMemoryPatientIndex`` is its fake, and
``ehr.store.mpi_dynamo.DynamoPatientIndex`` the DynamoDB adapter.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from ehr.sharing.mpi_features import (
    MIN_KEY_BYTES,
    Comparison,
    Features,
    MatchGrade,
    Tokenizer,
    compare,
    extract,
    matchable,
)

__all__ = [
    "InMemoryPatientIndex",
    "IndexEntry",
    "MasterPatientIndex",
    "Match",
    "MatchGrade",
    "MpiUnavailableError",
    "PatientIndex",
    "PatientKey",
]

BLOCK_LIMIT: Final = 200  # candidates read per blocking key (a bigger block is too common to help)
MEMBER_LIMIT: Final = 100  # records read per enterprise id
MERGE_HOPS: Final = 8  # replaced-by chains followed at most this far
SAVE_ATTEMPTS: Final = 5
NOTHING_TO_MATCH: Final = (
    "The Patient has nothing to match on: give an identifier (system and value), a phone number, "
    "a complete birth date with a name or gender, or a name with a postal code."
)
_PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


class MpiUnavailableError(Exception):
    """The patient index cannot be read or written now; retry later."""


@dataclass(frozen=True, order=True)
class PatientKey:
    tenant: str
    patient_id: str


@dataclass(frozen=True)
class Match:
    tenant: str
    patient_id: str
    score: float  # 0..1
    grade: MatchGrade
    enterprise_id: str


@dataclass(frozen=True)
class IndexEntry:
    """The indexed state of one local Patient record (its current version)."""

    key: PatientKey
    version: int
    enterprise_id: str = ""  # empty only for a deleted record
    features: Features | None = None
    # The surviving record (same tenant) this one was merged into; "" if the survivor is not known.
    merged_into: str | None = None
    deleted: bool = False

    @property
    def candidate(self) -> bool:
        """Whether this record can be matched (and counts as a member of its enterprise id)."""
        return not self.deleted and self.merged_into is None and self.features is not None

    @property
    def blocks(self) -> frozenset[str]:
        return self.features.blocks if self.candidate and self.features is not None else frozenset()

    def to_json(self) -> dict[str, Any]:
        """The stored document (tokens only; its blocking keys are stored as the items' keys)."""
        data: dict[str, Any] = {}
        if self.features is not None:
            data["features"] = self.features.to_json()
            data["blocks"] = sorted(self.features.blocks)
        if self.merged_into is not None:
            data["merged_into"] = self.merged_into
        if self.deleted:
            data["deleted"] = True
        return data

    @classmethod
    def from_json(
        cls, key: PatientKey, version: int, enterprise_id: str, data: Mapping[str, Any]
    ) -> IndexEntry:
        features = data.get("features")
        merged = data.get("merged_into")
        return cls(
            key=key,
            version=version,
            enterprise_id=enterprise_id,
            features=Features.from_json(features, data.get("blocks", ()))
            if isinstance(features, Mapping)
            else None,
            merged_into=str(merged) if merged is not None else None,
            deleted=bool(data.get("deleted", False)),
        )


class PatientIndex(Protocol):
    """Storage of the MPI. Every method may raise ``MpiUnavailableError``."""

    def get(self, key: PatientKey) -> IndexEntry | None: ...

    def get_many(self, keys: Sequence[PatientKey]) -> list[IndexEntry]:
        """The stored entries of ``keys`` (missing ones left out), in no particular order."""
        ...

    def blocked(self, block: str, *, limit: int) -> list[PatientKey]:
        """The candidate records filed under the blocking token ``block`` (at most ``limit``)."""
        ...

    def members(self, enterprise_id: str, *, limit: int) -> list[PatientKey]:
        """The candidate records carrying ``enterprise_id`` (at most ``limit``)."""
        ...

    def save(self, entry: IndexEntry, *, previous: IndexEntry | None) -> bool:
        """Store ``entry`` — its record, the blocking keys it gains and loses against ``previous``,
        and its enterprise membership — all or nothing, if the stored entry is still ``previous``
        (same version and enterprise id; none stored when ``previous`` is None). False, with
        nothing written, when another writer got there first."""
        ...


@dataclass
class InMemoryPatientIndex:
    """The fake of ``PatientIndex``: the same contract as the DynamoDB adapter, in dictionaries."""

    entries: dict[PatientKey, IndexEntry] = field(default_factory=dict)
    block_items: dict[str, set[PatientKey]] = field(default_factory=dict)
    member_items: dict[str, set[PatientKey]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: PatientKey) -> IndexEntry | None:
        return self.entries.get(key)

    def get_many(self, keys: Sequence[PatientKey]) -> list[IndexEntry]:
        return [entry for entry in (self.entries.get(key) for key in keys) if entry is not None]

    def blocked(self, block: str, *, limit: int) -> list[PatientKey]:
        return sorted(self.block_items.get(block, ()), key=_sort_key)[:limit]

    def members(self, enterprise_id: str, *, limit: int) -> list[PatientKey]:
        return sorted(self.member_items.get(enterprise_id, ()), key=_sort_key)[:limit]

    def save(self, entry: IndexEntry, *, previous: IndexEntry | None) -> bool:
        with self._lock:
            stored = self.entries.get(entry.key)
            if not _unchanged(stored, previous):
                return False
            old_blocks = previous.blocks if previous is not None else frozenset()
            for block in old_blocks - entry.blocks:
                self.block_items[block].discard(entry.key)
                if not self.block_items[block]:
                    del self.block_items[block]
            for block in entry.blocks - old_blocks:
                self.block_items.setdefault(block, set()).add(entry.key)
            old_member = membership(previous)
            new_member = membership(entry)
            if old_member != new_member:
                if old_member:
                    self.member_items[old_member].discard(entry.key)
                    if not self.member_items[old_member]:
                        del self.member_items[old_member]
                if new_member:
                    self.member_items.setdefault(new_member, set()).add(entry.key)
            self.entries[entry.key] = entry
            return True

    def stored_documents(self) -> list[dict[str, Any]]:
        """Everything the fake holds, shaped as stored items (for inspection in tests)."""
        documents: list[dict[str, Any]] = [
            {"key": _sort_key(e.key), "version": e.version, "eid": e.enterprise_id, **e.to_json()}
            for e in self.entries.values()
        ]
        documents += [{"block": b, "keys": sorted(map(_sort_key, k))} for b, k in self.block_items.items()]
        documents += [{"eid": e, "keys": sorted(map(_sort_key, k))} for e, k in self.member_items.items()]
        return documents


def _sort_key(key: PatientKey) -> str:
    return f"{key.tenant}#{key.patient_id}"


def _unchanged(stored: IndexEntry | None, previous: IndexEntry | None) -> bool:
    if previous is None or stored is None:
        return stored is None and previous is None
    return stored.version == previous.version and stored.enterprise_id == previous.enterprise_id


def membership(entry: IndexEntry | None) -> str:
    """The enterprise id an entry is listed under ("" if none: deleted or merged away)."""
    return entry.enterprise_id if entry is not None and entry.candidate else ""


def _links(patient: Mapping[str, Any], link_type: str) -> list[str | None]:
    """The patient ids (same tenant) of ``Patient.link`` of ``link_type``; None where unresolvable."""
    found: list[str | None] = []
    links = patient.get("link")
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, Mapping) or link.get("type") != link_type:
            continue
        other = link.get("other")
        reference = other.get("reference") if isinstance(other, Mapping) else None
        match = _PATIENT_REFERENCE.search(reference) if isinstance(reference, str) else None
        found.append(match.group(1) if match else None)
    return found


class MasterPatientIndex:
    """Records committed Patient versions and answers ``$match`` across all tenants."""

    def __init__(
        self,
        index: PatientIndex,
        key: Callable[[], bytes],
        *,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._index = index
        self._key = key
        self._new_id = new_id
        self._tokenizer: Tokenizer | None = None

    @property
    def _tokens(self) -> Tokenizer:
        if self._tokenizer is None:
            key = self._key()
            if len(key) < MIN_KEY_BYTES:
                # A configuration fault, not the caller's: the index cannot work without its key.
                raise MpiUnavailableError(f"The MPI key must be at least {MIN_KEY_BYTES} bytes long.")
            self._tokenizer = Tokenizer(key)
        return self._tokenizer

    def features(self, patient: Mapping[str, Any]) -> Features:
        """The tokenised matching features of a Patient (what the index would store of it)."""
        return extract(patient, self._tokens)

    # --- writes ---------------------------------------------------------------------------------

    def record(self, tenant: str, patient_id: str, version: int, body: dict[str, Any] | None) -> None:
        """Index a committed Patient version (``body`` None: deleted). Idempotent; a version older
        than or equal to the indexed one is ignored."""
        key = PatientKey(tenant, patient_id)
        for _ in range(SAVE_ATTEMPTS):
            previous = self._index.get(key)
            if previous is not None and previous.version >= version:
                return
            entry = self._next(key, version, body, previous)
            if self._index.save(entry, previous=previous):
                break
        else:
            raise MpiUnavailableError(f"Patient {tenant}/{patient_id} kept changing while it was indexed.")
        if entry.merged_into is not None and previous is not None and previous.candidate:
            # Records linked through this one now belong with the survivor.
            self._absorb(previous.enterprise_id, entry.enterprise_id)
        if body is not None and entry.candidate:
            self._follow_replaced(entry, body)

    def _next(
        self, key: PatientKey, version: int, body: Mapping[str, Any] | None, previous: IndexEntry | None
    ) -> IndexEntry:
        if body is None:
            return IndexEntry(key, version, deleted=True)
        features = self.features(body)
        replaced_by = [ref for ref in _links(body, "replaced-by") if ref != key.patient_id]
        if replaced_by:
            survivor_id = replaced_by[0] or ""
            survivor = self._resolve(PatientKey(key.tenant, survivor_id)) if survivor_id else None
            if survivor is not None and survivor.key != key and survivor.enterprise_id:
                enterprise_id = survivor.enterprise_id
            elif previous is not None and previous.enterprise_id:
                enterprise_id = previous.enterprise_id
            else:
                enterprise_id = self._new_id()
            return IndexEntry(key, version, enterprise_id, features, merged_into=survivor_id)
        # Unmerged, recreated or new records get an enterprise id from their own features only.
        current = previous.enterprise_id if previous is not None and previous.candidate else ""
        certain = [(e, c) for e, c in self._scored(features, exclude=key) if c.grade == "certain"]
        return IndexEntry(key, version, self._choose(current, certain), features)

    def _choose(self, current: str, certain: Sequence[tuple[IndexEntry, Comparison]]) -> str:
        if not certain:
            return current or self._new_id()
        if current and any(entry.enterprise_id == current for entry, _ in certain):
            return current
        best = min(certain, key=lambda pair: (-pair[1].score, pair[0].enterprise_id))
        return best[0].enterprise_id

    def _follow_replaced(self, survivor: IndexEntry, body: Mapping[str, Any]) -> None:
        """Records this one ``replaces`` that were indexed before it take its enterprise id."""
        for replaced_id in _links(body, "replaces"):
            if not replaced_id or replaced_id == survivor.key.patient_id:
                continue
            replaced = self._index.get(PatientKey(survivor.key.tenant, replaced_id))
            if (
                replaced is None
                or replaced.merged_into != survivor.key.patient_id
                or replaced.enterprise_id == survivor.enterprise_id
            ):
                continue
            if self._index.save(replace(replaced, enterprise_id=survivor.enterprise_id), previous=replaced):
                self._absorb(replaced.enterprise_id, survivor.enterprise_id)

    def _absorb(self, old: str, new: str) -> None:
        """Move the records of enterprise id ``old`` to ``new`` (bounded by ``MEMBER_LIMIT``)."""
        if not old or old == new:
            return
        for entry in self._index.get_many(self._index.members(old, limit=MEMBER_LIMIT)):
            if entry.candidate and entry.enterprise_id == old:
                self._index.save(replace(entry, enterprise_id=new), previous=entry)

    # --- reads ----------------------------------------------------------------------------------

    def match(self, patient: dict[str, Any], *, count: int = 10, only_certain: bool = False) -> list[Match]:
        """``$match`` over all tenants: the best ``count`` matches, highest score first."""
        if not isinstance(patient, Mapping) or patient.get("resourceType", "Patient") != "Patient":
            raise ValueError("$match needs a Patient resource.")
        if count < 1:
            raise ValueError("count must be a positive number.")
        features = self.features(patient)
        if not matchable(features):
            raise ValueError(NOTHING_TO_MATCH)
        matches = [
            Match(e.key.tenant, e.key.patient_id, c.score, c.grade, e.enterprise_id)
            for e, c in self._scored(features)
            if c.grade is not None and (c.grade == "certain" or not only_certain)
        ]
        matches.sort(key=lambda m: (-m.score, m.tenant, m.patient_id))
        return matches[:count]

    def _scored(
        self, features: Features, *, exclude: PatientKey | None = None
    ) -> Iterable[tuple[IndexEntry, Comparison]]:
        keys: set[PatientKey] = set()
        for block in sorted(features.blocks):
            keys.update(self._index.blocked(block, limit=BLOCK_LIMIT))
        if exclude is not None:
            keys.discard(exclude)
        for entry in self._index.get_many(sorted(keys)):
            if entry.candidate and entry.features is not None:
                comparison = compare(features, entry.features)
                if comparison.grade is not None:
                    yield entry, comparison

    def _resolve(self, key: PatientKey) -> IndexEntry | None:
        """The entry of ``key``, following replaced-by links to the surviving record."""
        entry = self._index.get(key)
        if entry is None or entry.deleted:
            return None
        for _ in range(MERGE_HOPS):
            if not entry.merged_into:
                break
            survivor = self._index.get(PatientKey(key.tenant, entry.merged_into))
            if survivor is None or survivor.deleted or survivor.key == entry.key:
                break
            entry = survivor
        return entry

    def enterprise_id(self, tenant: str, patient_id: str) -> str | None:
        """The person's enterprise id (a merged-away record's is its survivor's); None if not indexed."""
        entry = self._resolve(PatientKey(tenant, patient_id))
        return entry.enterprise_id if entry is not None else None

    def linked(self, tenant: str, patient_id: str) -> list[PatientKey]:
        """The records in other tenants with the same enterprise id (merged-away ones excluded)."""
        enterprise_id = self.enterprise_id(tenant, patient_id)
        if enterprise_id is None:
            return []
        members = self._index.members(enterprise_id, limit=MEMBER_LIMIT)
        return sorted(key for key in members if key.tenant != tenant)
