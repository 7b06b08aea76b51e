"""The tenancy attack matrix: clinic-b (the attacker) against clinic-a (the victim).

The security invariant (``../shared/DESIGN.md``, "The one security invariant"; ``docs/security.md``)
says a request's tenant comes only from its verified token and no code path returns another
tenant's data, except a cross-facility read that an active patient Consent at the owner permits.
This module tries to break it thousands of ways, through the real API Gateway authorizer and the
real FHIR and HL7 v2 functions on moto, and counts.

Threat model: clinic-b holds valid tokens of its own (``user/*.cruds``, ``system/*.cruds``, and a
``patient/*.cruds`` token whose patient context names a clinic-a patient) and knows everything
about clinic-a's records an insider could have copied: every resource id, the patients' names,
birth dates, MRNs, SSNs, phone numbers and addresses, values of every search parameter, paging
cursors that clinic-a's own searches handed out, the HL7 v2 messages clinic-a sent and their
control ids, the placer number of clinic-a's lab order, and its documents' ids.

The world (``conftest.py``): clinic-a holds two Synthea records, hand-made canaries, two documents
(one verified, one awaiting its upload), a lab order whose placer number acme-lab knows, a
Subscription, a patient registered by HL7 ADT through its own endpoint, and Consents: one patient
shares with a third facility (clinic-c, which holds its own record of that person), the canary's
Consents naming clinic-b are revoked, expired, not yet valid, not active or unusable, and two
patients have none. The master patient index is fed by the records stream as deployed; clinic-b
gets its own records of the same persons (same SSNs, names, birth dates, phones, addresses), so
the index links them: the sharing attacks are made with links in place and no Consent for clinic-b.

The attempts, in this order (reads before the attacker writes anything, so that "not found" is
never clinic-b's own copy answering):

1. on clinic-b's own base URL with clinic-a's ids and values: read, vread, update (``If-Match``),
   patch, delete, instance and type history, ``$everything``, a search with every search
   parameter of every resource type clinic-a holds (values from clinic-a's data, each shown by
   the engine's own matcher to find its clinic-a resource), chained searches, ``_id`` lists,
   ``_include``/``_revinclude``, conditional delete, batch and transaction entries
   (GET/PUT/DELETE/PATCH on clinic-a's ids, conditional references and conditional
   PUT/PATCH/DELETE keyed on clinic-a's identifiers), clinic-a's paging cursors replayed, forged
   or altered cursors; documents: ``Binary/{id}`` for every clinic-a id (batch) and for its
   documents over REST (read, vread, history, search, ``$upload-url``, also in batches);
2. bait: clinic-b stores resources that *refer* to clinic-a's ids, then tries ``_include``,
   ``_revinclude``, chains and ``$everything`` through those references;
3. writes by id on clinic-b's URL: update-as-create with clinic-a's ids (REST and a transaction
   over every clinic-a id), conditional create and update keyed on clinic-a's identifiers; these
   may create clinic-b's own resources (a document's download is then clinic-b's own object) but
   must not touch clinic-a's;
4. HL7 v2 on clinic-b's own endpoint: ADT (A04, A08, A31, an A40 merge of clinic-a's patient),
   ORU with clinic-a's placer number (also sent "as acme-lab"), MDM, with clinic-a's identifiers,
   clinic-a's sending facility, clinic-a's own messages replayed byte for byte and its control ids
   reused; each ACK must equal the one for values no tenant has, and what the message wrote in
   clinic-b must hold only what it said;
5. cross-facility sharing, linked and without consent: ``Patient/$match`` with clinic-a's
   patients' demographics and identifiers (another facility's match may show only that it exists,
   and nothing may tell the facilities apart: compared with the same questions about a person only
   clinic-c holds), ``$everything`` of clinic-b's own linked records (every token, ``_type``,
   page, a forged ``X-Purpose-Of-Use``, clinic-c's cursor into clinic-a's records), searches and
   includes through references to clinic-a's consents, documents and order, Consents clinic-b
   writes in its own store, Subscriptions whose criteria name clinic-a's ids, and then clinic-a's
   changes fanned out by the notifier (in-process, every change announced) and by the deployed
   pipeline (records stream, bus, notifier, webhooks): clinic-b hears of none of them;
6. clinic-a's URL with clinic-b's tokens (URL/token tenant mismatch): every interaction, HL7 v2
   (clinic-a's endpoint and acme-lab's), ``$match``, ``Binary``, ``$upload-url``, Subscriptions
   → 403;
7. token attacks on clinic-a's URL (expired, not yet valid, ``alg: none``, HS256 keyed with the
   public key, another key, embedded key, wrong audience or issuer, missing or foreign tenant
   claim, tampered or spliced payloads, malformed headers), through the gateway and also straight
   to the function with the authorizer bypassed → 401 (403 for a valid token of no or another
   tenant).

A leak is a response that carries a clinic-a id or PHI value the request did not itself contain
(outside clinic-b's own resources), any clinic-a resource in a response, clinic-a's tenant id or
name or a source label in a sharing answer, a cross-tenant answer that differs from the answer for
an id or identifier that never existed (existence revealed), a 2xx where a refusal is due, a
notification of clinic-a's change reaching clinic-b, any 5xx, or any change to clinic-a's data
(checked afterwards by ``test_clinic_a_is_unchanged_after_the_matrix``). A status that is merely
not the documented one (but reveals nothing) is reported as a deviation; the test wants zero of
both. ``test_the_sharing_world_is_live`` checks that the sharing attacks are real: the index links
the records, clinic-c (which the patient chose) does read and hear of clinic-a's records, clinic-b's
own Subscriptions do fire. The IAM side (``dynamodb:LeadingKeys``) is covered by ``tests/infra``.

Cost: moto 5.2 sorts the whole table on every Query and keeps a deep copy of every table a
TransactWriteItems touches as its rollback snapshot; every request writes its audit record in a
transaction, so that copy grew with every request. ``infra/local/moto_fast_paths.py`` bounds the
Query; ``conftest.py`` replaces the snapshot with an undo log of the items the transaction names
while these modules run (same state after a cancelled transaction). What is left is about a
minute of CPU.
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
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote_plus, urlencode, urlsplit

import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from ehr import names
from ehr.api.routes import ROUTES
from ehr.bootstrap import bootstrap_notifier
from ehr.events.changes import InMemoryEventPublisher
from ehr.fhir.search.definitions import supported_parameters
from ehr.settings import SharingNotifierSettings, load_settings
from ehr.sharing.consent import CONSENT_SCOPE_SYSTEM, sharing_consent
from ehr.sharing.mpi import MasterPatientIndex
from ehr.sharing.subscriptions import DeliveryResult, InMemoryDeadLetters
from infra.local.gateway import REQUEST_ID_HEADER, LocalGateway, RouteTable
from infra.local.issuer import DevIssuer
from tests.integration.security.conftest import (
    ER7,
    LAB,
    SOURCE_TAG,
    THIRD,
    THIRD_NAME,
    US_SSN,
    Tokens,
    World,
    lookalike,
    wait_linked,
)
from tests.integration.security.support import (
    ATTACKER,
    HOST,
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


# The request ids every answer carries: the function's and API Gateway's, new for each request.
REQUEST_IDS = re.compile(r"(X-Request-Id|x-amzn-RequestId): [^ \n]+")


def without_request_ids(text: str) -> str:
    return REQUEST_IDS.sub("", text)


def normal(text: str, key: Key | str) -> str:
    """An answer with the id it concerns (and the request id) taken out, to compare it with a control's."""
    text = without_request_ids(text)
    text = re.sub(r"version \d+", "version {n}", text)
    text = re.sub(r"entry\[\d+\]", "entry[{n}]", text)  # where a batch entry was, not what exists
    if isinstance(key, tuple):
        text = text.replace(f"{key[0]}/{key[1]}", "{ref}").replace(key[1], "{id}")
        return text
    return text.replace(key, "{value}").replace(quote(key, safe=""), "{value}")


GROUPS = {
    "documents": ("Binary", "$upload-url"),
    "hl7v2": ("hl7v2",),
    "sharing: $match": ("$match",),
    "sharing: $everything": ("cross-facility $everything",),
    "sharing: searches and includes": ("cross-facility search",),
    "sharing: consents written by clinic-b": ("clinic-b's own consent",),
    "sharing: subscriptions and notifications": ("subscription", "notification"),
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
        "download of clinic-b's own copy",
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

    def learn(self, bodies: Mapping[Key, dict[str, Any]]) -> None:
        """clinic-a wrote these during the matrix: they are clinic-a's too from now on."""
        self.victim.bodies.update(bodies)
        self.victim.markers = frozenset({*self.victim.markers, *(i for _, i in bodies)})
        self._victim_content.update({k: canonical(b) for k, b in bodies.items()})
        ordered = sorted(self.victim.markers, key=len, reverse=True)
        self._markers = re.compile("|".join(re.escape(m) for m in ordered))

    def own_keys(self, keys: Collection[Key]) -> None:
        """Resources clinic-b wrote by a route that names no Location (HL7 v2 messages)."""
        self.attacker_own.update(keys)

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
        forbidden: Collection[str] = (),
        problems: Sequence[str] = (),
    ) -> None:
        """``forbidden``: strings no answer may carry unless the request or clinic-b's own resources
        in it do (clinic-a's tenant id and name, source labels); ``problems``: what the caller found
        wrong with the answer (each is a leak)."""
        self.attempts[interaction] += 1
        self.channels[channel] += 1

        def leak(detail: str) -> None:
            self.findings.append(Finding("leak", interaction, what, detail))

        if status >= 500:
            leak(f"{status}: {text[:300]}")
        allowed = self.markers_in(request) | self.markers_in(unquote_plus(request))
        own_text = [request, unquote_plus(request)]
        for resource, holder in resources_in(document):
            key = (resource["resourceType"], resource["id"])
            if key in self._victim_content:
                if key not in self.attacker_own:
                    leak(f"{status} returned clinic-a's {key[0]}/{key[1]}")
                elif canonical(resource) == self._victim_content[key]:
                    leak(f"{status} returned clinic-a's content under {key[0]}/{key[1]}")
            if key in self.attacker_own:
                allowed |= self.markers_in(json.dumps(holder))
                own_text.append(json.dumps(holder))
        found = self.markers_in(text) - allowed
        if found:
            leak(f"{status} carries clinic-a values {sorted(found)[:5]}")
        shown = [f for f in forbidden if f in text and not any(f in t for t in own_text)]
        if shown:
            leak(f"{status} names {shown[:3]}")
        for problem in problems:
            leak(problem)
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
        found = Counter(f"{f.kind}s in {group_of(f.interaction)}" for f in self.findings)
        if found:
            lines.append("  findings per group: " + ", ".join(f"{k} {v}" for k, v in sorted(found.items())))
        width = max(len(k) for k in self.attempts)
        lines += [f"  {k:<{width}} {v:>5}" for k, v in sorted(self.attempts.items())]
        return "\n".join(lines)


# -- the attacker ----------------------------------------------------------------------------------


class MatrixPool(AttackerPool):
    """The Synthea pool, plus what clinic-b writes of the types Synthea has none of (documents,
    consents, subscriptions, orders, provenance): harmless, and of clinic-b's own making."""

    def __init__(self) -> None:
        super().__init__()
        nobody = f"Patient/{uuid.uuid4()}"
        extra: list[dict[str, Any]] = [
            {
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": {"reference": nobody},
                "content": [
                    {
                        "attachment": {
                            "contentType": "text/plain",
                            "title": "clinic-b's own note",
                            "data": base64.b64encode(b"clinic-b's own note").decode(),
                        }
                    }
                ],
            },
            {
                "resourceType": "Consent",
                "status": "proposed",
                "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": {"reference": nobody},
                "policyRule": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
                    ]
                },
            },
            {
                "resourceType": "Subscription",
                "status": "off",
                "reason": "clinic-b's own dashboard",
                "criteria": "Observation?code=http://loinc.org|8867-4",
                "channel": {"type": "rest-hook", "endpoint": "https://hooks.clinic-b.example/ehr"},
            },
            {
                "resourceType": "ServiceRequest",
                "status": "draft",
                "intent": "order",
                "code": {"text": "clinic-b's own order"},
                "subject": {"reference": nobody},
            },
            {
                "resourceType": "Provenance",
                "target": [{"reference": nobody}],
                "recorded": "2026-01-01T00:00:00Z",
                "agent": [{"who": {"display": "clinic-b"}}],
            },
        ]
        for body in extra:
            self._by_type.setdefault(body["resourceType"], body)


@dataclass
class Attacker:
    client: Client
    ledger: Ledger
    victim: Victim
    pool: AttackerPool
    auth: dict[str, str]  # token name -> Authorization header value
    world: World
    issuer: DevIssuer
    bait: list[Key] = field(default_factory=list)
    lookalikes: dict[str, str] = field(default_factory=dict)  # clinic-a id (or "mirror") -> clinic-b's record
    own_observations: list[Key] = field(default_factory=list)  # clinic-b's, of those records
    # API Gateway's request id of each forged or foreign token's attempt on clinic-a's URL
    token_request_ids: list[str] = field(default_factory=list)

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


def upload_ticket(document: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """A batch entry asking for a document's upload URL."""
    entry: dict[str, Any] = {
        "request": {"method": "POST", "url": f"DocumentReference/{document}/$upload-url"}
    }
    if body is not None:
        entry["resource"] = body
    return entry


def document_attacks(attacker: Attacker, patient_token: str) -> None:
    """Document content and upload tickets by clinic-a's ids: every clinic-a id as ``Binary/{id}``
    in batches, and over REST the documents themselves, by every token."""
    victim, world, b, ledger = attacker.victim, attacker.world, attacker.b, attacker.ledger
    for token in TOKEN_NAMES:
        binary = {"Binary": {"request": {"method": "GET", "url": "/".join(fresh("Binary"))}}}
        attacker.batch(
            "Binary read",
            token,
            [
                ({"request": {"method": "GET", "url": f"Binary/{i}"}}, (404,), ("Binary", i))
                for _, i in victim.keys
            ],
            controls=binary,
        )
    documents = sorted(world.documents.values())
    vread = {"Binary": {"request": {"method": "GET", "url": "/".join(fresh("Binary")) + "/_history/1"}}}
    attacker.batch(
        "Binary vread",
        "system",
        [
            ({"request": {"method": "GET", "url": f"Binary/{d}/_history/1"}}, (404,), ("Binary", d))
            for d in documents
        ],
        controls=vread,
    )
    # $upload-url is no batch interaction: refused alike for clinic-a's documents and for none
    for label, body in (("without a body", None), ("with a Parameters body", {"resourceType": "Parameters"})):
        attacker.batch(
            f"$upload-url in a batch ({label})",
            "user",
            [(upload_ticket(d, body), (400,), ("DocumentReference", d)) for d in documents],
            controls={"DocumentReference": upload_ticket(fresh("DocumentReference")[1], body)},
        )
    operations: dict[str, tuple[str, str, dict[str, str] | None, tuple[int, ...]]] = {
        "Binary read": ("GET", "Binary/{id}", None, (404,)),
        "Binary read (Accept: application/pdf)": (
            "GET",
            "Binary/{id}",
            {"Accept": "application/pdf"},
            (404,),
        ),
        "Binary vread": ("GET", "Binary/{id}/_history/1", None, (404,)),
        "Binary history": ("GET", "Binary/{id}/_history", None, (404,)),
        "$upload-url": ("POST", "DocumentReference/{id}/$upload-url", None, (404,)),
    }
    controls = {}
    for interaction, (method, template, headers, _) in operations.items():
        key = fresh("DocumentReference")
        _, reply = attacker.send(
            method, f"{b}/{template.format(id=key[1])}", "user", b"" if method == "POST" else None, headers
        )
        controls[interaction] = (reply.status, normal(_text(reply), key[1]))
    # clinic-a's documents, and ids of other clinic-a resources asked for as documents
    subjects = [*documents, world.order, world.persons["consented"], victim.canary]
    for token in (*TOKEN_NAMES, patient_token):
        for subject in subjects if token in TOKEN_NAMES else documents:
            for interaction, (method, template, headers, expect) in operations.items():
                path = f"{b}/{template.format(id=subject)}"
                sent, reply = attacker.send(method, path, token, b"" if method == "POST" else None, headers)
                ledger.judge_reply(
                    interaction,
                    "rest",
                    f"{method} {template.format(id=subject)} [{_name(token)}]",
                    sent,
                    reply,
                    expect=expect,
                    control=controls[interaction],
                    subject=subject,
                    forbidden=("Location: ",),
                )
    for token in TOKEN_NAMES:
        path = f"{b}/Binary?_id={','.join(documents)}"
        sent, reply = attacker.send("GET", path, token)
        ledger.judge_reply(
            "Binary search",
            "rest",
            f"GET Binary?_id=<clinic-a's documents> [{token}]",
            sent,
            reply,
            expect=(200,),
            empty=True,
        )


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
    # clinic-b's own documents under clinic-a's document ids: the download is clinic-b's object
    for n, document in enumerate(sorted(attacker.world.documents.values())):
        token = TOKEN_NAMES[n % 2]
        path = f"{b}/Binary/{document}"
        sent, reply = attacker.send("GET", path, token)
        ledger.judge_reply(
            "download of clinic-b's own copy",
            "rest",
            f"GET Binary/{document} [{token}]",
            sent,
            reply,
            expect=(302,),
            forbidden=(f"/{VICTIM}/{document}/",),
            problems=[]
            if f"/{ATTACKER}/{document}/" in reply.headers.get("Location", "")
            else [f"{reply.status}: not clinic-b's own object: {reply.headers.get('Location', '')[:120]}"],
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


# -- phase 4: HL7 v2 on clinic-b's own endpoint ---------------------------------------------------


@dataclass(frozen=True)
class Hl7Person:
    """What a message says about its patient (and the placer number of a result)."""

    mrn: str  # CX: value^^^authority^MR
    ssn: str
    family: str
    given: str
    birth: str  # YYYYMMDD
    sex: str
    placer: str = ""

    def values(self) -> list[str]:
        """The values that name the patient (what a control message replaces)."""
        return [v for v in (self.mrn.split("^")[0], self.ssn, self.placer) if v]


def hl7_person(patient: Mapping[str, Any], *, placer: str = "") -> Hl7Person:
    """clinic-a's patient as a sender would write it: its MRN under the issuing authority's URI
    (a global identifier system, as clinic-a's own records carry it) and its SSN in PID-19."""
    mrn = next(i for i in patient["identifier"] if _has_code(i, "MR"))
    ssn = next((i["value"] for i in patient["identifier"] if i.get("system") == US_SSN), "")
    system = mrn["system"]
    authority = system.rsplit(":", 1)[-1] if system.startswith("urn:ehr:hl7v2:") else f"&{system}&URI"
    name = patient["name"][0]
    return Hl7Person(
        mrn=f"{mrn['value']}^^^{authority}^MR",
        ssn=ssn,
        family=name["family"],
        given=(name.get("given") or [""])[0],
        birth=patient["birthDate"].replace("-", ""),
        sex={"male": "M", "female": "F"}.get(patient.get("gender", ""), "U"),
        placer=placer,
    )


def _has_code(identifier: Mapping[str, Any], code: str) -> bool:
    return any(c.get("code") == code for c in (identifier.get("type") or {}).get("coding") or [])


def never_person(person: Hl7Person) -> Hl7Person:
    """The same message about values no tenant has: the control."""
    tail = uuid.uuid4().hex[:10]
    _, _, rest = person.mrn.partition("^")
    return replace(
        person,
        mrn=f"NEVER{tail}^{rest}",
        ssn=f"900-{tail[:2].translate(str.maketrans('abcdef', '123456'))}-0000" if person.ssn else "",
        placer=str(uuid.uuid4()) if person.placer else "",
    )


def _pid(person: Hl7Person) -> str:
    """PID with PID-3 (the MRN), PID-5, PID-7, PID-8 and PID-19 (the SSN)."""
    name = f"{person.family}^{person.given}"
    return f"PID|1||{person.mrn}||{name}||{person.birth}|{person.sex}|||||||||||{person.ssn}"


def _msh(kind: str, control: str, sender: str = "CLINICBADT^CLINICB", receiver: str = "EHR^EHR") -> str:
    """MSH; ``sender`` and ``receiver`` are application^facility (MSH-3/4, MSH-5/6)."""
    parties = f"{sender.replace('^', '|')}|{receiver.replace('^', '|')}"
    return f"MSH|^~\\&|{parties}|20261121120000||{kind}|{control}|P|2.5.1"


def adt(event: str, person: Hl7Person, control: str, **msh: str) -> str:
    structure = {"A04": "ADT_A01", "A08": "ADT_A01", "A31": "ADT_A05"}[event]
    return "\r".join(
        [
            _msh(f"ADT^{event}^{structure}", control, **msh),
            f"EVN|{event}|20261121120000",
            _pid(person),
            "PV1|1|O",
        ]
    )


def merge(person: Hl7Person, control: str) -> str:
    """ADT^A40: a new patient of clinic-b's absorbs the one named in MRG-1."""
    survivor = f"SURV{uuid.uuid4().hex[:8]}^^^CLINICB^MR"
    return "\r".join(
        [
            _msh("ADT^A40^ADT_A39", control),
            "EVN|A40|20261121120000",
            f"PID|1||{survivor}||Survivor^Ivo||19700101|M",
            f"MRG|{person.mrn}",
        ]
    )


def result(person: Hl7Person, control: str, **msh: str) -> str:
    """ORU^R01 answering the order whose placer number the message names."""
    placer = f"{person.placer}^{VICTIM}"
    filler = f"F-{person.placer[:8]}^ACME"
    return "\r".join(
        [
            _msh("ORU^R01^ORU_R01", control, **msh),
            _pid(person),
            f"ORC|RE|{placer}|{filler}",
            f"OBR|1|{placer}|{filler}|2345-7^Glucose^LN|||20261121110000|||||||||||||||20261121120000|||F",
            "OBX|1|NM|2345-7^Glucose^LN||92|mg/dL|70-99|N|||F|||20261121110000",
        ]
    )


def document_message(person: Hl7Person, control: str) -> str:
    """MDM^T02: an original document about the patient, its bytes inline."""
    fields = [""] * 23
    fields[1], fields[2], fields[3], fields[4] = "1", "DS", "TX", "20261121110000"
    fields[12], fields[17], fields[19] = f"DOC-{control}^CLINICB", "AU", "AV"
    data = base64.b64encode(b"clinic-b's note").decode()
    return "\r".join(
        [
            _msh("MDM^T02^MDM_T02", control),
            "EVN|T02|20261121120000",
            _pid(person),
            "PV1|1|O",
            "TXA|" + "|".join(fields[1:]),
            f"OBX|1|ED|18842-5^Discharge summary^LN||^text^plain^Base64^{data}||||||F",
        ]
    )


def normal_ack(text: str, control: str, values: Sequence[str]) -> str:
    """An ACK without what differs from answer to answer: times, its own new control id, the echo
    of the message's control id, and the patient's values (a control names others)."""
    text = without_request_ids(text)
    text = re.sub(r"\|\d{14}([+-]\d{4})?\|", "|{time}|", text)
    text = re.sub(r"\b[0-9a-f]{20}\b", "{ack-id}", text)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]*", "{uuid}", text)  # new ids, also where MSA-3 cuts them
    text = text.replace(control, "{control}")
    for n, value in enumerate(values):
        text = text.replace(value, f"{{value{n}}}")
    return text


class Hl7Sender:
    """Posts ER7 to clinic-b's own endpoint, judges the ACK against a control message, and reads
    back what the message wrote in clinic-b (which must hold only what the message said)."""

    def __init__(self, attacker: Attacker) -> None:
        self.attacker = attacker

    def post(self, message: str | bytes, token: str, tenant: str = ATTACKER) -> tuple[str, Reply]:
        body = message.encode() if isinstance(message, str) else message
        return self.attacker.send("POST", f"/tenants/{tenant}/hl7v2", token, body, {"Content-Type": ER7})

    def attack(
        self,
        interaction: str,
        build: Callable[[Hl7Person, str], str],
        person: Hl7Person,
        *,
        token: str = "system",
        expect_code: str = "AA",
    ) -> None:
        """``build(person, control_id)`` is the message; the control is the same message about
        values no tenant has, sent right after, whose ACK this one's must equal."""
        number = uuid.uuid4().hex[:12]
        message = build(person, f"ATK{number}")
        sent, reply = self.post(message, token)
        other = never_person(person)
        control_message = build(other, f"CTL{number}")
        _, answer = self.post(control_message, token)
        self.written(message_control(control_message), control_message, token)
        expected = (answer.status, normal_ack(_text(answer), f"CTL{number}", other.values()))
        found = []
        if (reply.status, normal_ack(_text(reply), f"ATK{number}", person.values())) != expected:
            found.append(
                f"ACK unlike the one for values no tenant has: {reply.status} {reply.text[:300]!r} "
                f"vs {expected[1][:300]!r}"
            )
        if f"MSA|{expect_code}|" not in reply.text:
            found.append(f"MSA is not {expect_code}: {reply.text[:300]!r}")
        self.attacker.ledger.judge_reply(
            interaction,
            "hl7v2",
            f"POST /tenants/{ATTACKER}/hl7v2 {message.splitlines()[0][:90]}… [{_name(token)}]",
            sent,
            reply,
            expect=(200,),
            problems=found,
        )
        self.written(message_control(message), message, token)

    def written(self, control: tuple[str, str, str], message: str, token: str) -> None:
        """What the message wrote in clinic-b, judged and then owned by clinic-b."""
        application, facility, control_id = control
        provenance = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{ATTACKER}|{application}|{facility}|{control_id}|hl7v2")
        )
        reply = self.attacker.client.call(
            "GET", f"{self.attacker.b}/Provenance/{provenance}", self.attacker.auth[token]
        )
        if reply.status != 200:
            return
        keys = [("Provenance", provenance)] + [
            location_key(t["reference"]) for t in reply.document.get("target") or []
        ]
        bodies = [
            answer.get("resource")
            for _, answer, _ in self.attacker.client.batch_entries(
                ATTACKER,
                self.attacker.auth[token],
                [{"request": {"method": "GET", "url": f"{t}/{i}"}} for t, i in keys],
            )
            if answer is not None
        ]
        text = json.dumps(bodies)
        outside = [k for k in keys if k in self.attacker.victim.bodies]
        self.attacker.ledger.judge(
            interaction="hl7v2: what the message wrote in clinic-b",
            channel="hl7v2",
            what=f"{len(keys)} resources of {application}|{facility}|{control_id}",
            request=as_fhir_values(message),
            status=200,
            text=text,
            document=None,  # clinic-b's own resources: only their values are judged
            expect=(200,),
            problems=[f"the message wrote under clinic-a's ids {outside}"] if outside else [],
        )
        self.attacker.ledger.own_keys(keys)


def as_fhir_values(message: str) -> str:
    """The message with its dates and phone numbers also written as FHIR writes them: what the
    message itself said, in the form a resource mapped from it carries."""
    dates = re.sub(r"\b(\d{4})(\d{2})(\d{2})\b", r"\1-\2-\3", message)
    phones = " ".join(f"{a} {n}" for a, n in re.findall(r"\^PH\^\^\^(\d+)\^(\d+)", message))
    return "\n".join([message, dates, phones])


def message_control(message: str) -> tuple[str, str, str]:
    msh = message.split("\r", 1)[0].split("|")
    return msh[2], msh[3], msh[9]


def hl7_attacks(attacker: Attacker, patient_token: str) -> None:
    """Messages to clinic-b's own endpoint that carry clinic-a's identifiers, placer numbers,
    sending facility and control ids: processed as clinic-b's, answered as if clinic-a had none."""
    victim, world = attacker.victim, attacker.world
    sender = Hl7Sender(attacker)
    unconsented = hl7_person(victim.bodies[("Patient", world.persons["unconsented"])], placer=world.order)
    registered = hl7_person(victim.bodies[("Patient", world.persons["registered"])])
    for person in (unconsented, registered):  # the merges first: clinic-b holds no patient by those ids yet
        sender.attack("hl7v2 ADT^A40 merging clinic-a's patient", merge, person, expect_code="AE")
    for person in (unconsented, registered):
        for event in ("A04", "A08", "A31"):
            sender.attack(
                f"hl7v2 ADT^{event} with clinic-a's identifiers", lambda p, c, e=event: adt(e, p, c), person
            )
    sender.attack(
        "hl7v2 ADT^A04 with clinic-a's identifiers", lambda p, c: adt("A04", p, c), unconsented, token="user"
    )
    sender.attack(
        "hl7v2 ADT^A04 with clinic-a's identifiers",
        lambda p, c: adt("A04", p, c),
        unconsented,
        token=patient_token,
        expect_code="AR",
    )
    sender.attack("hl7v2 ORU^R01 with clinic-a's placer number", result, unconsented)
    sender.attack(
        "hl7v2 ORU^R01 with clinic-a's placer number, as acme-lab",
        lambda p, c: result(p, c, sender=f"ACMELAB^{LAB}", receiver=f"EHR^{VICTIM}"),
        unconsented,
    )
    sender.attack("hl7v2 MDM^T02 on clinic-a's patient", document_message, unconsented)
    sender.attack(
        "hl7v2 ADT^A04 as clinic-a's sending facility, to clinic-a",
        lambda p, c: adt("A04", p, c, sender="REGADT^CLINICA", receiver=f"EHR^{VICTIM}"),
        registered,
    )
    # clinic-a's own messages: the very same bytes of one, and another's control id with other content
    (first, first_ack), (second, second_ack) = world.hl7
    other = second.replace(registered.family, f"Other{uuid.uuid4().hex[:6]}")
    for label, message, ack in (("the same bytes", first, first_ack), ("other content", other, second_ack)):
        application, facility, control_id = message_control(message)
        fresh_id = f"NEW{uuid.uuid4().hex[:12]}"
        _, control = sender.post(message.replace(f"|{control_id}|", f"|{fresh_id}|"), "system")
        sender.written((application, facility, fresh_id), message, "system")
        sent, reply = sender.post(message, "system")
        found = []
        if normal_ack(_text(reply), control_id, []) != normal_ack(_text(control), fresh_id, []):
            found.append(f"ACK unlike a new message's: {reply.text[:300]!r} vs {control.text[:300]!r}")
        if reply.text == ack:
            found.append("clinic-a's own ACK, replayed")
        clinic_a_ack_id = next(s.split("|")[9] for s in ack.split("\r") if s.startswith("MSH"))
        attacker.ledger.judge_reply(
            f"hl7v2 clinic-a's sender and control id, {label}",
            "hl7v2",
            f"POST /tenants/{ATTACKER}/hl7v2 {application}|{facility}|{control_id} ({label}) [system]",
            sent,
            reply,
            expect=(200,),
            forbidden=(clinic_a_ack_id,),
            problems=found,
        )
        sender.written((application, facility, control_id), message, "system")


# -- phase 5: cross-facility sharing ----------------------------------------------------------------


MATCH_TAG = "urn:ehr:match"
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
PURPOSES = ("ETREAT", "BTG", "HRESCH", "PUBHLTH", "treat", "TREAT,ETREAT", "clinic-a", "X" * 41)


# What no sharing answer to clinic-b may carry (unless the request did): another facility's tenant
# id or name, a source label, a URL under clinic-a's base.
SHARING_FORBIDDEN = (VICTIM, "Clinic A", THIRD, THIRD_NAME, SOURCE_TAG, f"/tenants/{VICTIM}/")


def lookalikes(attacker: Attacker, patient_index: MasterPatientIndex) -> None:
    """clinic-b records the same persons as clinic-a (same names, birth dates, SSNs and other
    identifiers of global systems, phones, addresses), and the person only clinic-c holds; each
    with a few Observations of its own. The index links them."""
    victim, world = attacker.victim, attacker.world
    persons = {p: victim.bodies[("Patient", p)] for p in world.persons.values()}
    persons["mirror"] = world.mirror
    entries = []
    labels = list(persons)
    for label in labels:
        copy = lookalike(persons[label])
        copy["identifier"] = [i for i in copy.get("identifier") or [] if VICTIM not in str(i.get("system"))]
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": copy,
                "request": {"method": "POST", "url": "Patient"},
            }
        )
    for entry in list(entries):
        for n in range(2):
            observation = attacker.pool.body("Observation")
            observation["subject"] = {"reference": entry["fullUrl"]}
            observation.pop("encounter", None)
            observation["effectiveDateTime"] = f"2026-0{n + 1}-01T10:00:00Z"
            entries.append({"resource": observation, "request": {"method": "POST", "url": "Observation"}})
    _, reply = attacker.send(
        "POST", attacker.b, "user", {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    assert reply.status == 200, f"clinic-b's records could not be stored: {reply.status} {reply.text[:1000]}"
    attacker.ledger.own(reply)
    answers = [location_key(e["response"]["location"]) for e in reply.document["entry"]]
    for label, answer in zip(labels, answers, strict=False):
        attacker.lookalikes[label] = answer[1]
    attacker.own_observations = [k for k in answers if k[0] == "Observation"]
    pairs = [((VICTIM, p), (ATTACKER, attacker.lookalikes[p])) for p in world.persons.values()]
    pairs.append(((THIRD, world.third_patients["mirror"]), (ATTACKER, attacker.lookalikes["mirror"])))
    world.liveness["clinic-b's records are linked to clinic-a's patients in the index"] = all(
        wait_linked(patient_index, *pair) for pair in pairs
    )


def match_parameters(patient: Mapping[str, Any], variant: str) -> dict[str, Any]:
    """``Patient/$match`` input asking about ``patient`` in one of several ways."""
    body = lookalike(dict(patient))
    body["identifier"] = [i for i in body.get("identifier") or [] if VICTIM not in str(i.get("system"))]
    query: dict[str, Any] = {"resourceType": "Patient"}
    if variant in (
        "all demographics",
        "certain only, up to 100",
        "a bare Patient",
        "all demographics, forged purpose",
    ):
        query = body
    elif variant == "identifiers only":
        query["identifier"] = body["identifier"]
    elif variant == "one identifier":
        query["identifier"] = body["identifier"][-1:]
    elif variant == "name and birth date":
        query.update(name=body["name"][:1], birthDate=body["birthDate"], gender=body.get("gender", "unknown"))
    elif variant == "phone and name":
        query.update(telecom=body.get("telecom", [])[:1], name=body["name"][:1])
    if variant == "a bare Patient":
        return query
    parameters: list[dict[str, Any]] = [{"name": "resource", "resource": query}]
    if variant == "certain only, up to 100":
        parameters += [
            {"name": "onlyCertainMatches", "valueBoolean": True},
            {"name": "count", "valueInteger": 100},
        ]
    return {"resourceType": "Parameters", "parameter": parameters}


MATCH_VARIANTS = (
    "all demographics",
    "identifiers only",
    "one identifier",
    "name and birth date",
    "phone and name",
    "certain only, up to 100",
    "a bare Patient",
)


def match_shape(reply: Reply) -> list[tuple[str, float, str]]:
    """The answer as clinic-b sees its order: own record or another facility's, score, grade."""
    shape = []
    for entry in (reply.document or {}).get("entry") or []:
        search = entry.get("search") or {}
        grade = next(
            (e.get("valueCode", "") for e in search.get("extension") or [] if e.get("url") == MATCH_GRADE), ""
        )
        kind = "own" if "id" in (entry.get("resource") or {}) else "elsewhere"
        shape.append((kind, search.get("score", 0.0), grade))
    return shape


def match_problems(reply: Reply) -> list[str]:
    """Another facility's match is only the fact that it exists; clinic-b's own are clinic-b's."""
    found = []
    own_base = f"http://{HOST}{base(ATTACKER)}/"
    for entry in (reply.document or {}).get("entry") or []:
        resource = entry.get("resource") or {}
        if (entry.get("search") or {}).get("mode") == "outcome":
            continue
        if "id" in resource:
            if not str(entry.get("fullUrl", "")).startswith(own_base):
                found.append(f"a record of another facility in full: {entry.get('fullUrl')}")
            continue
        tags = (resource.get("meta") or {}).get("tag") or []
        if set(resource) - {"resourceType", "meta"} or set(resource.get("meta") or {}) - {"tag"}:
            found.append(
                f"another facility's match says more than that it exists: {json.dumps(resource)[:200]}"
            )
        if [t for t in tags if t.get("system") != MATCH_TAG] or not str(entry.get("fullUrl", "")).startswith(
            "urn:uuid:"
        ):
            found.append(f"another facility's match is labelled: {json.dumps(entry)[:200]}")
    return found


def match_attacks(attacker: Attacker, patient_token: str) -> None:
    """$match with everything clinic-b knows of clinic-a's patients: their own records at
    clinic-b in full, another facility's only as "a match exists", and nothing that tells the
    facilities apart (compared with the same questions about a person only clinic-c holds)."""
    victim, world, b, ledger = attacker.victim, attacker.world, attacker.b, attacker.ledger
    path = f"{b}/Patient/$match"

    def ask(
        patient: Mapping[str, Any], variant: str, token: str, purpose: str | None = None
    ) -> tuple[str, Reply]:
        headers = {"X-Purpose-Of-Use": purpose} if purpose else None
        return attacker.send("POST", path, token, match_parameters(patient, variant), headers)

    canary = victim.bodies[("Patient", victim.canary)]
    for variant in MATCH_VARIANTS:
        _, control = ask(world.mirror, variant, "user")
        sent, reply = ask(canary, variant, "user")
        found = match_problems(reply)
        # The same question about a person at clinic-a and about one at clinic-c: entries in the
        # same order, so the order cannot tell the facilities apart (a rule that does not look at
        # the tenant, such as the caller's own records first, passes; a random order would not)
        if match_shape(reply) != match_shape(control):
            found.append(
                f"the order of the entries tells the facilities apart: {match_shape(reply)} for clinic-a's "
                f"patient, {match_shape(control)} for clinic-c's"
            )
        ledger.judge_reply(
            "$match",
            "rest",
            f"$match {variant} of the canary [user]",
            sent,
            reply,
            expect=(200,),
            forbidden=SHARING_FORBIDDEN,
            problems=found,
        )
    for role, patient_id in world.persons.items():
        if patient_id == victim.canary:
            continue
        patient = victim.bodies[("Patient", patient_id)]
        elsewhere = False
        for variant in MATCH_VARIANTS:
            sent, reply = ask(patient, variant, "user")
            elsewhere |= any(kind == "elsewhere" for kind, _, _ in match_shape(reply))
            ledger.judge_reply(
                "$match",
                "rest",
                f"$match {variant} of the {role} patient [user]",
                sent,
                reply,
                expect=(200,),
                forbidden=SHARING_FORBIDDEN,
                problems=match_problems(reply),
            )
        world.liveness[f"$match tells clinic-b a match of the {role} patient exists elsewhere"] = elsewhere
    for token in ("system", patient_token):
        for role, patient_id in world.persons.items():
            sent, reply = ask(victim.bodies[("Patient", patient_id)], "all demographics", token)
            ledger.judge_reply(
                "$match",
                "rest",
                f"$match of the {role} patient [{_name(token)}]",
                sent,
                reply,
                expect=(200, 403) if token == patient_token else (200,),
                forbidden=SHARING_FORBIDDEN,
                problems=match_problems(reply),
            )
    for purpose in PURPOSES:
        for role in ("consented", "revoked"):
            sent, reply = ask(
                victim.bodies[("Patient", world.persons[role])], "all demographics", "user", purpose
            )
            ledger.judge_reply(
                "$match with a forged purpose of use",
                "rest",
                f"$match of the {role} patient, X-Purpose-Of-Use {purpose[:12]} [user]",
                sent,
                reply,
                expect=(200,),
                forbidden=SHARING_FORBIDDEN,
                problems=match_problems(reply),
            )


EVERYTHING_QUERIES = (
    "",
    "?_type=Observation,Condition,DocumentReference,Consent,Patient,Organization",
    "?_type=DocumentReference",
    "?_since=2000-01-01T00:00:00Z",
)


def everything_attacks(attacker: Attacker, patient_token: str) -> None:
    """$everything of clinic-b's own records of clinic-a's patients: clinic-b's compartment only,
    with every token, type filter, page and purpose of use; and clinic-c's cursor into clinic-a's."""
    world = attacker.world
    for role, patient in world.persons.items():
        own = attacker.lookalikes[patient]
        for query in EVERYTHING_QUERIES:
            for token in TOKEN_NAMES:
                _everything(attacker, f"Patient/{own}/$everything{query}", token, f"of the {role} patient")
        for purpose in PURPOSES:
            _everything(attacker, f"Patient/{own}/$everything", "user", f"of the {role} patient", purpose)
        path = f"Patient/{own}/$everything?_count=1"  # every page, one entry at a time
        for page in range(1, 13):
            reply = _everything(attacker, path, "system", f"page {page} of the {role} patient")
            following = [
                k["url"] for k in (reply.document or {}).get("link") or [] if k.get("relation") == "next"
            ]
            if not following:
                break
            url = urlsplit(following[0])
            path = f"{url.path.removeprefix(attacker.b + '/')}?{url.query}"
        # the patient's own SMART app at clinic-b; an app whose patient context is clinic-a's patient
        _everything(
            attacker, f"Patient/{own}/$everything", attacker.auth[f"patient:{own}"], f"of the {role} patient"
        )
        _everything(
            attacker, f"Patient/{own}/$everything", patient_token, f"of the {role} patient", expect=(200, 403)
        )
    # clinic-c's cursor for a page of clinic-a's records, on clinic-b's URL
    _, _, query = world.third_cursor.partition("?")
    consented = attacker.lookalikes[world.persons["consented"]]
    for path in (f"Patient/{consented}/$everything?{query}", world.third_cursor):
        for token in TOKEN_NAMES:
            _everything(
                attacker,
                path,
                token,
                "with clinic-c's cursor",
                interaction="cross-facility $everything: clinic-c's cursor",
                expect=(400, 404),
            )


def everything_after_own_consents(attacker: Attacker) -> None:
    for role, patient in attacker.world.persons.items():
        own = attacker.lookalikes[patient]
        for query in EVERYTHING_QUERIES[:2]:
            _everything(
                attacker,
                f"Patient/{own}/$everything{query}",
                "user",
                f"of the {role} patient",
                interaction=AFTER_CONSENTS,
            )
        for purpose in ("BTG", "ETREAT"):
            _everything(
                attacker,
                f"Patient/{own}/$everything",
                "user",
                f"of the {role} patient",
                purpose,
                interaction=AFTER_CONSENTS,
            )


AFTER_CONSENTS = "cross-facility $everything after clinic-b's own consents"


def _everything(
    attacker: Attacker,
    path: str,
    token: str,
    what: str,
    purpose: str | None = None,
    *,
    interaction: str = "cross-facility $everything",
    expect: Collection[int] = (200,),
) -> Reply:
    headers = {"X-Purpose-Of-Use": purpose} if purpose else None
    sent, reply = attacker.send("GET", f"{attacker.b}/{path}", token, headers=headers)
    label = f", X-Purpose-Of-Use {purpose[:12]}" if purpose else ""
    shown = path.split("?")[1][:40] if "?" in path else ""
    attacker.ledger.judge_reply(
        interaction,
        "rest",
        f"GET $everything?{shown} {what}{label} [{_name(token)}]",
        sent,
        reply,
        expect=expect,
        forbidden=SHARING_FORBIDDEN,
    )
    return reply


def sharing_searches(attacker: Attacker) -> None:
    """Searches, includes and chains around the linked records: clinic-b's own resources only.
    clinic-b also stores resources that refer to clinic-a's consents, documents, order, provenance
    and organizations, then includes through them."""
    victim, world, b, ledger = attacker.victim, attacker.world, attacker.b, attacker.ledger
    own = [attacker.lookalikes[p] for p in world.persons.values()]
    consents = sorted(world.consents.values())
    provenance = next(i for t, i in victim.bodies if t == "Provenance")
    observation = attacker.pool.body("Observation")
    observation.update(
        subject={"reference": f"Patient/{own[0]}"},
        basedOn=[{"reference": f"ServiceRequest/{world.order}"}],
        derivedFrom=[{"reference": f"DocumentReference/{world.documents['final']}"}],
        focus=[{"reference": f"Consent/{consents[0]}"}],
    )
    observation.pop("encounter", None)
    note = attacker.pool.body("DocumentReference")
    note.update(
        subject={"reference": f"Patient/{own[1]}"},
        relatesTo=[
            {"code": "appends", "target": {"reference": f"DocumentReference/{world.documents['final']}"}}
        ],
    )
    trail = attacker.pool.body("Provenance")
    trail.update(
        target=[{"reference": f"Consent/{c}"} for c in consents[:3]]
        + [{"reference": f"Provenance/{provenance}"}]
    )
    entries = [
        {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
        for r in (observation, note, trail)
    ]
    _, reply = attacker.send(
        "POST", b, "user", {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    assert reply.status == 200, reply.text[:1000]
    attacker.ledger.own(reply)
    ids = ",".join(own)
    queries = [
        f"Patient?_id={ids}&_revinclude=*&_include=*",
        f"Patient?_id={ids}&_revinclude:iterate=*",
        f"Observation?patient={own[0]}&_include=*&_include:iterate=*",
        "Observation?_include=Observation:based-on&_include=Observation:derived-from&_include=Observation:focus",
        "DocumentReference?_include=DocumentReference:relatesto&_include=DocumentReference:subject",
        "Provenance?_include=Provenance:target&_include:iterate=*",
        f"Consent?patient={world.persons['revoked']}",
        f"Consent?patient={own[2]}&_include=*",
        f"Consent?_id={','.join(consents)}",
        f"DocumentReference?patient={world.persons['consented']}",
        f"DocumentReference?subject={own[1]}&_include=*",
        f"ServiceRequest?_id={world.order}&_revinclude=*",
        f"Observation?based-on=ServiceRequest/{world.order}&_include=Observation:based-on",
        f"Organization?_id={','.join(world.organizations.values())}&_revinclude=*",
        f"Patient?link=Patient/{world.persons['consented']}",
    ]
    for patient_id in world.persons.values():
        patient = victim.bodies[("Patient", patient_id)]
        ssn = next((i["value"] for i in patient["identifier"] if i.get("system") == US_SSN), None)
        if ssn:
            queries.append(
                f"Patient?identifier={quote(US_SSN + '|' + ssn, safe='')}&_revinclude=Observation:subject"
                "&_revinclude=Consent:patient&_revinclude=DocumentReference:subject&_revinclude=Provenance:target"
            )
    for n, query in enumerate(queries):
        token = TOKEN_NAMES[n % 2]
        path = f"{b}/{quote(query, safe='?=&:*,/|%')}"
        sent, reply = attacker.send("GET", path, token)
        ledger.judge_reply(
            "cross-facility search",
            "rest",
            f"GET {query[:120]} [{token}]",
            sent,
            reply,
            expect=(200,),
            forbidden=SHARING_FORBIDDEN,
        )


def own_consents(attacker: Attacker) -> None:
    """Consents clinic-b writes in its own store — naming clinic-a's patient, or its own record of
    the person, with clinic-b itself as the recipient: they grant clinic-b nothing of clinic-a's."""
    world, b, ledger = attacker.world, attacker.b, attacker.ledger
    reply = attacker.client.call(
        "GET",
        f"{b}/Organization?identifier={quote(f'urn:ehr:tenant|{ATTACKER}', safe='')}",
        attacker.auth["user"],
    )
    itself = reply.document["entry"][0]["resource"]["id"]
    logical = {
        "role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
        "reference": {"identifier": {"system": "urn:ehr:tenant", "value": ATTACKER}},
    }
    wanted = {
        "on clinic-a's patient id, clinic-b as recipient": sharing_consent(
            world.persons["unconsented"], itself
        ),
        "on clinic-a's consented patient id, clinic-b as recipient, any purpose": sharing_consent(
            world.persons["consented"], itself
        ),
        "on its own record of the revoked patient, clinic-b as recipient": sharing_consent(
            attacker.lookalikes[world.persons["revoked"]], itself
        ),
        "on its own record, clinic-b as recipient by identifier": {
            **sharing_consent(attacker.lookalikes[world.persons["registered"]], itself),
            "provision": {"type": "permit", "actor": [logical]},
        },
        "on its own record, naming clinic-a's Organization for clinic-b": sharing_consent(
            attacker.lookalikes[world.persons["consented"]], world.organizations[ATTACKER]
        ),
    }
    for label, consent in wanted.items():
        sent, reply = attacker.send("POST", f"{b}/Consent", "user", consent)
        ledger.own(reply)
        ledger.judge_reply(
            "clinic-b's own consent", "rest", f"POST Consent {label} [user]", sent, reply, expect=(201,)
        )


PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def subscriptions(attacker: Attacker) -> None:
    """Subscriptions of clinic-b whose criteria name clinic-a's patients, documents and order, or
    its own records of them: stored like any other (the answer as for ids no tenant has)."""
    world, b, ledger = attacker.world, attacker.b, attacker.ledger
    persons = world.persons
    own = {role: attacker.lookalikes[p] for role, p in persons.items()}
    ssn = next(
        i["value"]
        for i in attacker.victim.bodies[("Patient", persons["unconsented"])]["identifier"]
        if i.get("system") == US_SSN
    )
    criteria: list[tuple[str, str]] = [
        (f"Observation?patient={persons['unconsented']}", persons["unconsented"]),
        (f"Observation?patient=Patient/{persons['consented']}", persons["consented"]),
        (f"Observation?subject=Patient/{persons['revoked']}", persons["revoked"]),
        (f"Patient?_id={persons['registered']}", persons["registered"]),
        (f"DocumentReference?patient={persons['consented']}", persons["consented"]),
        (f"Consent?patient={persons['revoked']}", persons["revoked"]),
        (f"Observation?based-on=ServiceRequest/{world.order}", world.order),
        (f"Observation?patient={persons['unconsented']},{own['unconsented']}", persons["unconsented"]),
        (f"Observation?patient:identifier={quote(US_SSN + '|' + ssn, safe='')}", ssn),
        (f"Observation?patient.identifier={quote(US_SSN + '|' + ssn, safe='')}", ssn),  # a chain: refused
    ]
    criteria += [(f"Observation?patient={own[role]}", own[role]) for role in persons]
    criteria += [
        (f"{t}?patient={own[role]}", own[role])
        for role in ("consented", "revoked")
        for t in ("DocumentReference", "Consent")
    ]
    criteria += [(f"Patient?_id={own[role]}", own[role]) for role in persons]
    criteria += [("Observation", ""), ("Consent", ""), ("DocumentReference", "")]

    def subscription(text: str) -> dict[str, Any]:
        return {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "what clinic-b wants to hear of",
            "criteria": text,
            "channel": {
                "type": "rest-hook",
                "endpoint": world.receivers.attacker.url,
                "payload": "application/fhir+json",
            },
        }

    def shape(reply: Reply, value: str) -> str:
        body = {k: v for k, v in (reply.document or {}).items() if k not in ("id", "meta")}
        return (
            normal(f"{reply.status} {json.dumps(body, sort_keys=True)}", value)
            if value
            else str(reply.status)
        )

    for n, (text, value) in enumerate(criteria):
        token = TOKEN_NAMES[n % 2]
        never = str(uuid.uuid4()) if "-" in value and len(value) == 36 else f"999-{n:02d}-0000"
        control_text = text.replace(value, never) if value else text
        _, control = attacker.send("POST", f"{b}/Subscription", token, subscription(control_text))
        ledger.own(control)
        sent, reply = attacker.send("POST", f"{b}/Subscription", token, subscription(text))
        ledger.own(reply)
        found = []
        if value and shape(reply, value) != shape(control, never):
            found.append(
                f"answered unlike criteria naming what no tenant has: {reply.text[:200]!r} "
                f"vs {control.text[:200]!r}"
            )
        ledger.judge_reply(
            "subscription",
            "rest",
            f"POST Subscription criteria {text[:100]} [{token}]",
            sent,
            reply,
            expect=(422,) if "patient.identifier" in text else (201,),
            problems=found,
        )


class RecordingDeliverer:
    """Stands in for the webhook transport: every notification the notifier would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], Any]] = []

    def deliver(self, subscription: Mapping[str, Any], notification: Any) -> DeliveryResult:
        self.sent.append((dict(subscription), notification))
        return DeliveryResult(True, 1, 204, "delivered")


def notification_attacks(attacker: Attacker) -> None:
    """clinic-a's records change (each of them announced as the change publisher would): clinic-b's
    Subscriptions hear of none and no cross-facility event names clinic-b; clinic-c, which the
    consented patient chose, hears of that patient's (the notifier is live)."""
    victim, world, ledger = attacker.victim, attacker.world, attacker.ledger
    deliverer, publisher, dead = RecordingDeliverer(), InMemoryEventPublisher(), InMemoryDeadLetters()
    notifier = bootstrap_notifier(
        load_settings(SharingNotifierSettings), deliverer=deliverer, dead_letters=dead, publisher=publisher
    )
    persons = set(world.persons.values())
    per_type: Counter[tuple[str, str]] = Counter()
    third_heard = False
    for key in sorted(victim.bodies):
        stored = notifier.store.current(VICTIM, key[0], key[1])
        if stored is None or not (
            (stored.compartments & persons) or key in {("Patient", p) for p in persons}
        ):
            continue
        owner = next(iter(sorted(stored.compartments & persons)), key[1])
        if per_type[(owner, key[0])] >= 2:
            continue
        per_type[(owner, key[0])] += 1
        before = (len(deliverer.sent), len(publisher.events), len(dead))
        event = {
            "detail-type": "ResourceChanged",
            "detail": {
                "tenant": VICTIM,
                "resourceType": key[0],
                "id": key[1],
                "versionId": str(stored.version),
                "operation": "update",
                "patients": [f"Patient/{p}" for p in sorted(stored.compartments)],
            },
        }
        notifier.handle(event)
        delivered = [(s, n) for s, n in deliverer.sent[before[0] :]]
        events = [json.loads(e["Detail"]) for e in publisher.events[before[1] :]]
        to_attacker = [
            {
                "subscription": s.get("id"),
                "criteria": s.get("criteria"),
                "focus": n.focus,
                "focusTenant": n.focus_tenant,
            }
            for s, n in delivered
            if n.tenant == ATTACKER
        ]
        to_attacker += [e for e in events if e.get("tenant") == ATTACKER]
        to_attacker += [
            {"dead letter": n.focus} for n, _ in dead.letters[before[2] :] if n.tenant == ATTACKER
        ]
        third_heard |= any(n.tenant == THIRD and n.focus_tenant == VICTIM for _, n in delivered)
        ledger.judge(
            interaction="notification of clinic-a's change",
            channel="notifier",
            what=f"{key[0]}/{key[1]} of the patient {owner} changed",
            request=json.dumps(event),
            status=200 if to_attacker else 204,
            text=json.dumps(to_attacker),
            document=None,
            expect=(204,),
            refusal="notification",
        )
    world.liveness["the notifier tells clinic-c of the consented patient's changes"] = third_heard
    # clinic-b's Subscriptions are live: they hear of clinic-b's own records of the same persons
    own = next(k for k in attacker.own_observations if k[0] == "Observation")
    stored = notifier.store.current(ATTACKER, own[0], own[1])
    assert stored is not None
    before = len(deliverer.sent)
    notifier.handle(
        {
            "detail-type": "ResourceChanged",
            "detail": {
                "tenant": ATTACKER,
                "resourceType": own[0],
                "id": own[1],
                "versionId": str(stored.version),
                "operation": "update",
                "patients": [f"Patient/{p}" for p in sorted(stored.compartments)],
            },
        }
    )
    world.liveness["the notifier tells clinic-b's Subscriptions of clinic-b's own changes"] = any(
        n.tenant == ATTACKER for _, n in deliverer.sent[before:]
    )


def live_notifications(attacker: Attacker, clinic_a: str) -> None:
    """clinic-a files new Observations of its linked patients; the records stream, the bus and
    the notifier run as deployed: clinic-c's webhook gets the consented patient's, clinic-b's
    webhook gets none of them."""
    world, ledger = attacker.world, attacker.ledger
    roles = list(world.persons)
    entries = []
    for role in roles:
        observation = attacker.pool.body("Observation")
        observation.pop("encounter", None)
        observation["subject"] = {"reference": f"Patient/{world.persons[role]}"}
        entries.append({"resource": observation, "request": {"method": "POST", "url": "Observation"}})
    reply = attacker.client.bundle(VICTIM, clinic_a, "transaction", entries)
    assert reply.status == 200, reply.text[:1000]
    keys = [location_key(e["response"]["location"]) for e in reply.document["entry"]]
    bodies, _ = read_back(attacker.client, clinic_a, keys)
    ledger.learn(bodies)
    attacker.victim.totals["Observation"] += len(keys)
    # Right after, clinic-b files one of its own: its webhook hears of that one
    observation = attacker.pool.body("Observation")
    observation.pop("encounter", None)
    observation["subject"] = {"reference": f"Patient/{attacker.lookalikes[world.persons['unconsented']]}"}
    _, own = attacker.send("POST", f"{attacker.b}/Observation", "user", observation)
    assert own.status == 201, own.text[:500]
    ledger.own(own)
    awaited = {
        "clinic-c's webhook got clinic-a's new record of the consented patient": (
            world.receivers.third,
            keys[roles.index("consented")][1],
        ),
        "clinic-b's webhook got clinic-b's own new record": (world.receivers.attacker, own.document["id"]),
    }
    deadline = time.monotonic() + LIVE_SECONDS
    heard = dict.fromkeys(awaited, False)
    while time.monotonic() < deadline and not all(heard.values()):
        heard = {
            label: any(wanted in d.body.decode() for d in receiver.deliveries)
            for label, (receiver, wanted) in awaited.items()
        }
        time.sleep(0.2)
    time.sleep(1.0)  # clinic-a's other changes went through the same stream batch, just before
    world.liveness.update(heard)
    got = [d.body.decode("utf-8", "replace") for d in world.receivers.attacker.deliveries]
    for role, key in zip(roles, keys, strict=True):
        named = [text for text in got if key[1] in text]
        ledger.judge(
            interaction="notification of clinic-a's change, live",
            channel="webhook",
            what=f"new {key[0]}/{key[1]} of the {role} patient",
            request="",
            status=200 if named else 204,
            text="\n".join(named or got),
            document=None,
            expect=(204,),
            refusal="notification",
        )


LIVE_SECONDS = 20.0


def sharing_attacks(
    attacker: Attacker, patient_index: MasterPatientIndex, patient_token: str, clinic_a: str
) -> None:
    """With clinic-b's records linked to clinic-a's patients and no Consent of clinic-a's for
    clinic-b: $match, $everything, searches, clinic-b's own Consents, Subscriptions, notifications."""
    lookalikes(attacker, patient_index)
    for patient in attacker.lookalikes.values():
        attacker.auth[f"patient:{patient}"] = bearer(
            attacker.issuer.mint(
                tenant=ATTACKER, scope="patient/*.cruds", patient=patient, client_id="clinic-b-patient-app"
            )
        )
    match_attacks(attacker, patient_token)
    everything_attacks(attacker, patient_token)
    sharing_searches(attacker)
    own_consents(attacker)
    everything_after_own_consents(attacker)
    subscriptions(attacker)
    notification_attacks(attacker)
    live_notifications(attacker, clinic_a)


# -- phase 6: clinic-a's URL with clinic-b's tokens -------------------------------------------------


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
    # The lab's own endpoint: results posted there are filed in the chart of the clinic that ordered
    unconsented = attacker.victim.bodies[("Patient", attacker.world.persons["unconsented"])]
    message = result(hl7_person(unconsented, placer=attacker.world.order), f"LAB{uuid.uuid4().hex[:12]}")
    for token in tokens:
        sent, reply = attacker.send(
            "POST", f"/tenants/{LAB}/hl7v2", token, message.encode(), {"Content-Type": ER7}
        )
        attacker.ledger.judge_reply(
            "tenant mismatch: the lab's hl7v2 endpoint",
            "hl7v2",
            f"POST /tenants/{LAB}/hl7v2 ORU^R01 with clinic-a's placer number [{_name(token)}]",
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
    hl7 = {"Content-Type": ER7}
    document = attacker.world.documents["final"]
    consented = attacker.world.persons["consented"]
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "clinic-a's changes",
        "criteria": f"Observation?patient={consented}",
        "channel": {"type": "rest-hook", "endpoint": attacker.world.receivers.attacker.url},
    }
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
            ("POST", root.removesuffix("/fhir") + "/hl7v2", attacker.world.hl7[0][0].encode(), hl7, "hl7v2"),
            (
                "POST",
                f"{root}/Patient/$match",
                match_parameters(victim.bodies[key], "all demographics"),
                None,
                "$match",
            ),
            ("GET", f"{root}/Binary/{document}", None, None, "Binary"),
            ("POST", f"{root}/DocumentReference/{document}/$upload-url", b"", None, "$upload-url"),
            (
                "GET",
                f"{root}/Patient/{consented}/$everything?_type=Observation",
                None,
                None,
                "$everything, shared",
            ),
            ("GET", f"{root}/Consent?patient={consented}", None, None, "consent search"),
            ("POST", f"{root}/Subscription", subscription, None, "subscription"),
        ]
    return routes


# -- phase 7: forged and foreign tokens -------------------------------------------------------------


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
            else [
                r
                for r in routes
                if r[4]
                in ("read", "search", "create", "update", "delete", "batch", "hl7v2", "$match", "Binary")
            ]
        )
        for method, path, body, headers, interaction in chosen:
            sent, reply = attacker.send(method, path, authorization, body, headers)
            attacker.token_request_ids.append(reply.headers[REQUEST_ID_HEADER])
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
    liveness: dict[str, bool]  # the sharing world works as documented (else its attacks prove little)
    victim_size: str  # what clinic-a held when the attacks began
    token_request_ids: tuple[str, ...]  # the forged and foreign tokens' attempts through the gateway
    began: str  # when the attacks began (UTC, to the second)


@pytest.fixture(scope="module")
def matrix(
    client: Client,
    victim: Victim,
    world: World,
    tokens: Tokens,
    issuer: DevIssuer,
    other_issuer: DevIssuer,
    gateway: LocalGateway,
    patient_index: MasterPatientIndex,
) -> MatrixRun:
    started, requests = time.perf_counter(), client.requests
    attacks_began = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    size = f"{len(victim.keys)} resources of {len(victim.types())} types, {len(victim.patients)} patients"
    pool = MatrixPool()
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
    attacker = Attacker(client, ledger, victim, pool, auth, world, issuer)
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
        ("documents", lambda: document_attacks(attacker, patient_token)),
        # Phase 2: bait
        ("bait", lambda: lay_bait(attacker)),
        ("through bait", lambda: bait_attacks(attacker, patient_token)),
        # Phase 3: writes by clinic-a's ids and identifiers
        ("writes", lambda: writes(attacker)),
        # Phase 4: HL7 v2 on clinic-b's own endpoint with clinic-a's identifiers and messages
        ("hl7v2", lambda: hl7_attacks(attacker, patient_token)),
        # Phase 5: cross-facility sharing without clinic-a's consent for clinic-b
        ("sharing", lambda: sharing_attacks(attacker, patient_index, patient_token, bearer(tokens.victim))),
        # Phase 6: clinic-a's URL with clinic-b's tokens
        ("tenant mismatch", lambda: tenant_mismatch(attacker, [*TOKEN_NAMES, patient_token])),
        # Phase 7: forged and foreign tokens on clinic-a's URL
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
        {"seeding clinic-a and its world": victim.seconds, **phases},
        dict(world.liveness),
        size,
        tuple(attacker.token_request_ids),
        attacks_began,
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
            f"  clinic-a held {matrix.victim_size}, then one more Observation per linked patient",
            f"  {matrix.requests} HTTP requests in {matrix.seconds:.0f} s (wall clock)",
            f"  {matrix.probes} search probes from clinic-a's data ({matrix.probes_shown} shown to find "
            f"their clinic-a resource); {matrix.searchable} supported (type, parameter) pairs on its types",
            f"  CPU seconds per phase: {phases}",
            "  the sharing world is live: "
            + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in matrix.liveness.items()),
        ]
    )
    with capsys.disabled():
        print("\n" + report)
    findings = "\n".join(str(f) for f in ledger.findings[:40])
    # Then nothing of clinic-a's reached clinic-b, and every refusal was the documented one
    assert ledger.total >= MIN_ATTEMPTS, report
    assert not ledger.leaks, f"{report}\n{findings}"
    assert not ledger.deviations, f"{report}\n{findings}"


def test_every_forged_or_foreign_token_is_in_clinic_a_audit_trail(
    matrix: MatrixRun, client: Client, issuer: DevIssuer
) -> None:
    # Given the attempts with forged and foreign tokens on clinic-a's URL (refused by the gateway's
    # authorizer, 401, or by the function, 403), When clinic-a's administrator reads its trail
    auditor = bearer(issuer.mint(tenant=VICTIM, scope="user/AuditEvent.rs"))
    recorded: Counter[str] = Counter()
    path: str | None = f"{base(VICTIM)}/AuditEvent?date=ge{matrix.began}&_count=500"
    while path:
        reply = client.call("GET", path, auditor)
        assert reply.status == 200, reply.text[:300]
        for entry in reply.document.get("entry", []):
            for entity in entry["resource"].get("entity", []):
                identifier = entity.get("what", {}).get("identifier", {})
                if identifier.get("system") == "urn:ehr:request-id":
                    recorded[identifier["value"]] += 1
        following = [link["url"] for link in reply.document.get("link", []) if link["relation"] == "next"]
        path = urlsplit(following[0])._replace(scheme="", netloc="").geturl() if following else None
    # Then each attempt is there exactly once
    counts = Counter(recorded[request_id] for request_id in matrix.token_request_ids)
    assert len(matrix.token_request_ids) >= 800
    assert counts == {1: len(matrix.token_request_ids)}, counts


def test_the_sharing_world_is_live(matrix: MatrixRun) -> None:
    # Given the world the sharing attacks ran in, Then it works as documented for those entitled:
    # the index links each facility's record of a person, clinic-c (which the consented patient
    # chose) reads and hears of clinic-a's records, and $match knows clinic-a's patients exist
    assert matrix.liveness and all(matrix.liveness.values()), matrix.liveness


def test_refusals_do_not_depend_on_what_is_asked_for(matrix: MatrixRun) -> None:
    # Given every tenant-mismatch refusal of the matrix, Then they are one and the same answer
    bodies = matrix.ledger.refusals.get("tenant mismatch", set())
    assert len({without_request_ids(b) for b in bodies}) == 1, sorted(bodies)[:3]


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
    (
        "another facility named",
        "POST Patient/$match",
        200,
        {"fullUrl": f"/tenants/{VICTIM}/fhir/Patient/x"},
        {"forbidden": (f"/tenants/{VICTIM}/",)},
        "leak",
    ),
    (
        "a facility the request named",
        f"GET Patient?organization={VICTIM}",
        200,
        {"note": VICTIM},
        {"forbidden": (VICTIM,)},
        None,
    ),
    (
        "what the caller found",
        "POST Patient/$match",
        200,
        {},
        {"problems": ["entries in tenant order"]},
        "leak",
    ),
    ("a notification for clinic-b", "", 200, {}, {"expect": (204,), "refusal": "notification"}, "leak"),
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


def _match_reply(*entries: dict[str, Any]) -> Reply:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": list(entries)}
    return Reply(200, {}, json.dumps(bundle))


_ELSEWHERE = {
    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
    "resource": {
        "resourceType": "Patient",
        "meta": {"tag": [{"system": MATCH_TAG, "code": "other-facility"}]},
    },
    "search": {"mode": "match", "score": 1.0},
}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        pytest.param(_ELSEWHERE, False, id="only that it exists"),
        pytest.param(
            {**_ELSEWHERE, "resource": {**_ELSEWHERE["resource"], "gender": "female"}},
            True,
            id="a demographic",
        ),
        pytest.param(
            {
                **_ELSEWHERE,
                "resource": {
                    "resourceType": "Patient",
                    "meta": {"tag": [{"system": SOURCE_TAG, "code": VICTIM}]},
                },
            },
            True,
            id="its facility",
        ),
        pytest.param({**_ELSEWHERE, "fullUrl": f"http://{HOST}{base(VICTIM)}/Patient/x"}, True, id="its URL"),
        pytest.param(
            {
                "fullUrl": f"http://{HOST}{base(VICTIM)}/Patient/x",
                "resource": {"resourceType": "Patient", "id": "x"},
            },
            True,
            id="the record",
        ),
        pytest.param(
            {
                "fullUrl": f"http://{HOST}{base(ATTACKER)}/Patient/x",
                "resource": {"resourceType": "Patient", "id": "x"},
            },
            False,
            id="clinic-b's own record",
        ),
    ],
)
def test_a_match_at_another_facility_may_show_only_that_it_exists(
    entry: dict[str, Any], problem: bool
) -> None:
    # Given a $match answer with one entry, When the matrix looks at it, Then it objects when it should
    assert bool(match_problems(_match_reply(entry))) is problem
