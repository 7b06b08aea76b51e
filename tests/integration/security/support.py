"""What the attack matrix needs: a FHIR client on the in-process API Gateway, the victim
(clinic-a, seeded with real Synthea records and hand-made canaries) and everything an attacker
could know about it (ids, PHI values, search values, paging cursors).

Everything goes through the session's in-process API Gateway, the way a client would: the real
authorizer and the real FHIR function, on moto.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ehr.fhir.search.definitions import SearchParameter, search_parameters, supported_parameters
from ehr.fhir.search.encoding import decode_instant
from ehr.fhir.search.extract import (
    END_PREFIX,
    IDENTIFIER_PREFIX,
    TEXT_SEPARATOR,
    IndexTerm,
    index_terms,
    param_terms,
)
from ehr.fhir.search.match import matches
from ehr.fhir.search.query import parse_query, resolve_chain
from infra.local.gateway import LocalGateway

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
SYNTHEA = SHARED_DATA / "synthea"
# The two smallest patient records become clinic-a's; a third is what the attacker writes with.
VICTIM_RECORDS = (
    "synthea__Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json",
    "synthea__Clarence_Mills_0753ad6c-5935-4faa-9cfe-b7269e963d77.json",
)
ATTACKER_RECORD = "synthea__Hershel_Marvin_71a7f9d4-45b7-481b-b571-7ee0caca6e2a.json"

VICTIM = "clinic-a"
ATTACKER = "clinic-b"
HOST = "127.0.0.1:8080"
MIN_MARKER_LENGTH = 5  # shorter PHI values ("Mr.", "US") are not distinctive
BATCH_SIZE = 250

Key = tuple[str, str]  # (resource type, id)


def base(tenant: str) -> str:
    return f"/tenants/{tenant}/fhir"


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @cached_property
    def document(self) -> Any:
        try:
            return json.loads(self.text) if self.text else None
        except ValueError:
            return None


class Client:
    """A FHIR client speaking to the in-process API Gateway."""

    def __init__(self, gateway: LocalGateway) -> None:
        self.gateway = gateway
        self.requests = 0

    def call(
        self,
        method: str,
        path: str,
        authorization: str | None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        sent = {"Host": HOST, "Accept": "application/fhir+json"}
        if authorization is not None:
            sent["Authorization"] = authorization
        if isinstance(body, bytes):
            data = body
        elif body is not None:
            data = json.dumps(body).encode("utf-8")
            sent["Content-Type"] = "application/fhir+json"
        else:
            data = b""
        sent.update(headers or {})
        self.requests += 1
        result = self.gateway.handle(method, path, sent, data)
        return Reply(result.status, dict(result.headers), result.body.decode("utf-8", "replace"))

    def bundle(self, tenant: str, authorization: str, kind: str, entries: list[dict[str, Any]]) -> Reply:
        return self.call(
            "POST", base(tenant), authorization, {"resourceType": "Bundle", "type": kind, "entry": entries}
        )

    def batch_entries(
        self, tenant: str, authorization: str, entries: list[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None, Reply]]:
        """Every entry with its batch-response entry (None when the batch itself failed)."""
        for start in range(0, len(entries), BATCH_SIZE):
            chunk = entries[start : start + BATCH_SIZE]
            reply = self.bundle(tenant, authorization, "batch", chunk)
            answered = (reply.document or {}).get("entry") if reply.status == 200 else None
            for n, entry in enumerate(chunk):
                yield entry, (answered[n] if answered and n < len(answered) else None), reply


def location_key(location: str) -> Key:
    """``(Type, id)`` of a ``…/Type/id/_history/n`` location (absolute or relative)."""
    parts = urlsplit(location).path.strip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2], parts[-1]


def entry_status(entry: Mapping[str, Any] | None) -> int:
    if not entry:
        return 0
    code = str((entry.get("response") or {}).get("status", "0")).partition(" ")[0]
    return int(code) if code.isdigit() else 0


def load_bundle(name: str) -> dict[str, Any]:
    return json.loads((SYNTHEA / name).read_text(encoding="utf-8"))


# -- search values from the victim's data ----------------------------------------------------------


def fhir_escape(value: str) -> str:
    return re.sub(r"([\\,$|])", r"\\\1", value)


def decode_decimal(encoded: str) -> Decimal | None:
    """The number behind an order-preserving index encoding (positives and zero only)."""
    if encoded == "2":
        return Decimal(0)
    if not encoded.startswith("3") or len(encoded) < 4:
        return None
    sign, width = encoded[1], int(encoded[2])
    complement = str.maketrans("0123456789", "9876543210")
    if sign == "P":
        length = int(encoded[3 : 3 + width])
        magnitude = int(encoded[3 + width : 3 + width + length])
        digits = encoded[3 + width + length :]
    else:
        width = 9 - width
        length = int(encoded[3 : 3 + width].translate(complement))
        magnitude = -int(encoded[3 + width : 3 + width + length].translate(complement))
        digits = encoded[3 + width + length :]
    if not digits.isdigit():
        return None
    return Decimal(f"0.{digits}").scaleb(magnitude)


def search_pairs(param: SearchParameter, term: IndexTerm) -> list[tuple[str, str]] | None:
    """Search parameters (name, escaped value) that find the resource ``term`` was taken from."""
    code = param.code
    if term.key.startswith(END_PREFIX):
        return None
    if param.type == "token":
        if not term.key:
            return None
        system, bar, value = term.key.partition("|")
        return [(code, f"{fhir_escape(system)}|{fhir_escape(value)}" if bar else fhir_escape(term.key))]
    if param.type == "reference":
        if term.key.startswith(IDENTIFIER_PREFIX):
            identifier = term.key[len(IDENTIFIER_PREFIX) :]
            system, bar, value = identifier.partition("|")
            text = f"{fhir_escape(system)}|{fhir_escape(value)}" if bar else fhir_escape(identifier)
            return [(f"{code}:identifier", text)]
        return [(code, fhir_escape(term.key))]
    if param.type == "uri":
        return [(code, fhir_escape(term.key))]
    if param.type == "string":
        text = term.text.split(TEXT_SEPARATOR)[0][:40].strip()
        return [(code, fhir_escape(text))] if text else None
    if param.type == "date":
        low, high = decode_instant(term.sort), decode_instant(term.high or term.sort)
        pairs = []
        if low.year > 1:
            pairs.append((code, f"ge{(low - timedelta(days=1)):%Y-%m-%d}"))
        if high.year < 9999:
            pairs.append((code, f"le{(high + timedelta(days=1)):%Y-%m-%d}"))
        return pairs or None
    if param.type in ("number", "quantity"):
        if term.high and term.high != term.sort:
            return None  # a Range: no single value to search for
        number = decode_decimal(term.sort)
        if number is None:
            return None
        value = format(number, "f")
        if param.type == "quantity" and term.key:
            system, _, unit = term.key.partition("|")
            value = f"{value}|{fhir_escape(system)}|{fhir_escape(unit)}"
        return [(code, value)]
    return None


@dataclass(frozen=True)
class Probe:
    """A search built from the victim's data that finds ``target`` on the victim's own URL."""

    resource_type: str
    pairs: tuple[tuple[str, str], ...]
    target: Key
    label: str  # Type.param, for the breakdown and messages
    kind: str = "search"  # "search" | "chain"

    def url(self, *, pin: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> str:
        pairs = list(self.pairs) + list(extra)
        if pin:
            pairs.append(("_id", self.target[1]))
        return f"{self.resource_type}?{urlencode(pairs, quote_via=quote, safe='')}"


def build_probes(bodies: Mapping[Key, dict[str, Any]]) -> list[Probe]:
    """One probe per (type, search parameter) that has a value in the victim's data, plus chains."""
    probes: list[Probe] = []
    seen: set[str] = set()
    for (resource_type, resource_id), body in sorted(bodies.items()):
        for param in supported_parameters(resource_type).values():
            label = f"{resource_type}.{param.code}"
            if label in seen:
                continue
            for term in param_terms(body, param):
                pairs = search_pairs(param, term)
                if pairs:
                    probes.append(Probe(resource_type, tuple(pairs), (resource_type, resource_id), label))
                    seen.add(label)
                    break
    probes += build_chains(bodies)
    return probes


def build_chains(bodies: Mapping[Key, dict[str, Any]]) -> list[Probe]:
    """``Type?ref.param=value`` for every reference parameter that points at another victim resource."""
    chains: list[Probe] = []
    seen: set[str] = set()
    for (resource_type, resource_id), body in sorted(bodies.items()):
        for param in supported_parameters(resource_type).values():
            if param.type != "reference":
                continue
            for term in param_terms(body, param):
                target_type, _, target_id = term.key.partition("/")
                target = bodies.get((target_type, target_id))
                if target is None:
                    continue
                for inner_code in ("identifier", "name", "birthdate", "_id"):
                    label = f"{resource_type}.{param.code}:{target_type}.{inner_code}"
                    inner = search_parameters(target_type).get(inner_code)
                    if label in seen or inner is None or not inner.supported:
                        continue
                    for inner_term in param_terms(target, inner):
                        inner_pairs = search_pairs(inner, inner_term)
                        if inner_pairs:
                            chained = tuple(
                                (f"{param.code}:{target_type}.{name}", value) for name, value in inner_pairs
                            )
                            chains.append(
                                Probe(resource_type, chained, (resource_type, resource_id), label, "chain")
                            )
                            seen.add(label)
                            break
    return chains


def finds(probe: Probe, terms: Mapping[Key, list[IndexTerm]]) -> bool:
    """Whether ``probe`` matches its target by the search engine's own parser and matcher (chains
    resolved against the victim's resources): the attack asks for something clinic-a really has."""
    params: dict[str, list[str]] = {}
    for name, value in probe.pairs:
        params.setdefault(name, []).append(value)
    query = parse_query(probe.resource_type, params)
    if query.unknown_params or not query.clauses:
        return False
    for clause in query.clauses:
        if clause.chain is not None:
            references = [
                f"{t}/{i}"
                for (t, i), own in terms.items()
                if t in clause.chain.target_types and matches(clause.chain.clause, own)
            ]
            if not references:
                return False
            clause = resolve_chain(clause, references)  # noqa: PLW2901 - the clause as the engine runs it
        if not matches(clause, terms[probe.target]):
            return False
    return True


def victim_terms(bodies: Mapping[Key, dict[str, Any]]) -> dict[Key, list[IndexTerm]]:
    return {key: index_terms(body) for key, body in bodies.items()}


# -- what the attacker writes ----------------------------------------------------------------------


class AttackerPool:
    """Plausible resources of every type, from a Synthea record clinic-a does not hold.

    ``urn:uuid`` references are rewritten to ``Type/uuid`` references to resources that exist in no
    tenant, so each resource is valid on its own.
    """

    def __init__(self, name: str = ATTACKER_RECORD) -> None:
        bundle = load_bundle(name)
        kinds = {e["fullUrl"]: e["resource"]["resourceType"] for e in bundle["entry"]}
        self._by_type: dict[str, dict[str, Any]] = {}
        for entry in bundle["entry"]:
            resource = json.loads(
                re.sub(
                    r'"urn:uuid:([0-9a-f-]+)"',
                    lambda m: json.dumps(f"{kinds['urn:uuid:' + m.group(1)]}/{m.group(1)}"),
                    json.dumps(entry["resource"]),
                )
            )
            resource.pop("id", None)
            self._by_type.setdefault(resource["resourceType"], resource)

    def body(self, resource_type: str, resource_id: str | None = None) -> dict[str, Any]:
        body = json.loads(json.dumps(self._by_type[resource_type]))
        if resource_id is not None:
            body["id"] = resource_id
        return body

    def covers(self, types: list[str]) -> bool:
        return all(t in self._by_type for t in types)


# -- the victim ------------------------------------------------------------------------------------


@dataclass
class Victim:
    """What clinic-a holds, as clinic-a itself reads it after seeding."""

    bodies: dict[Key, dict[str, Any]]  # every live resource (current version)
    deleted: dict[Key, dict[str, Any]]  # deleted resources, with their last body
    patients: list[str]
    canary: str  # hand-made patient, updated once (two versions)
    identifiers: list[str]  # "system|value" of the patients' identifiers (MRNs, SSNs…)
    markers: frozenset[str]  # ids and PHI values that must never reach the attacker
    cursors: dict[str, str]  # interaction -> "path?query" under the FHIR base, with a next-page cursor
    probes: list[Probe]
    totals: dict[str, int]  # resources per type (searchset totals)
    tag: str
    sample: list[Key] = field(default_factory=list)  # a few resources per type, for REST attempts
    seconds: float = 0.0  # CPU seconds seeding took

    @property
    def keys(self) -> list[Key]:
        return sorted([*self.bodies, *self.deleted])

    def types(self) -> list[str]:
        return sorted({t for t, _ in self.keys})

    def body(self, key: Key) -> dict[str, Any] | None:
        return self.bodies.get(key) or self.deleted.get(key)


def canary_resources(tag: str) -> list[dict[str, Any]]:
    """Obviously fake resources that exist nowhere else, tagged with this run's ``tag``."""
    patient = "urn:uuid:" + str(uuid.uuid4())
    return [
        {
            "fullUrl": patient,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5.99", "value": f"MRN-A-{tag}"}],
                "name": [{"family": f"Canaryvictim{tag}", "given": [f"Vesna{tag}"]}],
                "gender": "female",
                "birthDate": "1931-02-17",
                "telecom": [{"system": "phone", "value": f"+44 20 7946 {tag[:4]}"}],
                "address": [{"line": [f"{tag} Victim Lane"], "city": "Nowhere"}],
            },
            "request": {"method": "POST", "url": "Patient"},
        },
        *(
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "resource": {
                    "resourceType": "Observation",
                    "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5.98", "value": f"OB{n}-{tag}"}],
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": patient},
                    "effectiveDateTime": f"2021-03-0{n + 1}T10:00:00Z",
                    "valueQuantity": {
                        "value": 61 + n,
                        "unit": "/min",
                        "system": "http://unitsofmeasure.org",
                        "code": "/min",
                    },
                },
                "request": {"method": "POST", "url": "Observation"},
            }
            for n in range(2)
        ),
        {
            "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
            "resource": {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                "subject": {"reference": patient},
                "onsetDateTime": "2020-11-12",
            },
            "request": {"method": "POST", "url": "Condition"},
        },
    ]


def phi_values(patient: Mapping[str, Any]) -> set[str]:
    values: set[str] = set()
    for name in patient.get("name") or []:
        values.add(name.get("family") or "")
        values.update(name.get("given") or [])
    values.add(patient.get("birthDate") or "")
    values.update(i.get("value") or "" for i in patient.get("identifier") or [])
    values.update(t.get("value") or "" for t in patient.get("telecom") or [])
    for address in patient.get("address") or []:
        values.update(address.get("line") or [])
    return {v for v in values if len(v) >= MIN_MARKER_LENGTH}


def next_link(reply: Reply) -> str:
    document = reply.document or {}
    for link in document.get("link") or []:
        if link.get("relation") == "next":
            path = urlsplit(link["url"])
            prefix = base(VICTIM) + "/"
            assert path.path.startswith(prefix), link["url"]
            return f"{path.path[len(prefix) :]}?{path.query}"
    raise AssertionError(f"no next link in {reply.status} {reply.text[:300]}")


def read_back(
    client: Client, authorization: str, keys: list[Key]
) -> tuple[dict[Key, dict[str, Any]], list[Key]]:
    """clinic-a's current bodies of ``keys`` (read in batches), and the keys that answer 410 Gone."""
    bodies: dict[Key, dict[str, Any]] = {}
    gone: list[Key] = []
    entries = [{"request": {"method": "GET", "url": f"{t}/{i}"}} for t, i in keys]
    answers = client.batch_entries(VICTIM, authorization, entries)
    for (entry, answer, reply), key in zip(answers, keys, strict=True):
        assert answer is not None, f"batch read-back failed: {reply.status} {reply.text[:500]}"
        status = entry_status(answer)
        if status == 200:
            bodies[key] = answer["resource"]
        elif status == 410:
            gone.append(key)
        else:
            raise AssertionError(f"{entry['request']['url']} answered {json.dumps(answer)[:500]}")
    return bodies, gone


def type_totals(client: Client, authorization: str, types: list[str]) -> dict[str, int]:
    """How many live resources of each type clinic-a holds (searchset totals)."""
    entries = [{"request": {"method": "GET", "url": f"{t}?_summary=count"}} for t in types]
    totals = {}
    answers = client.batch_entries(VICTIM, authorization, entries)
    for (_, answer, reply), resource_type in zip(answers, types, strict=True):
        assert answer is not None and entry_status(answer) == 200, reply.text[:500]
        totals[resource_type] = answer["resource"]["total"]
    return totals


def assert_attacker_holds_none_of(client: Client, authorization: str, identifiers: list[str]) -> None:
    """The Synthea records are shared samples: if clinic-b already held one, its values would be
    clinic-b's own data and could not serve as leak markers."""
    entries = [
        {"request": {"method": "GET", "url": f"Patient?identifier={quote(i, safe='')}&_summary=count"}}
        for i in identifiers
    ]
    for entry, answer, reply in client.batch_entries(ATTACKER, authorization, entries):
        assert answer is not None and entry_status(answer) == 200, reply.text[:500]
        assert answer["resource"]["total"] == 0, (
            f"clinic-b already holds {entry['request']['url']}: this session loaded the victim's "
            "Synthea records into the attacker tenant, so they cannot be told apart from a leak"
        )


def seed_victim(client: Client, authorization: str) -> Victim:
    """clinic-a after seeding: two Synthea records, hand-made canaries, one update, one delete."""
    started = time.process_time()
    # Hand-made resources with values found nowhere else. They go first: every later write to
    # moto's table costs time in proportion to the table (see the module docstring).
    tag = uuid.uuid4().hex[:10]
    reply = client.bundle(VICTIM, authorization, "transaction", canary_resources(tag))
    assert reply.status == 200, reply.text[:2000]
    created = [location_key(e["response"]["location"]) for e in reply.document["entry"]]
    canary, doomed = created[0][1], created[2]
    # A second version of the canary patient, and a deleted observation
    current = client.call("GET", f"{base(VICTIM)}/Patient/{canary}", authorization).document
    updated = {k: v for k, v in current.items() if k != "meta"}
    updated["name"] = [*updated["name"], {"use": "nickname", "given": [f"Vesnita{tag}"]}]
    reply = client.bundle(
        VICTIM,
        authorization,
        "transaction",
        [
            {"resource": updated, "request": {"method": "PUT", "url": f"Patient/{canary}"}},
            {"request": {"method": "DELETE", "url": f"{doomed[0]}/{doomed[1]}"}},
        ],
    )
    assert reply.status == 200, reply.text[:2000]
    # Two real patient records, posted as the transaction Bundles Synthea wrote
    for name in VICTIM_RECORDS:
        reply = client.call("POST", base(VICTIM), authorization, (SYNTHEA / name).read_bytes())
        assert reply.status == 200, reply.text[:2000]
        created += [location_key(e["response"]["location"]) for e in reply.document["entry"]]

    bodies, gone = read_back(client, authorization, created)
    assert gone == [doomed] and len(bodies) == len(created) - 1
    last = client.call("GET", f"{base(VICTIM)}/{doomed[0]}/{doomed[1]}/_history/1", authorization)
    deleted = {doomed: last.document}
    patients = sorted(i for t, i in bodies if t == "Patient")
    markers = {i for _, i in [*bodies, *deleted]}
    identifiers = []
    for patient_id in patients:
        patient = bodies[("Patient", patient_id)]
        markers |= phi_values(patient)
        identifiers += [f"{i['system']}|{i['value']}" for i in patient["identifier"] if i.get("system")]
    first = client.call("GET", f"{base(VICTIM)}/Patient/{canary}/_history/1", authorization).document
    markers |= phi_values(first)

    # Paging cursors that clinic-a's own searches, histories and $everything hand out
    cursors = {}
    for interaction, path in {
        "search": "Observation?_count=1",
        "search-sorted": "Observation?_count=1&_sort=date",
        "type-history": "Observation/_history?_count=1",
        "instance-history": f"Patient/{canary}/_history?_count=1",
        "everything": f"Patient/{patients[0]}/$everything?_count=1",
    }.items():
        reply = client.call("GET", f"{base(VICTIM)}/{path}", authorization)
        assert reply.status == 200, reply.text[:500]
        cursors[interaction] = next_link(reply)

    per_type: dict[str, list[Key]] = {}
    for key in sorted(bodies):
        per_type.setdefault(key[0], []).append(key)
    firsts = {keys[0] for keys in per_type.values()}
    sample = sorted(firsts | {("Patient", canary), created[1]} | set(deleted))
    return Victim(
        bodies=bodies,
        deleted=deleted,
        patients=patients,
        canary=canary,
        identifiers=identifiers,
        markers=frozenset(m for m in markers if len(m) >= MIN_MARKER_LENGTH),
        cursors=cursors,
        probes=build_probes(bodies),
        totals=type_totals(client, authorization, sorted(per_type)),
        tag=tag,
        sample=sample,
        seconds=time.process_time() - started,
    )


def victim_record_identifiers() -> list[str]:
    """The MRNs of the Synthea records clinic-a is seeded with, read from the files."""
    found = []
    for name in VICTIM_RECORDS:
        patient = load_bundle(name)["entry"][0]["resource"]
        found += [f"{i['system']}|{i['value']}" for i in patient["identifier"] if i.get("system")][:2]
    return found
