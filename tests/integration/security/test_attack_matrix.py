"""The tenancy attack matrix: clinic-b (the attacker) against clinic-a (the victim).

The security invariant (``../shared/DESIGN.md``, "The one security invariant"; ``docs/security.md``)
says a request's tenant comes only from its verified token and no code path returns another
tenant's data. This module tries to break it thousands of ways, through the real API Gateway
authorizer and the real FHIR function on moto, and counts.

Threat model: clinic-b holds valid tokens of its own (``user/*.cruds``, ``system/*.cruds``, and a
``patient/*.cruds`` token whose patient context names a clinic-a patient) and knows everything
about clinic-a's records an insider could have copied: every resource id, the patients' names,
birth dates, MRNs, SSNs, phone numbers and addresses, values of every search parameter, and
paging cursors that clinic-a's own searches handed out.

The attempts, in this order (reads before the attacker writes anything, so that "not found" is
never clinic-b's own copy answering):

1. on clinic-b's own base URL with clinic-a's ids and values: read, vread, update (``If-Match``),
   patch, delete, instance and type history, ``$everything``, a search with every search
   parameter of every resource type clinic-a holds (values from clinic-a's data, each shown by
   the engine's own matcher to find its clinic-a resource), chained searches, ``_id`` lists,
   ``_include``/``_revinclude``, conditional delete, batch and transaction entries
   (GET/PUT/DELETE/PATCH on clinic-a's ids, conditional references and conditional
   PUT/PATCH/DELETE keyed on clinic-a's identifiers), clinic-a's paging cursors replayed, and
   forged or altered cursors;
2. bait: clinic-b stores resources that *refer* to clinic-a's ids, then tries ``_include``,
   ``_revinclude``, chains and ``$everything`` through those references;
3. writes by id on clinic-b's URL: update-as-create with clinic-a's ids (REST and a transaction
   over every clinic-a id), conditional create and update keyed on clinic-a's identifiers; these
   may create clinic-b's own resources but must not touch clinic-a's;
4. clinic-a's URL with clinic-b's tokens (URL/token tenant mismatch): every interaction → 403;
5. token attacks on clinic-a's URL (expired, not yet valid, ``alg: none``, HS256 keyed with the
   public key, another key, embedded key, wrong audience or issuer, missing or foreign tenant
   claim, tampered or spliced payloads, malformed headers), through the gateway and also straight
   to the function with the authorizer bypassed → 401 (403 for a valid token of no or another
   tenant).

A leak is a response that carries a clinic-a id or PHI value the request did not itself contain
(outside clinic-b's own resources), any clinic-a resource in a response, a cross-tenant answer
that differs from the answer for an id or identifier that never existed (existence revealed),
a 2xx where a refusal is due, any 5xx, or any change to clinic-a's data (checked afterwards by
``test_clinic_a_is_unchanged_after_the_matrix``). A status that is merely not the documented one
(but reveals nothing) is reported as a deviation; the test wants zero of both.

Not in the matrix yet, because the routes do not exist: the HL7 v2 endpoint
(``POST /tenants/{tenant}/hl7v2``) and the document routes (S3 presigned URLs). They must be added
here when they are. The IAM side (``dynamodb:LeadingKeys``) is covered by ``tests/infra``.

Cost: moto 5.2 sorts the whole table on every Query and deep-copies it once per item of every
TransactWriteItems, which made this module take minutes; ``conftest.py`` bounds both for this
module without changing what the handlers see (a Query reads only its partition, a transaction
snapshots each table once). What is left is about a minute of CPU, most of it the audit record
every request writes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, unquote_plus, urlencode

import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from ehr import names
from ehr.api.routes import ROUTES
from ehr.fhir.search.definitions import supported_parameters
from infra.local.gateway import LocalGateway, RouteTable
from infra.local.issuer import DevIssuer
from tests.integration.security.support import (
    ATTACKER,
    VICTIM,
    AttackerPool,
    Client,
    Key,
    Probe,
    Reply,
    Victim,
    base,
    bearer,
    entry_status,
    fhir_escape,
    finds,
    location_key,
    read_back,
    type_totals,
    victim_terms,
)

MIN_ATTEMPTS = 2000
TOKEN_NAMES = ("user", "system")
# The matrix runs in this module's first test (fixture setup counts): about a minute of CPU, and
# several on a loaded machine after other modules filled the tables; more than the suite's 600 s.
pytestmark = pytest.mark.timeout(1200)


# -- judging answers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    kind: str  # "leak" | "deviation"
    interaction: str
    what: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.interaction}: {self.what} -> {self.detail}"


def canonical(resource: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in resource.items() if k != "meta"}, sort_keys=True)


def resources_in(document: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every resource in a response with what holds it (its Bundle entry, or itself)."""
    stack: list[tuple[Any, Any]] = [(document, document)]
    while stack:
        node, holder = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("resourceType"), str) and isinstance(node.get("id"), str):
                yield node, holder
            for name, value in node.items():
                stack.append((value, node if name == "resource" else holder))
        elif isinstance(node, list):
            stack += [(item, holder) for item in node]


def matched_entries(document: Any) -> int:
    """Search entries (match or include) anywhere in a response."""
    return sum(
        1
        for _, holder in resources_in(document)
        if isinstance(holder, dict) and (holder.get("search") or {}).get("mode") in ("match", "include")
    )


def _totals(document: Any) -> list[int]:
    """Non-zero searchset totals anywhere in a response (a count is an existence oracle too)."""
    found = []
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("resourceType") == "Bundle" and node.get("total"):
                found.append(node["total"])
            stack += list(node.values())
        elif isinstance(node, list):
            stack += node
    return found


def normal(text: str, key: Key | str) -> str:
    """An answer with the id it concerns (and the request id) taken out, to compare it with a control's."""
    text = re.sub(r"X-Request-Id: \S+", "", text)
    text = re.sub(r"version \d+", "version {n}", text)
    if isinstance(key, tuple):
        text = text.replace(f"{key[0]}/{key[1]}", "{ref}").replace(key[1], "{id}")
        return text
    return text.replace(key, "{value}").replace(quote(key, safe=""), "{value}")


GROUPS = {
    "bait": ("_include/_revinclude through", "chained search through bait", "$everything through bait"),
    "writes": (
        "update-as-create",
        "conditional create",
        "conditional update",
        "transaction update-as-create",
        "transaction conditional create",
        "transaction conditional update",
        "read of clinic-b's own copy",
        "$everything of clinic-b's own copy",
    ),
    "transactions": ("transaction",),
    "cursors": ("cursor replay", "forged cursor"),
    "searches": ("search", "chained search", "type history"),
    "tenant mismatch": ("tenant mismatch",),
    "tokens via the gateway": ("token:",),
    "tokens to the function": ("token, authorizer bypassed",),
}


def group_of(interaction: str) -> str:
    """The summary group of an interaction (first matching prefix; the rest are by-id attempts)."""
    for group, prefixes in GROUPS.items():
        if interaction.startswith(prefixes):
            return group
    return "by id or identifier"


class Ledger:
    """Counts attempts per interaction and judges every answer."""

    def __init__(self, victim: Victim) -> None:
        self.victim = victim
        self.attempts: Counter[str] = Counter()
        self.channels: Counter[str] = Counter()
        self.findings: list[Finding] = []
        self.attacker_own: set[Key] = set()  # resources clinic-b created (some with clinic-a's ids)
        self._victim_content = {k: canonical(b) for k, b in [*victim.bodies.items(), *victim.deleted.items()]}
        ordered = sorted(victim.markers, key=len, reverse=True)
        self._markers = re.compile("|".join(re.escape(m) for m in ordered))
        self.refusals: dict[str, set[str]] = {}  # group -> distinct refusal bodies

    @property
    def total(self) -> int:
        return sum(self.attempts.values())

    @property
    def leaks(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "leak"]

    @property
    def deviations(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "deviation"]

    def markers_in(self, text: str) -> set[str]:
        return set(self._markers.findall(text))

    def own(self, reply: Reply) -> None:
        """Remember what clinic-b just created (REST Location, Bundle entry locations)."""
        if reply.status >= 300:
            return
        if reply.headers.get("Location"):
            self.attacker_own.add(location_key(reply.headers["Location"]))
        document = reply.document
        for entry in document.get("entry") or [] if isinstance(document, dict) else []:
            location = (entry.get("response") or {}).get("location")
            if location and entry_status(entry) in (200, 201):
                self.attacker_own.add(location_key(location))

    def judge(
        self,
        *,
        interaction: str,
        channel: str,
        what: str,
        request: str,
        status: int,
        text: str,
        document: Any,
        expect: Collection[int],
        control: tuple[int, str] | None = None,
        subject: Key | str | None = None,
        refusal: str | None = None,
        empty: bool = False,
    ) -> None:
        self.attempts[interaction] += 1
        self.channels[channel] += 1

        def leak(detail: str) -> None:
            self.findings.append(Finding("leak", interaction, what, detail))

        if status >= 500:
            leak(f"{status}: {text[:300]}")
        allowed = self.markers_in(request) | self.markers_in(unquote_plus(request))
        for resource, holder in resources_in(document):
            key = (resource["resourceType"], resource["id"])
            if key in self._victim_content:
                if key not in self.attacker_own:
                    leak(f"{status} returned clinic-a's {key[0]}/{key[1]}")
                elif canonical(resource) == self._victim_content[key]:
                    leak(f"{status} returned clinic-a's content under {key[0]}/{key[1]}")
            if key in self.attacker_own:
                allowed |= self.markers_in(json.dumps(holder))
        found = self.markers_in(text) - allowed
        if found:
            leak(f"{status} carries clinic-a values {sorted(found)[:5]}")
        if empty and (matched_entries(document) or _totals(document)):
            leak(f"{status} found {matched_entries(document)} resource(s), totals {_totals(document)}")
        if control is not None and subject is not None and (status, normal(text, subject)) != control:
            leak(
                f"answers {status} {text[:200]!r}; what never existed gets {control[0]} {control[1][:200]!r}"
            )
        if refusal is not None and status in expect:
            self.refusals.setdefault(refusal, set()).add(text)
        if status not in expect:
            kind = "leak" if 200 <= status < 300 and refusal is not None else "deviation"
            self.findings.append(
                Finding(kind, interaction, what, f"{status} (expected {sorted(expect)}): {text[:300]}")
            )

    def judge_reply(
        self, interaction: str, channel: str, what: str, sent: str, reply: Reply, **kwargs: Any
    ) -> None:
        headers = " ".join(f"{k}: {v}" for k, v in reply.headers.items())
        self.judge(
            interaction=interaction,
            channel=channel,
            what=what,
            request=sent,
            status=reply.status,
            text=f"{headers}\n{reply.text}",
            document=reply.document,
            **kwargs,
        )

    def groups(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for interaction, count in self.attempts.items():
            totals[group_of(interaction)] += count
        return dict(totals)

    def summary(self) -> str:
        counts = f"{self.total} attempts, {len(self.leaks)} leaks, {len(self.deviations)} deviations"
        lines = [f"attack matrix: {counts}"]
        lines.append("  per channel: " + ", ".join(f"{k} {v}" for k, v in sorted(self.channels.items())))
        lines.append("  per group: " + ", ".join(f"{k} {v}" for k, v in self.groups().items()))
        width = max(len(k) for k in self.attempts)
        lines += [f"  {k:<{width}} {v:>5}" for k, v in sorted(self.attempts.items())]
        return "\n".join(lines)


# -- the attacker ----------------------------------------------------------------------------------


@dataclass
class Attacker:
    client: Client
    ledger: Ledger
    victim: Victim
    pool: AttackerPool
    auth: dict[str, str]  # token name -> Authorization header value
    bait: list[Key] = field(default_factory=list)

    @property
    def b(self) -> str:
        return base(ATTACKER)

    @property
    def a(self) -> str:
        return base(VICTIM)

    def send(
        self, method: str, path: str, token: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[str, Reply]:
        payload = body.decode() if isinstance(body, bytes) else json.dumps(body)
        sent = f"{method} {path}\n{json.dumps(headers or {})}\n{payload}"
        return sent, self.client.call(method, path, self.auth.get(token, token), body, headers)

    # -- batches -------------------------------------------------------------------------------

    def batch(
        self,
        interaction: str,
        token: str,
        entries: Sequence[tuple[dict[str, Any], Collection[int], Key | str | None]],
        *,
        controls: Mapping[str, dict[str, Any]] | None = None,
        empty: bool = False,
    ) -> None:
        """``entries``: (batch entry, expected statuses, subject whose answer must equal the control's).

        ``controls`` maps a resource type to an entry that names something that never existed;
        each subject of that type must get the same answer.
        """
        controls = controls or {}
        control_types = sorted(controls)
        sent = [e for e, _, _ in entries] + [controls[t] for t in control_types]
        answers = list(self.client.batch_entries(ATTACKER, self.auth[token], sent))
        control_answers: dict[str, tuple[int, str]] = {}
        for resource_type, (entry, answer, reply) in zip(control_types, answers[len(entries) :], strict=True):
            subject = _control_subject(entry)
            control_answers[resource_type] = (entry_status(answer), normal(json.dumps(answer), subject))
        for (entry, expect, subject), (_, answer, reply) in zip(
            entries, answers[: len(entries)], strict=True
        ):
            request = entry["request"]
            status = entry_status(answer) if answer is not None else reply.status
            control = None
            if subject is not None:
                kind = subject[0] if isinstance(subject, tuple) else "identifier"
                control = control_answers.get(kind)
            self.ledger.judge(
                interaction=interaction,
                channel="batch entry",
                what=f"batch {request['method']} {request['url'][:160]} [{token}]",
                request=json.dumps(entry),
                status=status,
                text=json.dumps(answer) if answer is not None else reply.text,
                document=answer if answer is not None else reply.document,
                expect=expect,
                control=control,
                subject=subject,
                empty=empty,
            )

    def transaction(
        self,
        interaction: str,
        token: str,
        entries: list[dict[str, Any]],
        expect: Collection[int],
        **kwargs: Any,
    ) -> Reply:
        body = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        sent, reply = self.send("POST", self.b, token, body)
        self.ledger.judge_reply(
            interaction,
            "transaction",
            f"transaction of {len(entries)} [{token}]",
            sent,
            reply,
            expect=expect,
            **kwargs,
        )
        return reply


def _control_subject(entry: Mapping[str, Any]) -> Key | str:
    url = entry["request"]["url"]
    if "?" in url:
        return unquote_plus(url.split("=", 1)[1].split("&", 1)[0])
    parts = url.split("/")
    return parts[0], parts[1]


def fresh(resource_type: str) -> Key:
    return resource_type, str(uuid.uuid4())


def patch_entry(key: Key) -> dict[str, Any]:
    operations = [{"op": "add", "path": "/language", "value": "en"}]
    return {
        "resource": {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": base64.b64encode(json.dumps(operations).encode()).decode(),
        },
        "request": {"method": "PATCH", "url": f"{key[0]}/{key[1]}"},
    }


def identifier_query(identifier: str) -> str:
    system, _, value = identifier.partition("|")
    return f"Patient?identifier={quote(f'{fhir_escape(system)}|{fhir_escape(value)}', safe='')}"


# -- phase 1: clinic-a's ids and values on clinic-b's own URL --------------------------------------


def reads_by_id(attacker: Attacker) -> None:
    victim = attacker.victim
    keys = victim.keys
    types = victim.types()
    for token in TOKEN_NAMES:
        read = {t: {"request": {"method": "GET", "url": "/".join(fresh(t))}} for t in types}
        attacker.batch(
            "read",
            token,
            [({"request": {"method": "GET", "url": f"{t}/{i}"}}, (404,), (t, i)) for t, i in keys],
            controls=read,
        )
        versions = [((t, i), 1) for t, i in keys] + [(("Patient", victim.canary), 2)]
        vread = {t: {"request": {"method": "GET", "url": "/".join(fresh(t)) + "/_history/1"}} for t in types}
        attacker.batch(
            "vread",
            token,
            [
                ({"request": {"method": "GET", "url": f"{t}/{i}/_history/{v}"}}, (404,), (t, i))
                for (t, i), v in versions
            ],
            controls=vread,
        )
        # Update by id with a version condition: the attacker's body, clinic-a's id and version
        update = {t: _if_match_put(attacker, fresh(t)) for t in types}
        attacker.batch(
            "update (If-Match)",
            token,
            [(_if_match_put(attacker, k), (412,), k) for k in keys],
            controls=update,
        )
        patch = {t: patch_entry(fresh(t)) for t in types}
        attacker.batch("patch", token, [(patch_entry(k), (404,), k) for k in keys], controls=patch)
        delete = {t: {"request": {"method": "DELETE", "url": "/".join(fresh(t))}} for t in types}
        attacker.batch(
            "delete",
            token,
            [({"request": {"method": "DELETE", "url": f"{t}/{i}"}}, (404,), (t, i)) for t, i in keys],
            controls=delete,
        )
        # Conditional delete keyed on clinic-a's identifiers: nothing of clinic-b's matches
        never = f"urn:oid:2.16.840.1.113883.19.5.99|NEVER-{uuid.uuid4().hex}"
        conditional = {"identifier": {"request": {"method": "DELETE", "url": identifier_query(never)}}}
        attacker.batch(
            "conditional delete",
            token,
            [
                ({"request": {"method": "DELETE", "url": identifier_query(i)}}, (204,), i)
                for i in victim.identifiers
            ],
            controls=conditional,
        )


def _if_match_put(attacker: Attacker, key: Key) -> dict[str, Any]:
    return {
        "resource": attacker.pool.body(key[0], key[1]),
        "request": {"method": "PUT", "url": f"{key[0]}/{key[1]}", "ifMatch": 'W/"1"'},
    }


def searches(attacker: Attacker, probes: list[Probe]) -> None:
    """Every probe once, tokens taking turns; chains also count as searches of their own kind."""
    for n, token in enumerate(TOKEN_NAMES):
        chosen = probes[n :: len(TOKEN_NAMES)]
        attacker.batch(
            "search",
            token,
            [
                ({"request": {"method": "GET", "url": p.url()}}, (200,), None)
                for p in chosen
                if p.kind == "search"
            ],
        )
        attacker.batch(
            "chained search",
            token,
            [
                ({"request": {"method": "GET", "url": p.url()}}, (200,), None)
                for p in chosen
                if p.kind == "chain"
            ],
        )
    victim = attacker.victim
    # Parameters clinic-a's data has no value for: every one of them still searched, with :missing
    probed = {(p.resource_type, p.label.split(".", 1)[1]) for p in probes if p.kind == "search"}
    missing = [
        f"{t}?{code}:missing=true"
        for t in victim.types()
        for code in supported_parameters(t)
        if (t, code) not in probed
    ]
    for n, token in enumerate(TOKEN_NAMES):
        attacker.batch(
            "search (parameter without a clinic-a value, :missing)",
            token,
            [
                ({"request": {"method": "GET", "url": u}}, (200,), None)
                for u in missing[n :: len(TOKEN_NAMES)]
            ],
        )
    # clinic-a's ids by _id, also counted and with everything they refer to: clinic-b has none
    id_lists = []
    for resource_type in victim.types():
        ids = quote(",".join([i for t, i in victim.keys if t == resource_type][:3]), safe="")
        id_lists += [
            f"{resource_type}?_id={ids}",
            f"{resource_type}?_id={ids}&_include=*&_revinclude=*",
            f"{resource_type}?_id={ids}&_summary=count",
            f"{resource_type}?_id={ids}&_total=accurate&_count=1",
        ]
    for n, token in enumerate(TOKEN_NAMES):
        attacker.batch(
            "search _id list",
            token,
            [
                ({"request": {"method": "GET", "url": u}}, (200,), None)
                for u in id_lists[n :: len(TOKEN_NAMES)]
            ],
            empty=True,
        )
    for token in TOKEN_NAMES:
        # clinic-a's paging cursors, replayed in batch searches
        replay = [victim.cursors["search"], victim.cursors["search-sorted"]]
        attacker.batch(
            "cursor replay", token, [({"request": {"method": "GET", "url": c}}, (400,), None) for c in replay]
        )


def rest_reads(attacker: Attacker, patient_token: str) -> None:
    victim, b = attacker.victim, attacker.b
    controls: dict[str, tuple[int, str]] = {}
    operations = {
        "read": lambda k: f"{b}/{k[0]}/{k[1]}",
        "vread": lambda k: f"{b}/{k[0]}/{k[1]}/_history/1",
        "instance history": lambda k: f"{b}/{k[0]}/{k[1]}/_history",
    }
    for interaction, path in operations.items():
        control = fresh("Patient")
        _, reply = attacker.send("GET", path(control), "user")
        controls[interaction] = (reply.status, normal(_text(reply), control))
    for token in (*TOKEN_NAMES, patient_token):
        keys = (
            victim.sample
            if token in TOKEN_NAMES
            else [k for k in victim.sample if k[0] in ("Patient", "Observation")]
        )
        for key in keys:
            for interaction, path in operations.items():
                sent, reply = attacker.send("GET", path(key), token)
                attacker.ledger.judge_reply(
                    interaction,
                    "rest",
                    f"GET {path(key)} [{_name(token)}]",
                    sent,
                    reply,
                    expect=(404,),
                    control=controls[interaction],
                    subject=key,
                )
    control = fresh("Patient")
    _, reply = attacker.send("GET", f"{b}/Patient/{control[1]}/$everything", "user")
    everything = (reply.status, normal(_text(reply), control))
    for token in (*TOKEN_NAMES, patient_token):
        for patient in victim.patients:
            for suffix in ("", "?_count=1", "?_since=2000-01-01T00:00:00Z&_type=Observation"):
                path = f"{b}/Patient/{patient}/$everything{suffix}"
                sent, reply = attacker.send("GET", path, token)
                attacker.ledger.judge_reply(
                    "$everything",
                    "rest",
                    f"GET {path} [{_name(token)}]",
                    sent,
                    reply,
                    expect=(404,),
                    control=everything,
                    subject=("Patient", patient),
                )


def _text(reply: Reply) -> str:
    return "\n".join([" ".join(f"{k}: {v}" for k, v in reply.headers.items()), reply.text])


def _name(token: str) -> str:
    return token if token in ("user", "system", "victim") else "patient-context"


def rest_histories_and_searches(attacker: Attacker) -> None:
    victim, b, ledger = attacker.victim, attacker.b, attacker.ledger
    for n, resource_type in enumerate(victim.types()):
        token = TOKEN_NAMES[n % 2]
        for query in ("", "?_count=1000", "?_since=1900-01-01T00:00:00Z")[n % 3 : n % 3 + 1]:
            path = f"{b}/{resource_type}/_history{query}"
            sent, reply = attacker.send("GET", path, token)
            ledger.judge_reply("type history", "rest", f"GET {path} [{token}]", sent, reply, expect=(200,))
    # One search per type over REST (GET and POST _search), the rest of the probes ran in batches
    first: dict[str, Probe] = {}
    for probe in victim.probes:
        first.setdefault(f"{probe.resource_type}:{probe.kind}", probe)
    for n, probe in enumerate(first.values()):
        token = TOKEN_NAMES[n % 2]
        path = f"{b}/{probe.url()}"
        sent, reply = attacker.send("GET", path, token, headers={"Prefer": "handling=strict"})
        ledger.judge_reply("search (REST)", "rest", f"GET {path[:160]} [{token}]", sent, reply, expect=(200,))
        form = urlencode(probe.pairs).encode()
        sent, reply = attacker.send(
            "POST",
            f"{b}/{probe.resource_type}/_search",
            token,
            form,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        ledger.judge_reply(
            "search (POST _search)",
            "rest",
            f"POST {probe.resource_type}/_search {form[:120]!r} [{token}]",
            sent,
            reply,
            expect=(200,),
        )


def rest_writes_without_effect(attacker: Attacker) -> None:
    """PATCH, DELETE, update with If-Match and conditional delete over REST: refused or no match."""
    victim, b, ledger = attacker.victim, attacker.b, attacker.ledger
    patch = json.dumps([{"op": "replace", "path": "/active", "value": False}]).encode()
    patch_headers = {"Content-Type": "application/json-patch+json"}
    controls = {}
    for interaction in ("patch", "delete", "update (If-Match)"):
        key = fresh("Patient")
        reply = _rest_write(attacker, interaction, key, "user", patch, patch_headers)[1]
        controls[interaction] = (reply.status, normal(_text(reply), key))
    expected = {"patch": (404,), "delete": (404,), "update (If-Match)": (412,)}
    for n, key in enumerate(victim.sample):
        token = TOKEN_NAMES[n % 2]
        for interaction in ("patch", "delete", "update (If-Match)"):
            sent, reply = _rest_write(attacker, interaction, key, token, patch, patch_headers)
            ledger.judge_reply(
                interaction,
                "rest",
                f"{sent.split(chr(10))[0]} [{token}]",
                sent,
                reply,
                expect=expected[interaction],
                control=controls[interaction],
                subject=key,
            )
    never = f"urn:oid:2.16.840.1.113883.19.5.99|NEVER-{uuid.uuid4().hex}"
    _, reply = attacker.send("DELETE", f"{b}/{identifier_query(never)}", "user")
    control = (reply.status, normal(_text(reply), never))
    for n, identifier in enumerate(victim.identifiers):
        token = TOKEN_NAMES[n % 2]
        path = f"{b}/{identifier_query(identifier)}"
        sent, reply = attacker.send("DELETE", path, token)
        ledger.judge_reply(
            "conditional delete",
            "rest",
            f"DELETE {path} [{token}]",
            sent,
            reply,
            expect=(204,),
            control=control,
            subject=identifier,
        )


def _rest_write(
    attacker: Attacker, interaction: str, key: Key, token: str, patch: bytes, patch_headers: Mapping[str, str]
) -> tuple[str, Reply]:
    path = f"{attacker.b}/{key[0]}/{key[1]}"
    if interaction == "patch":
        return attacker.send("PATCH", path, token, patch, patch_headers)
    if interaction == "delete":
        return attacker.send("DELETE", path, token)
    return attacker.send("PUT", path, token, attacker.pool.body(key[0], key[1]), {"If-Match": 'W/"1"'})


def cursor_attacks(attacker: Attacker) -> None:
    victim, b, ledger = attacker.victim, attacker.b, attacker.ledger
    for token in TOKEN_NAMES:
        for interaction, path in victim.cursors.items():
            expect = (400, 404) if interaction == "everything" else (400,)
            sent, reply = attacker.send("GET", f"{b}/{path}", token)
            ledger.judge_reply(
                "cursor replay",
                "rest",
                f"GET {b}/{path[:80]}… ({interaction}) [{token}]",
                sent,
                reply,
                expect=expect,
            )
    search = victim.cursors["search"]
    stem, _, cursor = search.partition("&_cursor=")
    cursor = unquote_plus(cursor)
    middle = len(cursor) // 2
    flipped = cursor[:middle] + ("A" if cursor[middle] != "A" else "B") + cursor[middle + 1 :]
    alien_key = Fernet(Fernet.generate_key())
    forged_state = json.dumps({"t": ATTACKER, "q": "0" * 32, "s": {"offset": 0}}).encode()
    forgeries = {
        "one character flipped": flipped,
        "truncated": cursor[:-12],
        "extended": cursor + "AAAA",
        "another key": alien_key.encrypt(forged_state).decode(),
        "plain JSON naming clinic-a": base64.urlsafe_b64encode(
            json.dumps({"t": VICTIM, "s": {"offset": 0}}).encode()
        ).decode(),
        "empty": "",
        "not base64": "%%%not-a-cursor%%%",
        "history cursor on a search": unquote_plus(victim.cursors["type-history"].partition("&_cursor=")[2]),
        "search cursor on a sorted search": cursor,
    }
    for n, (label, forged) in enumerate(forgeries.items()):
        token = TOKEN_NAMES[n % 2]
        query = (
            stem
            if label != "search cursor on a sorted search"
            else victim.cursors["search-sorted"].partition("&_cursor=")[0]
        )
        path = f"{b}/{query}&_cursor={quote(forged, safe='')}"
        sent, reply = attacker.send("GET", path, token)
        expect = (400,) if forged else (200, 400)  # an empty cursor may count as none: clinic-b's first page
        ledger.judge_reply(
            "forged cursor", "rest", f"GET {stem}&_cursor=<{label}> [{token}]", sent, reply, expect=expect
        )
    form = f"_count=1&_cursor={quote(cursor, safe='')}".encode()
    sent, reply = attacker.send(
        "POST",
        f"{b}/Observation/_search",
        "system",
        form,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    ledger.judge_reply(
        "cursor replay",
        "rest",
        "POST Observation/_search with clinic-a's cursor [system]",
        sent,
        reply,
        expect=(400,),
    )


def transactions_without_effect(attacker: Attacker) -> None:
    """Transactions that resolve clinic-a's ids and identifiers but must find nothing of theirs."""
    victim, ledger = attacker.victim, attacker.ledger
    keys = victim.keys
    # DELETE of every clinic-a id: each entry resolves the id in clinic-b and finds nothing
    controls = {t: fresh(t) for t in victim.types()}
    deletes = [{"request": {"method": "DELETE", "url": f"{t}/{i}"}} for t, i in [*keys, *controls.values()]]
    conditional = [{"request": {"method": "DELETE", "url": identifier_query(i)}} for i in victim.identifiers]
    reply = attacker.transaction("transaction DELETE (whole)", "system", deletes + conditional, (200,))
    answers = (reply.document or {}).get("entry") or []
    answers += [None] * (len(deletes) + len(conditional) - len(answers))
    control_answers = dict(zip(controls, answers[len(keys) : len(deletes)], strict=True))
    subjects: list[Key | None] = [*keys, *([None] * len(conditional))]
    judged = deletes[: len(keys)] + conditional
    for entry, answer, subject in zip(
        judged, answers[: len(keys)] + answers[len(deletes) :], subjects, strict=True
    ):
        control = None
        if subject is not None:
            control_answer = control_answers[subject[0]]
            control = (entry_status(control_answer), normal(json.dumps(control_answer), controls[subject[0]]))
        ledger.judge(
            interaction="transaction DELETE entry",
            channel="transaction entry",
            what=f"transaction DELETE {entry['request']['url'][:120]} [system]",
            request=json.dumps(entry),
            status=entry_status(answer),
            text=json.dumps(answer),
            document=answer,
            expect=(204,),
            control=control,
            subject=subject,
        )
    for token in TOKEN_NAMES:
        for key in victim.sample:
            attacker.transaction(
                "transaction GET",
                token,
                [{"request": {"method": "GET", "url": f"{key[0]}/{key[1]}"}}],
                (404,),
            )
            attacker.transaction("transaction PATCH", token, [patch_entry(key)], (404,))
            attacker.transaction(
                "transaction PUT (ifMatch)",
                token,
                [
                    {
                        "resource": attacker.pool.body(key[0], key[1]),
                        "request": {"method": "PUT", "url": f"{key[0]}/{key[1]}", "ifMatch": 'W/"1"'},
                    }
                ],
                (412,),
            )

    def conditional_reference(identifier: str) -> list[dict[str, Any]]:
        observation = attacker.pool.body("Observation")
        observation["subject"] = {"reference": f"Patient?identifier={identifier}"}
        return [{"resource": observation, "request": {"method": "POST", "url": "Observation"}}]

    never = f"urn:oid:2.16.840.1.113883.19.5.99|NEVER-{uuid.uuid4().hex}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": conditional_reference(never)}
    _, reply = attacker.send("POST", attacker.b, "user", bundle)
    control = (reply.status, normal(_text(reply), never))
    for n, identifier in enumerate(victim.identifiers):
        token = TOKEN_NAMES[n % 2]
        attacker.transaction(
            "transaction conditional reference",
            token,
            conditional_reference(identifier),
            (412,),
            control=control,
            subject=identifier,
        )
        conditional_patch = patch_entry(("Patient", "x"))
        conditional_patch["request"]["url"] = identifier_query(identifier)
        attacker.transaction("transaction conditional PATCH", token, [conditional_patch], (404,))


# -- phase 2: bait ---------------------------------------------------------------------------------


def lay_bait(attacker: Attacker) -> None:
    """clinic-b stores resources whose references name clinic-a's resources (a staged transaction:
    big enough to stay off moto's per-item table copies)."""
    victim = attacker.victim
    of = {t: [i for kt, i in victim.keys if kt == t] for t in victim.types()}
    entries = []
    for n, patient in enumerate(victim.patients):
        patient_ref = {"reference": f"Patient/{patient}"}
        encounter = {"reference": f"Encounter/{of['Encounter'][n % len(of['Encounter'])]}"}
        practitioner = {"reference": f"Practitioner/{of['Practitioner'][n % len(of['Practitioner'])]}"}
        organization = {"reference": f"Organization/{of['Organization'][n % len(of['Organization'])]}"}
        observation_ref = {"reference": f"Observation/{of['Observation'][n]}"}
        for _ in range(3):  # several of each, so that includes and chains have pages to cross
            observation = attacker.pool.body("Observation")
            observation.update(
                subject=patient_ref,
                encounter=encounter,
                performer=[practitioner, organization],
                hasMember=[observation_ref],
            )
            report = attacker.pool.body("DiagnosticReport")
            report.update(
                subject=patient_ref, encounter=encounter, result=[observation_ref], performer=[practitioner]
            )
            visit = attacker.pool.body("Encounter")
            visit.update(
                subject=patient_ref, serviceProvider=organization, participant=[{"individual": practitioner}]
            )
            condition = attacker.pool.body("Condition")
            condition.update(subject=patient_ref, encounter=encounter, asserter=practitioner)
            immunization = attacker.pool.body("Immunization")
            immunization.update(patient=patient_ref, encounter=encounter)
            entries += [
                {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
                for r in (observation, report, visit, condition, immunization)
            ]
    own_patient = attacker.pool.body("Patient")
    own_patient.update(
        generalPractitioner=[{"reference": f"Practitioner/{of['Practitioner'][0]}"}],
        managingOrganization={"reference": f"Organization/{of['Organization'][0]}"},
        link=[{"other": {"reference": f"Patient/{victim.patients[0]}"}, "type": "seealso"}],
    )
    entries.append({"resource": own_patient, "request": {"method": "POST", "url": "Patient"}})
    _, reply = attacker.send(
        "POST", attacker.b, "user", {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    assert reply.status == 200, f"the bait could not be stored: {reply.status} {reply.text[:1000]}"
    attacker.ledger.own(reply)
    attacker.bait = [location_key(e["response"]["location"]) for e in reply.document["entry"]]


def bait_attacks(attacker: Attacker, patient_token: str) -> None:
    victim, b, ledger = attacker.victim, attacker.b, attacker.ledger
    patient = victim.patients[0]
    includes = [
        "Observation?_include=*",
        "Observation?_include:iterate=*",
        "Observation?_include=Observation:subject&_include=Observation:encounter&_include=Observation:performer",
        "Observation?_include=Observation:has-member&_include:iterate=Observation:subject",
        f"Observation?patient=Patient/{patient}&_include=Observation:patient",
        f"Observation?subject={patient}&_include=Observation:subject:Patient&_revinclude=DiagnosticReport:result",
        "Encounter?_include=Encounter:service-provider&_include=Encounter:participant&_include=Encounter:subject",
        "DiagnosticReport?_include=DiagnosticReport:result&_include:iterate=Observation:has-member",
        "Condition?_include=Condition:asserter&_include=Condition:encounter",
        "Immunization?_include=*&_revinclude=*",
        "Patient?_include=Patient:general-practitioner&_include=Patient:organization&_include=Patient:link",
        "Patient?_revinclude=Observation:subject&_revinclude=Encounter:subject&_include:iterate=*",
        f"Patient?_id={patient}&_revinclude=Observation:subject&_revinclude=Immunization:patient",
        f"Practitioner?_id={','.join(i for t, i in victim.keys if t == 'Practitioner')}&_revinclude=*",
        "Organization?_revinclude=Encounter:service-provider&_revinclude=Patient:organization",
    ]
    for n, query in enumerate(includes):
        for token in (*TOKEN_NAMES, patient_token) if n < 2 else (TOKEN_NAMES[n % 2],):
            path = f"{b}/{quote(query, safe='?=&:*,/')}"
            sent, reply = attacker.send("GET", path, token)
            ledger.judge_reply(
                "_include/_revinclude through references",
                "rest",
                f"GET {query[:150]} [{_name(token)}]",
                sent,
                reply,
                expect=(200,) if token in TOKEN_NAMES else (200, 403),
            )
    # Chains whose references the bait carries: a match could only come from clinic-a's data
    terms = victim_terms(victim.bodies)
    baited = {t for t, _ in attacker.bait}
    chains = [p for p in victim.probes if p.kind == "chain" and p.resource_type in baited]
    for n, token in enumerate(TOKEN_NAMES):
        attacker.batch(
            "chained search through bait",
            token,
            [
                ({"request": {"method": "GET", "url": p.url()}}, (200,), None)
                for p in chains[n::2]
                if finds(p, terms)
            ],
            empty=True,
        )
    # $everything on clinic-b's URL: clinic-b holds compartment entries for clinic-a's patient ids
    control = fresh("Patient")
    _, reply = attacker.send("GET", f"{b}/Patient/{control[1]}/$everything", "user")
    expected = (reply.status, normal(_text(reply), control))
    for token in (*TOKEN_NAMES, patient_token):
        for patient_id in victim.patients:
            path = f"{b}/Patient/{patient_id}/$everything"
            sent, reply = attacker.send("GET", path, token)
            ledger.judge_reply(
                "$everything through bait",
                "rest",
                f"GET {path} [{_name(token)}]",
                sent,
                reply,
                expect=(404,),
                control=expected,
                subject=("Patient", patient_id),
            )


# -- phase 3: writes -------------------------------------------------------------------------------


def writes(attacker: Attacker) -> None:
    victim, b, ledger = attacker.victim, attacker.b, attacker.ledger
    # Update-as-create with a clinic-a id over REST: creates clinic-b's own resource, version 1
    key = ("Patient", victim.canary)
    body = {"resourceType": "Patient", "id": victim.canary, "active": True}
    sent, reply = attacker.send("PUT", f"{b}/Patient/{victim.canary}", "user", body)
    ledger.own(reply)
    ledger.judge_reply(
        "update-as-create", "rest", f"PUT Patient/{victim.canary} [user]", sent, reply, expect=(201,)
    )
    _check_version_one(attacker, "update-as-create", reply, key)
    # Conditional create and update keyed on clinic-a identifiers: no match in clinic-b, so create
    headers = {"If-None-Exist": f"identifier={victim.identifiers[0]}"}
    sent, reply = attacker.send(
        "POST", f"{b}/Patient", "system", {"resourceType": "Patient", "active": False}, headers
    )
    ledger.own(reply)
    ledger.judge_reply(
        "conditional create",
        "rest",
        f"POST Patient If-None-Exist {victim.identifiers[0]} [system]",
        sent,
        reply,
        expect=(201,),
    )
    path = f"{b}/{identifier_query(victim.identifiers[-1])}"
    sent, reply = attacker.send("PUT", path, "user", {"resourceType": "Patient", "gender": "unknown"})
    ledger.own(reply)
    ledger.judge_reply("conditional update", "rest", f"PUT {path} [user]", sent, reply, expect=(201,))
    # One staged transaction: PUT on every other clinic-a id, and conditional entries on its identifiers
    keys = [k for k in victim.keys if k != key]
    entries = [
        {"resource": attacker.pool.body(t, i), "request": {"method": "PUT", "url": f"{t}/{i}"}}
        for t, i in keys
    ]
    for identifier in victim.identifiers:
        entries.append(
            {
                "resource": attacker.pool.body("Patient"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={identifier}"},
            }
        )
        entries.append(
            {
                "resource": attacker.pool.body("Patient"),
                "request": {"method": "PUT", "url": identifier_query(identifier)},
            }
        )
    sent, reply = attacker.send(
        "POST", b, "system", {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    ledger.own(reply)
    answers = (reply.document or {}).get("entry") or [None] * len(entries)
    if reply.status != 200:
        ledger.judge_reply(
            "transaction PUT (whole)",
            "transaction",
            f"transaction of {len(entries)} PUT/POST [system]",
            sent,
            reply,
            expect=(200,),
        )
        return
    for entry, answer in zip(entries, answers, strict=True):
        request = entry["request"]
        interaction = {
            "PUT": "transaction update-as-create entry",
            "POST": "transaction conditional create entry",
        }[request["method"]]
        if "?" in request["url"]:
            interaction = "transaction conditional update entry"
        ledger.judge(
            interaction=interaction,
            channel="transaction entry",
            what=f"transaction {request['method']} {request['url'][:100]} [system]",
            request=json.dumps(entry),
            status=entry_status(answer),
            text=json.dumps(answer),
            document=answer,
            expect=(201,),
        )
        location = (answer or {}).get("response", {}).get("location", "")
        by_id = request["method"] == "PUT" and "?" not in request["url"]
        if location and by_id and not location.endswith("/_history/1"):
            ledger.findings.append(
                Finding(
                    "leak",
                    interaction,
                    request["url"],
                    f"created as {location}: a version after clinic-a's",
                )
            )
    # clinic-b now reads its own copies under clinic-a's ids: never clinic-a's content
    for n, key in enumerate(victim.sample):
        token = TOKEN_NAMES[n % 2]
        for path in (f"{b}/{key[0]}/{key[1]}", f"{b}/{key[0]}/{key[1]}/_history"):
            sent, reply = attacker.send("GET", path, token)
            ledger.judge_reply(
                "read of clinic-b's own copy", "rest", f"GET {path} [{token}]", sent, reply, expect=(200,)
            )
    for patient in victim.patients:
        path = f"{b}/Patient/{patient}/$everything"
        sent, reply = attacker.send("GET", path, "system")
        ledger.judge_reply(
            "$everything of clinic-b's own copy", "rest", f"GET {path} [system]", sent, reply, expect=(200,)
        )


def _check_version_one(attacker: Attacker, interaction: str, reply: Reply, key: Key) -> None:
    etag = reply.headers.get("ETag", "")
    if reply.status == 201 and etag != 'W/"1"':
        attacker.ledger.findings.append(
            Finding(
                "leak",
                interaction,
                f"{key[0]}/{key[1]}",
                f"created with ETag {etag}: continues clinic-a's versions",
            )
        )


# -- phase 4: clinic-a's URL with clinic-b's tokens -------------------------------------------------


def tenant_mismatch(attacker: Attacker, tokens: Sequence[str]) -> None:
    """Every route of clinic-a's FHIR base with clinic-b's valid tokens: 403, always the same 403."""
    victim, a = attacker.victim, attacker.a
    observation = next(k for k in victim.sample if k[0] == "Observation")
    for token in tokens:
        for key in (("Patient", victim.canary), observation, next(iter(victim.deleted))):
            for method, path, body, headers, interaction in _every_route(attacker, a, key):
                sent, reply = attacker.send(method, path, token, body, headers)
                attacker.ledger.judge_reply(
                    f"tenant mismatch: {interaction}",
                    "rest",
                    f"{method} {path[:140]} [{_name(token)}]",
                    sent,
                    reply,
                    expect=(403,),
                    refusal="tenant mismatch",
                )
        for interaction, path in victim.cursors.items():
            sent, reply = attacker.send("GET", f"{a}/{path}", token)
            attacker.ledger.judge_reply(
                "tenant mismatch: clinic-a's own cursor",
                "rest",
                f"GET {a}/{path[:60]}… ({interaction}) [{_name(token)}]",
                sent,
                reply,
                expect=(403,),
                refusal="tenant mismatch",
            )
    # URL tricks around the tenant segment
    tricks = [
        (f"/tenants/{VICTIM}/fhir/Patient/{victim.canary}?tenant={ATTACKER}", {}),
        (f"/tenants/{VICTIM}/fhir/Patient/{victim.canary}", {"X-Tenant": ATTACKER, "X-Tenant-Id": ATTACKER}),
        (f"/tenants/{VICTIM.upper()}/fhir/Patient/{victim.canary}", {}),
        (f"/tenants/{VICTIM}%20/fhir/Patient/{victim.canary}", {}),
        (f"/tenants/{ATTACKER}%2F..%2F{VICTIM}/fhir/Patient/{victim.canary}", {}),
        (f"/tenants/{ATTACKER}/../{VICTIM}/fhir/Patient/{victim.canary}", {}),
        (f"/tenants/{VICTIM}/fhir/Patient/{victim.canary}", {"Host": "clinic-b.example"}),
    ]
    for path, headers in tricks:
        sent, reply = attacker.send("GET", path, "user", None, headers)
        attacker.ledger.judge_reply(
            "tenant mismatch: URL and header tricks",
            "rest",
            f"GET {path} {headers} [user]",
            sent,
            reply,
            expect=(403, 404),
            refusal="url trick",
        )


def _every_route(
    attacker: Attacker, root: str, key: Key
) -> list[tuple[str, str, Any, dict[str, str] | None, str]]:
    victim = attacker.victim
    t, i = key
    identifier = quote(victim.identifiers[0], safe="")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    patch = {"Content-Type": "application/json-patch+json"}
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"{t}/{i}"}}],
    }
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"{t}/{i}"}}],
    }
    chain = next(p for p in victim.probes if p.kind == "chain")
    routes: list[tuple[str, str, Any, dict[str, str] | None, str]] = [
        ("GET", f"{root}/{t}/{i}", None, None, "read"),
        ("GET", f"{root}/{t}/{i}/_history/1", None, None, "vread"),
        ("GET", f"{root}/{t}/{i}/_history", None, None, "instance history"),
        ("PUT", f"{root}/{t}/{i}", attacker.pool.body(t, i), None, "update"),
        ("PATCH", f"{root}/{t}/{i}", json.dumps([{"op": "remove", "path": "/id"}]).encode(), patch, "patch"),
        ("DELETE", f"{root}/{t}/{i}", None, None, "delete"),
    ]
    if key == ("Patient", victim.canary):
        routes += [
            ("GET", f"{root}/metadata", None, None, "capabilities"),
            ("GET", f"{root}/Patient/{i}/$everything", None, None, "$everything"),
            ("GET", f"{root}/{t}/_history", None, None, "type history"),
            ("GET", f"{root}/Patient?identifier={identifier}", None, None, "search"),
            ("POST", f"{root}/Patient/_search", f"identifier={identifier}".encode(), form, "search (POST)"),
            ("GET", f"{root}/Observation?_include=*&_revinclude=*", None, None, "include"),
            ("GET", f"{root}/{chain.url()}", None, None, "chained search"),
            ("POST", f"{root}/Patient", attacker.pool.body("Patient"), None, "create"),
            (
                "POST",
                f"{root}/Patient",
                attacker.pool.body("Patient"),
                {"If-None-Exist": f"identifier={victim.identifiers[0]}"},
                "conditional create",
            ),
            (
                "PUT",
                f"{root}/Patient?identifier={identifier}",
                attacker.pool.body("Patient"),
                None,
                "conditional update",
            ),
            ("DELETE", f"{root}/Patient?identifier={identifier}", None, None, "conditional delete"),
            ("POST", root, bundle, None, "batch"),
            ("POST", root, transaction, None, "transaction"),
            ("GET", f"{root}/AuditEvent?patient={i}", None, None, "audit trail"),
        ]
    return routes


# -- phase 5: forged and foreign tokens -------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)]
    )


def forged_tokens(
    issuer: DevIssuer, other_issuer: DevIssuer, genuine_b: str
) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, Authorization header, expected statuses) of every token attack."""
    key = serialization.load_pem_private_key(issuer.key_file.read_bytes(), password=None)
    other = serialization.load_pem_private_key(other_issuer.key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and isinstance(other, rsa.RSAPrivateKey)
    now = int(time.time())
    claims = {
        "iss": issuer.issuer,
        "aud": issuer.audience,
        "sub": "intruder",
        "client_id": "intruder",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "scope": "user/*.cruds system/*.cruds",
        names.DEFAULT_TENANT_CLAIM: VICTIM,
    }

    def signed(
        changes: Mapping[str, Any] = (),
        drop: Sequence[str] = (),
        *,
        signer: Any = key,
        algorithm: str = "RS256",
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        body = {k: v for k, v in {**claims, **dict(changes)}.items() if k not in drop}
        return jwt.encode(
            body,
            signer,
            algorithm=algorithm,
            headers=dict(headers if headers is not None else {"kid": issuer.kid}),
        )

    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.dumps(issuer.jwks()["keys"][0]).encode()

    def hs256(secret: bytes) -> str:
        header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        return f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"

    b_header, b_payload, b_signature = genuine_b.split(".")
    b_claims = json.loads(base64.urlsafe_b64decode(b_payload + "=" * (-len(b_payload) % 4)))
    tampered = ".".join(
        [b_header, b64url(json.dumps({**b_claims, names.DEFAULT_TENANT_CLAIM: VICTIM}).encode()), b_signature]
    )
    genuine_a = signed()
    a_header, a_payload, a_signature = genuine_a.split(".")
    embedded = json.loads(RSAAlgorithm.to_jwk(other.public_key()))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    unauthorized = (401,)
    forbidden = (403,)
    return [
        ("expired", bearer(signed({"exp": now - 3600, "iat": now - 7200, "nbf": now - 7200})), unauthorized),
        ("not yet valid", bearer(signed({"nbf": now + 3600})), unauthorized),
        ("alg none", bearer(raw_token({"alg": "none", "typ": "JWT"}, claims)), unauthorized),
        (
            "alg None",
            bearer(raw_token({"alg": "None", "typ": "JWT", "kid": issuer.kid}, claims)),
            unauthorized,
        ),
        (
            "alg none with the genuine signature",
            bearer(f"{b64url(json.dumps({'alg': 'none'}).encode())}.{a_payload}.{a_signature}"),
            unauthorized,
        ),
        ("HS256 keyed with the public key (PEM)", bearer(hs256(public_pem)), unauthorized),
        ("HS256 keyed with the public JWK", bearer(hs256(jwk)), unauthorized),
        (
            "signed by another key (same issuer name)",
            bearer(other_issuer.mint(tenant=VICTIM, scope="user/*.cruds")),
            unauthorized,
        ),
        ("another key under the genuine kid", bearer(signed(signer=other)), unauthorized),
        ("another key without kid", bearer(signed(signer=other, headers={})), unauthorized),
        (
            "another key embedded as jwk header",
            bearer(signed(signer=other, headers={"jwk": embedded})),
            unauthorized,
        ),
        (
            "another key at a jku URL",
            bearer(signed(signer=other, headers={"jku": "https://attacker.example/jwks.json"})),
            unauthorized,
        ),
        ("PS256 with another key", bearer(signed(signer=other, algorithm="PS256")), unauthorized),
        (
            "ES256 with an attacker key under the genuine kid",
            bearer(signed(signer=ec_key, algorithm="ES256")),
            unauthorized,
        ),
        ("wrong audience", bearer(signed({"aud": "urn:someone-else"})), unauthorized),
        ("wrong issuer", bearer(signed({"iss": "https://attacker.example"})), unauthorized),
        ("no exp", bearer(signed(drop=["exp"])), unauthorized),
        ("no sub", bearer(signed(drop=["sub"])), unauthorized),
        ("clinic-b's token with the tenant changed", bearer(tampered), unauthorized),
        (
            "clinic-a payload with clinic-b's signature",
            bearer(f"{a_header}.{a_payload}.{b_signature}"),
            unauthorized,
        ),
        ("signature stripped", bearer(f"{a_header}.{a_payload}."), unauthorized),
        ("signature truncated", bearer(genuine_a[:-8]), unauthorized),
        ("not a JWT", bearer("not-a-token"), unauthorized),
        ("two dots", bearer(".."), unauthorized),
        ("Bearer without token", "Bearer ", unauthorized),
        ("Basic credentials", "Basic " + base64.b64encode(b"clinic-a:password").decode(), unauthorized),
        ("empty Authorization", "", unauthorized),
        ("no tenant claim", bearer(signed(drop=[names.DEFAULT_TENANT_CLAIM])), forbidden),
        ("tenant claim null", bearer(signed({names.DEFAULT_TENANT_CLAIM: None})), forbidden),
        ("tenant claim empty", bearer(signed({names.DEFAULT_TENANT_CLAIM: ""})), forbidden),
        ("tenant claim as a list", bearer(signed({names.DEFAULT_TENANT_CLAIM: [VICTIM]})), forbidden),
        (
            "tenant claim in upper case",
            bearer(signed({names.DEFAULT_TENANT_CLAIM: VICTIM.upper()})),
            forbidden,
        ),
        (
            "tenant claim with a suffix",
            bearer(signed({names.DEFAULT_TENANT_CLAIM: f"{VICTIM}#x"})),
            forbidden,
        ),
        ("tenant claim of clinic-b", bearer(signed({names.DEFAULT_TENANT_CLAIM: ATTACKER})), forbidden),
        ("tenant claim of acme-lab", bearer(signed({names.DEFAULT_TENANT_CLAIM: "acme-lab"})), forbidden),
        (
            "clinic-a only in another claim",
            bearer(signed({names.DEFAULT_TENANT_CLAIM: ATTACKER, "tenant_id": VICTIM, "tid": VICTIM})),
            forbidden,
        ),
        ("lower-case bearer scheme, clinic-b token", f"bearer {genuine_b}", forbidden),
    ]


def token_attacks(
    attacker: Attacker, tokens: list[tuple[str, str, tuple[int, ...]]], direct: LocalGateway
) -> None:
    victim, a = attacker.victim, attacker.a
    routes = _every_route(attacker, a, ("Patient", victim.canary))
    for name, authorization, expect in tokens:
        # A token the gateway lets through reaches the function; fewer routes for those (each is audited)
        chosen = (
            routes
            if 401 in expect
            else [r for r in routes if r[4] in ("read", "search", "create", "update", "delete", "batch")]
        )
        for method, path, body, headers, interaction in chosen:
            sent, reply = attacker.send(method, path, authorization, body, headers)
            attacker.ledger.judge_reply(
                f"token: {interaction}",
                "rest",
                f"{method} {path[:100]} [{name}]",
                sent,
                reply,
                expect=expect,
                refusal="token",
            )
    # Straight to the function, as if the authorizer were misconfigured or cached a stale answer
    saved = attacker.client.gateway
    attacker.client.gateway = direct
    try:
        for name, authorization, expect in tokens:
            for method, path, body, headers, interaction in routes[:1] + routes[9:10]:
                sent, reply = attacker.send(method, path, authorization, body, headers)
                attacker.ledger.judge_reply(
                    f"token, authorizer bypassed: {interaction}",
                    "function",
                    f"{method} {path[:100]} [{name}]",
                    sent,
                    reply,
                    expect=expect,
                    refusal="token (function)",
                )
    finally:
        attacker.client.gateway = saved


# -- the tests -------------------------------------------------------------------------------------


@dataclass
class MatrixRun:
    ledger: Ledger
    seconds: float
    requests: int
    probes: int
    probes_shown: int
    searchable: int
    phases: dict[str, float]  # CPU seconds (the wall clock also counts other processes)


@pytest.fixture(scope="module")
def matrix(
    client: Client,
    victim: Victim,
    tokens: Any,
    issuer: DevIssuer,
    other_issuer: DevIssuer,
    gateway: LocalGateway,
) -> MatrixRun:
    started, requests = time.perf_counter(), client.requests
    pool = AttackerPool()
    assert pool.covers(victim.types())
    ledger = Ledger(victim)
    patient_token = issuer.mint(
        tenant=ATTACKER, scope="patient/*.cruds", patient=victim.patients[0], client_id="clinic-b-patient-app"
    )
    auth = {
        "user": bearer(tokens.user),
        "system": bearer(tokens.system),
        patient_token: bearer(patient_token),
    }
    attacker = Attacker(client, ledger, victim, pool, auth)
    terms = victim_terms(victim.bodies)
    shown = [p for p in victim.probes if finds(p, terms)]
    direct = LocalGateway(gateway.functions, RouteTable(tuple(replace(r, auth=False) for r in ROUTES)))
    phases: dict[str, float] = {}
    for name, run in [
        # Phase 1: clinic-a's ids and values on clinic-b's own URL
        ("by id (batch)", lambda: reads_by_id(attacker)),
        ("searches (batch)", lambda: searches(attacker, victim.probes)),
        ("reads (REST)", lambda: rest_reads(attacker, patient_token)),
        ("histories and searches (REST)", lambda: rest_histories_and_searches(attacker)),
        ("writes without effect (REST)", lambda: rest_writes_without_effect(attacker)),
        ("cursors", lambda: cursor_attacks(attacker)),
        ("transactions without effect", lambda: transactions_without_effect(attacker)),
        # Phase 2: bait
        ("bait", lambda: lay_bait(attacker)),
        ("through bait", lambda: bait_attacks(attacker, patient_token)),
        # Phase 3: writes by clinic-a's ids and identifiers
        ("writes", lambda: writes(attacker)),
        # Phase 4: clinic-a's URL with clinic-b's tokens
        ("tenant mismatch", lambda: tenant_mismatch(attacker, [*TOKEN_NAMES, patient_token])),
        # Phase 5: forged and foreign tokens on clinic-a's URL
        ("tokens", lambda: token_attacks(attacker, forged_tokens(issuer, other_issuer, tokens.user), direct)),
    ]:
        began = time.process_time()
        run()
        phases[name] = time.process_time() - began
    searchable = sum(len(supported_parameters(t)) for t in victim.types())
    return MatrixRun(
        ledger,
        time.perf_counter() - started,
        client.requests - requests,
        len(victim.probes),
        len(shown),
        searchable,
        {"seeding clinic-a": victim.seconds, **phases},
    )


def test_no_attempt_of_clinic_b_reaches_clinic_a(
    matrix: MatrixRun, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given clinic-a's records and clinic-b's valid tokens, When clinic-b tries everything above
    ledger = matrix.ledger
    phases = ", ".join(f"{k} {v:.0f}" for k, v in matrix.phases.items())
    report = "\n".join(
        [
            ledger.summary(),
            f"  {matrix.requests} HTTP requests in {matrix.seconds:.0f} s (wall clock)",
            f"  {matrix.probes} search probes from clinic-a's data ({matrix.probes_shown} shown to find "
            f"their clinic-a resource); {matrix.searchable} supported (type, parameter) pairs on its types",
            f"  CPU seconds per phase: {phases}",
        ]
    )
    with capsys.disabled():
        print("\n" + report)
    findings = "\n".join(str(f) for f in ledger.findings[:40])
    # Then nothing of clinic-a's reached clinic-b, and every refusal was the documented one
    assert ledger.total >= MIN_ATTEMPTS, report
    assert not ledger.leaks, f"{report}\n{findings}"
    assert not ledger.deviations, f"{report}\n{findings}"


def test_refusals_do_not_depend_on_what_is_asked_for(matrix: MatrixRun) -> None:
    # Given every tenant-mismatch refusal of the matrix, Then they are one and the same answer
    bodies = matrix.ledger.refusals.get("tenant mismatch", set())
    assert len({_strip_request_id(b) for b in bodies}) == 1, sorted(bodies)[:3]


def _strip_request_id(text: str) -> str:
    return re.sub(r"X-Request-Id: [^ \n]+", "", text)


def test_clinic_a_is_unchanged_after_the_matrix(
    matrix: MatrixRun, client: Client, victim: Victim, tokens: Any
) -> None:
    # Given the matrix has run, When clinic-a reads back every resource it holds
    authorization = bearer(tokens.victim)
    bodies, gone = read_back(client, authorization, victim.keys)
    # Then every version and body is as it was, the deleted one is still deleted, nothing was added
    assert gone == sorted(victim.deleted)
    changed = [k for k, body in victim.bodies.items() if bodies.get(k) != body]
    assert not changed, f"clinic-a resources changed: {changed[:10]}"
    assert type_totals(client, authorization, victim.types()) == victim.totals
    history = client.call("GET", f"{base(VICTIM)}/Patient/{victim.canary}/_history", authorization).document
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']


# -- the judge, judged -----------------------------------------------------------------------------

_PATIENT = {"resourceType": "Patient", "id": "victim-1", "name": [{"family": "Victimfamily"}]}


def _ledger() -> Ledger:
    victim = Victim(
        bodies={("Patient", "victim-1"): _PATIENT},
        deleted={},
        patients=["victim-1"],
        canary="victim-1",
        identifiers=[],
        markers=frozenset({"victim-1", "Victimfamily"}),
        cursors={},
        probes=[],
        totals={},
        tag="",
    )
    return Ledger(victim)


def _searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


_CASES = [
    # (case, request, status, document, judge arguments, finding expected)
    ("a clean 404", "GET Patient/victim-1", 404, {"resourceType": "OperationOutcome"}, {}, None),
    ("an echo of the request", "GET Patient/victim-1", 404, {"diagnostics": "Patient/victim-1"}, {}, None),
    ("a clinic-a resource", "GET Patient?name=x", 200, _searchset(_PATIENT), {}, "leak"),
    ("a clinic-a value", "GET Patient?name=x", 200, {"note": "Victimfamily"}, {}, "leak"),
    ("a 5xx, even one expected", "GET Patient/x", 500, {}, {"expect": (500,)}, "leak"),
    (
        "served instead of refused",
        "GET Patient/x",
        200,
        {},
        {"expect": (403,), "refusal": "mismatch"},
        "leak",
    ),
    ("unlike what never existed", "GET Patient/victim-1", 404, {"x": 1}, {"control": (404, "{}")}, "leak"),
    (
        "found through a chain",
        "GET x",
        200,
        _searchset({"resourceType": "Basic", "id": "b"}),
        {"empty": True},
        "leak",
    ),
    ("a count of clinic-a's", "GET x", 200, {"resourceType": "Bundle", "total": 1}, {"empty": True}, "leak"),
    ("another status, nothing revealed", "GET Patient/x", 400, {}, {}, "deviation"),
]


@pytest.mark.parametrize(
    ("request_text", "status", "document", "kwargs", "kind"),
    [pytest.param(*case[1:], id=case[0]) for case in _CASES],
)
def test_the_judge_tells_leaks_from_refusals(
    request_text: str, status: int, document: Any, kwargs: dict[str, Any], kind: str | None
) -> None:
    # Given an answer to an attempt (404 expected unless said otherwise)
    ledger = _ledger()
    arguments = {"expect": (200,) if status == 200 else (404,), **kwargs}
    if "control" in arguments:
        arguments["subject"] = ("Patient", "victim-1")
    # When the ledger judges it
    ledger.judge(
        interaction="read",
        channel="rest",
        what="case",
        request=request_text,
        status=status,
        text=json.dumps(document),
        document=document,
        **arguments,
    )
    # Then it finds what it should, and only that
    assert {f.kind for f in ledger.findings} == ({kind} if kind else set()), ledger.findings
