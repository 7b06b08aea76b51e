"""Fixtures of the attack matrix: the victim tenant seeded through the API, the world around it
(a third facility, the master patient index, consents, documents, a lab order, an HL7 v2 sender)
and the tokens."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import pytest

from ehr import names
from ehr.bootstrap import master_patient_index
from ehr.documents.service import SHA256_EXTENSION
from ehr.labs.ports import PlacerEntry
from ehr.security.tenancy import new_tenant
from ehr.settings import ChangePublisherSettings, load_settings
from ehr.sharing.consent import TENANT_SYSTEM, sharing_consent, tenant_organization
from ehr.sharing.mpi import MasterPatientIndex
from ehr.store.lab_orders import DynamoLabOrders
from ehr.store.tenants import DynamoTenantDirectory
from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer
from infra.local.platform import LocalPlatform
from infra.local.webhook_receiver import WebhookReceiver
from tests.integration.security.support import (
    ATTACKER,
    MIN_MARKER_LENGTH,
    VICTIM,
    Client,
    Key,
    Victim,
    assert_attacker_holds_none_of,
    base,
    bearer,
    build_probes,
    location_key,
    phi_values,
    read_back,
    seed_victim,
    type_totals,
    victim_record_identifiers,
)

THIRD = "clinic-c"  # a facility one of clinic-a's patients consented to share with (not clinic-b)
THIRD_NAME = "Clinic C (attack matrix)"
LAB = "acme-lab"  # the lab partner clinic-a's order went to
ER7 = "x-application/hl7-v2+er7"
US_SSN = "http://hl7.org/fhir/sid/us-ssn"
SOURCE_TAG = "urn:ehr:source-tenant"
INDEX_SECONDS = 30.0  # the records stream feeds the patient index within a second or two
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@dataclass(frozen=True)
class Tokens:
    victim: str  # clinic-a, user/*.cruds: seeds and re-reads the victim's data
    victim_system: str  # clinic-a, system/*.cruds: clinic-a's own HL7 v2 sender
    user: str  # clinic-b, user/*.cruds
    system: str  # clinic-b, system/*.cruds
    third: str  # clinic-c, user/*.cruds


@dataclass
class Receivers:
    """Loopback webhook endpoints: clinic-b's Subscriptions post to one, clinic-c's to the other."""

    attacker: WebhookReceiver
    third: WebhookReceiver


@dataclass
class World:
    """What the HL7 v2, document and sharing attacks need besides clinic-a's seeded records."""

    persons: dict[str, str]  # role -> clinic-a Patient id (see ``PERSON_ROLES``)
    consents: dict[str, str]  # what the Consent says -> its id in clinic-a's store
    documents: dict[str, str]  # "final" (verified content) | "pending" (awaiting upload) -> id
    order: str  # a ServiceRequest clinic-a sent to acme-lab; its id is the placer number there
    organizations: dict[str, str]  # tenant -> the Organization that represents it in clinic-a's store
    hl7: list[tuple[str, str]]  # messages clinic-a sent to its own HL7 v2 endpoint, with their ACKs
    mirror: dict[str, Any]  # a person only clinic-c holds, shaped like the canary ($match control)
    third_patients: dict[str, str]  # clinic-a id (or "mirror") -> clinic-c's record of that person
    third_cursor: str  # "path?query" under clinic-c's base: a $everything page of clinic-a's records
    receivers: Receivers
    liveness: dict[str, bool] = field(default_factory=dict)  # the sharing world works as documented


# Each of clinic-a's patients stands in one situation towards clinic-b.
PERSON_ROLES = {
    "unconsented": "no Consent at all",
    "consented": "an active Consent for clinic-c (not clinic-b)",
    "revoked": "Consents for clinic-b that are revoked, expired, not yet valid, not active or unusable",
    "registered": "registered through clinic-a's HL7 v2 endpoint (ADT^A04), no Consent",
}


@pytest.fixture(scope="module", autouse=True)
def rollback_by_undo_log() -> Iterator[None]:
    """moto's TransactWriteItems keeps a deep copy of every table it touches as its rollback
    snapshot (``infra/local/moto_fast_paths.py`` already takes it once per table, not once per
    item). Every request writes its audit record in a transaction, and every FHIR write one more,
    so with the matrix's thousands of audit records and clinic records that copy is most of the
    module's time, and it grows with every request. While these modules run, a transaction instead
    keeps the items it names (and the length of each table's stream) and puts them back when it
    is cancelled: the same tables and streams afterwards, in time proportional to the transaction."""
    from moto.dynamodb import models as dynamodb_models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    previous_copy = dynamodb_models.copy
    previous_transact = dynamodb_models.DynamoDBBackend.transact_write_items
    state = threading.local()

    class NoTableSnapshot:
        def __getattr__(self, name: str) -> Any:
            return getattr(previous_copy, name)

        def deepcopy(self, value: Any, memo: Any = None) -> Any:
            if getattr(state, "undo", None) is not None and isinstance(value, Table):
                return value  # the undo log below is the snapshot
            return previous_copy.deepcopy(value, memo)

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
        undo: list[tuple[Table, Any, Any, Any]] = []
        streams: dict[int, tuple[Table, int]] = {}
        for entry in transact_items:
            _, op = next(iter(entry.items()))
            table = self.tables.get(op.get("TableName"))
            key = op.get("Key") or op.get("Item") or {}
            if table is None or table.hash_key_attr not in key:
                continue  # moto refuses it before anything is written
            hash_key = DynamoType(key[table.hash_key_attr])
            range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
            if table.range_key_attr and range_key is None:
                continue
            prior = table.get_item(hash_key, range_key)
            undo.append((table, hash_key, range_key, previous_copy.deepcopy(prior) if prior else None))
            if table.stream_shard is not None:
                streams.setdefault(id(table), (table, len(table.stream_shard.items)))
        state.undo = undo
        try:
            return previous_transact(self, transact_items)
        except Exception:
            for table, hash_key, range_key, prior in reversed(undo):
                if range_key is None:
                    if prior is None:
                        table.items.pop(hash_key, None)
                    else:
                        table.items[hash_key] = prior
                elif prior is None:
                    table.items[hash_key].pop(range_key, None)
                else:
                    table.items[hash_key][range_key] = prior
            for table, length in streams.values():
                assert table.stream_shard is not None
                del table.stream_shard.items[length:]
            raise
        finally:
            state.undo = None

    dynamodb_models.copy = NoTableSnapshot()  # type: ignore[assignment]
    dynamodb_models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    try:
        yield
    finally:
        dynamodb_models.copy = previous_copy
        dynamodb_models.DynamoDBBackend.transact_write_items = previous_transact  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def tokens(issuer: DevIssuer, platform: LocalPlatform) -> Tokens:
    return Tokens(
        victim=issuer.mint(tenant=VICTIM, scope="user/*.cruds", client_id="clinic-a-app"),
        victim_system=issuer.mint(tenant=VICTIM, scope="system/*.cruds", client_id="clinic-a-hl7"),
        user=issuer.mint(tenant=ATTACKER, scope="user/*.cruds", client_id="clinic-b-app"),
        system=issuer.mint(tenant=ATTACKER, scope="system/*.cruds", client_id="clinic-b-backend"),
        third=issuer.mint(tenant=THIRD, scope="user/*.cruds", client_id="clinic-c-app"),
    )


@pytest.fixture(scope="module")
def client(gateway: LocalGateway) -> Client:
    return Client(gateway)


@pytest.fixture(scope="module")
def receivers() -> Iterator[Receivers]:
    with WebhookReceiver() as attacker, WebhookReceiver() as third:
        yield Receivers(attacker, third)


@pytest.fixture(scope="module")
def patient_index(platform: LocalPlatform) -> MasterPatientIndex:
    """The master patient index as the change publisher keeps it (read here to wait for links)."""
    index = master_patient_index(load_settings(ChangePublisherSettings))
    assert index is not None, "the local platform has no patient index"
    return index


@pytest.fixture(scope="module")
def seeded(
    client: Client,
    tokens: Tokens,
    platform: LocalPlatform,
    receivers: Receivers,
    patient_index: MasterPatientIndex,
) -> tuple[Victim, World]:
    assert_attacker_holds_none_of(client, bearer(tokens.user), victim_record_identifiers())
    victim = seed_victim(client, bearer(tokens.victim))
    return seed_world(client, tokens, platform, receivers, patient_index, victim)


@pytest.fixture(scope="module")
def victim(seeded: tuple[Victim, World]) -> Victim:
    return seeded[0]


@pytest.fixture(scope="module")
def world(seeded: tuple[Victim, World]) -> World:
    return seeded[1]


# -- the world around clinic-a ---------------------------------------------------------------------


def seed_world(
    client: Client,
    tokens: Tokens,
    platform: LocalPlatform,
    receivers: Receivers,
    index: MasterPatientIndex,
    victim: Victim,
) -> tuple[Victim, World]:
    """clinic-a's sharing, document, lab and HL7 v2 records, and clinic-c with its record of one of
    clinic-a's patients; returns the victim extended by clinic-a's new records."""
    started = time.process_time()
    auth = bearer(tokens.victim)
    assert platform.resources is not None
    register_third_facility(platform)
    patients = {victim.bodies[("Patient", p)]["name"][0].get("family"): p for p in victim.patients}
    unconsented, consented = patients["Kreiger"], patients["Mills"]
    revoked = victim.canary
    organizations = {tenant: _organization(client, auth, tenant) for tenant in (ATTACKER, THIRD)}
    hl7, hl7_keys = register_by_hl7(client, bearer(tokens.victim_system), victim.tag)
    registered = next(i for t, i in hl7_keys if t == "Patient")
    canary_obs = next(
        k
        for k, b in victim.bodies.items()
        if k[0] == "Observation" and (b.get("subject") or {}).get("reference") == f"Patient/{revoked}"
    )
    consents = _consents(client, auth, organizations, consented, revoked, canary_obs)
    documents = _documents(client, auth, consented, unconsented, victim.tag)
    order = _lab_order(client, auth, unconsented, platform.resources.records_table)
    subscription = client.call(
        "POST",
        f"{base(VICTIM)}/Subscription",
        auth,
        {
            "resourceType": "Subscription",
            "status": "off",
            "reason": "results for the clinic's own dashboard",
            "criteria": f"Observation?patient={unconsented}",
            "channel": {"type": "rest-hook", "endpoint": "https://hooks.clinic-a.example/ehr"},
        },
    )
    assert subscription.status == 201, subscription.text[:500]
    new_keys = sorted(
        {("Organization", o) for o in organizations.values()}
        | set(hl7_keys)
        | {("Consent", c) for c in consents.values()}
        | {("DocumentReference", d) for d in documents.values()}
        | {("ServiceRequest", order), location_key(subscription.headers["Location"])}
    )
    bodies, gone = read_back(client, auth, new_keys)
    assert not gone and len(bodies) == len(new_keys)
    extended = extend_victim(client, auth, victim, bodies)

    # clinic-c: its own record of the consented patient, a person only it holds (shaped like the
    # canary: what $match shows of another facility's patient when that is not clinic-a) and a
    # Subscription to its patient's Observations.
    third = bearer(tokens.third)
    mirror = mirror_of(extended.bodies[("Patient", revoked)], victim.tag)
    reply = client.bundle(
        THIRD,
        third,
        "transaction",
        [
            {
                "resource": lookalike(extended.bodies[("Patient", consented)]),
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": mirror, "request": {"method": "POST", "url": "Patient"}},
        ],
    )
    assert reply.status == 200, reply.text[:1000]
    third_consented, third_mirror = (
        location_key(e["response"]["location"])[1] for e in reply.document["entry"]
    )
    reply = client.call(
        "POST",
        f"{base(THIRD)}/Subscription",
        third,
        {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "results from other facilities",
            "criteria": f"Observation?patient={third_consented}",
            "channel": {
                "type": "rest-hook",
                "endpoint": receivers.third.url,
                "payload": "application/fhir+json",
            },
        },
    )
    assert reply.status == 201, reply.text[:500]
    persons = {
        "unconsented": unconsented,
        "consented": consented,
        "revoked": revoked,
        "registered": registered,
    }
    liveness = {
        "clinic-a's patients are in the index": _wait_indexed(index, [(VICTIM, p) for p in persons.values()]),
        "clinic-c's record is linked to clinic-a's consented patient": wait_linked(
            index, (VICTIM, consented), (THIRD, third_consented)
        ),
    }
    cursor, shared = _third_cursor(client, third, third_consented)
    liveness["clinic-c's $everything carries clinic-a's records under the Consent"] = shared
    world = World(
        persons=persons,
        consents=consents,
        documents=documents,
        order=order,
        organizations=organizations,
        hl7=hl7,
        mirror=mirror,
        third_patients={consented: third_consented, "mirror": third_mirror},
        third_cursor=cursor,
        receivers=receivers,
        liveness=liveness,
    )
    return replace(extended, seconds=victim.seconds + time.process_time() - started), world


def register_third_facility(platform: LocalPlatform) -> None:
    """clinic-c joins the platform as a demo tenant would: in the tenant directory, with the key
    that signs its Subscription webhooks."""
    assert platform.resources is not None
    DynamoTenantDirectory(platform.resources.records_table).register(new_tenant(THIRD, "clinic", THIRD_NAME))
    manager = boto3.client("secretsmanager", region_name=platform.resources.region)
    name = names.subscription_secret_name(THIRD)
    with contextlib.suppress(manager.exceptions.ResourceExistsException):
        manager.create_secret(Name=name, SecretString=secrets.token_hex(32))


def _organization(client: Client, auth: str, tenant: str) -> str:
    """The Organization representing ``tenant`` in clinic-a's store: the demo seeding made clinic-b's,
    clinic-a makes clinic-c's (as a deployment does when it onboards a facility)."""
    query = quote(f"{TENANT_SYSTEM}|{tenant}", safe="")
    found = client.call("GET", f"{base(VICTIM)}/Organization?identifier={query}", auth)
    assert found.status == 200, found.text[:500]
    for entry in found.document.get("entry") or []:
        return str(entry["resource"]["id"])
    created = client.call(
        "POST", f"{base(VICTIM)}/Organization", auth, tenant_organization(tenant, THIRD_NAME)
    )
    assert created.status == 201, created.text[:500]
    return str(created.document["id"])


def register_by_hl7(client: Client, system_auth: str, tag: str) -> tuple[list[tuple[str, str]], list[Key]]:
    """clinic-a registers a new patient by ADT^A04 through its own endpoint, then updates it by
    ADT^A08; returns the messages with their ACKs and what they wrote (the Provenance's targets)."""
    number = str(uuid.uuid4().int)[:7]
    pid = (
        f"PID|1||MRN-H-{tag}^^^CLINICA^MR||Hl7victim{tag}^Adaeze||19850214|F|||"
        f"{number} Registry Road^^Springfield^MA^01101||^^PH^^^413^{number}||||||"
        f"900-{number[:2]}-{number[2:6]}"
    )
    sent: list[tuple[str, str]] = []
    keys: list[Key] = []
    for event, structure in (("A04", "ADT_A01"), ("A08", "ADT_A01")):
        control = f"REG{event}-{tag}"
        message = "\r".join(
            [
                f"MSH|^~\\&|REGADT|CLINICA|EHR|EHR|20261121120000||ADT^{event}^{structure}|{control}|P|2.5.1",
                f"EVN|{event}|20261121120000",
                pid,
                f"PV1|1|O|||||||||||||||||V-{tag}^^^CLINICA^VN|||||||||||||||||||||||||20261121110000",
            ]
        )
        reply = client.call(
            "POST", f"/tenants/{VICTIM}/hl7v2", system_auth, message.encode(), {"Content-Type": ER7}
        )
        assert reply.status == 200 and "MSA|AA|" in reply.text, reply.text
        sent.append((message, reply.text))
        provenance = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{VICTIM}|REGADT|CLINICA|{control}|hl7v2"))
        read = client.call("GET", f"{base(VICTIM)}/Provenance/{provenance}", system_auth)
        assert read.status == 200, read.text[:500]
        keys.append(("Provenance", provenance))
        keys += [location_key(t["reference"]) for t in read.document["target"]]
    return sent, sorted(set(keys))


def _consents(
    client: Client,
    auth: str,
    organizations: dict[str, str],
    consented: str,
    revoked: str,
    canary_obs: Key,
) -> dict[str, str]:
    """clinic-a's Consents: one that shares a patient with clinic-c, and for the canary every way a
    Consent naming clinic-b can fail to grant anything."""
    org_b, org_c = organizations[ATTACKER], organizations[THIRD]
    wanted: dict[str, dict[str, Any]] = {
        "active, for clinic-c": sharing_consent(consented, org_c),
        "revoked (inactive), for clinic-b": sharing_consent(revoked, org_b),
        "expired, for clinic-b": sharing_consent(
            revoked, org_b, period={"start": "2019-01-01", "end": "2020-01-01"}
        ),
        "not yet valid, for clinic-b": sharing_consent(revoked, org_b, period={"start": "2099-01-01"}),
        "narrowed to one resource, for clinic-b": sharing_consent(
            revoked,
            org_b,
            data=[{"meaning": "instance", "reference": {"reference": f"{canary_obs[0]}/{canary_obs[1]}"}}],
        ),
    }
    for status in ("draft", "proposed", "rejected", "entered-in-error"):
        wanted[f"{status}, for clinic-b"] = {**sharing_consent(revoked, org_b), "status": status}
    treatment = sharing_consent(revoked, org_b)
    treatment["scope"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}]
    }
    wanted["not a privacy consent, for clinic-b"] = treatment
    labels = list(wanted)
    reply = client.bundle(
        VICTIM,
        auth,
        "transaction",
        [{"resource": wanted[label], "request": {"method": "POST", "url": "Consent"}} for label in labels],
    )
    assert reply.status == 200, reply.text[:1000]
    ids = {
        label: location_key(e["response"]["location"])[1]
        for label, e in zip(labels, reply.document["entry"], strict=True)
    }
    # The patient revoked the consent for clinic-b: the same Consent, now inactive
    revoke = {
        **wanted["revoked (inactive), for clinic-b"],
        "id": ids["revoked (inactive), for clinic-b"],
        "status": "inactive",
    }
    reply = client.call("PUT", f"{base(VICTIM)}/Consent/{revoke['id']}", auth, revoke)
    assert reply.status == 200, reply.text[:500]
    return ids


def _documents(client: Client, auth: str, consented: str, unconsented: str, tag: str) -> dict[str, str]:
    """A verified document (inline content, of the consented patient) and one awaiting its upload."""
    final = client.call(
        "POST",
        f"{base(VICTIM)}/DocumentReference",
        auth,
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": {"reference": f"Patient/{consented}"},
            "description": f"Discharge letter {tag}",
            "content": [
                {
                    "attachment": {
                        "contentType": "application/pdf",
                        "title": f"Discharge letter {tag}",
                        "data": base64.b64encode(PDF).decode(),
                    }
                }
            ],
        },
    )
    assert final.status == 201, final.text[:500]
    pending_bytes = PDF + f"% {tag}\n".encode()
    pending = client.call(
        "POST",
        f"{base(VICTIM)}/DocumentReference",
        auth,
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": {"reference": f"Patient/{unconsented}"},
            "content": [
                {
                    "attachment": {
                        "contentType": "application/pdf",
                        "title": f"Referral {tag}",
                        "size": len(pending_bytes),
                        "hash": base64.b64encode(hashlib.sha1(pending_bytes).digest()).decode(),
                        "extension": [
                            {
                                "url": SHA256_EXTENSION,
                                "valueBase64Binary": base64.b64encode(
                                    hashlib.sha256(pending_bytes).digest()
                                ).decode(),
                            }
                        ],
                    }
                }
            ],
        },
    )
    assert pending.status == 201, pending.text[:500]
    download = client.call("GET", f"{base(VICTIM)}/Binary/{final.document['id']}", auth)
    assert download.status == 302, download.text[:500]  # clinic-a itself gets its content
    return {"final": final.document["id"], "pending": pending.document["id"]}


def _lab_order(client: Client, auth: str, patient: str, records_table: str) -> str:
    """A completed lab order of clinic-a whose placer number acme-lab knows (as the lab-order
    workflow indexes it when it sends the ORM; written here so that no workflow runs)."""
    reply = client.call(
        "POST",
        f"{base(VICTIM)}/ServiceRequest",
        auth,
        {
            "resourceType": "ServiceRequest",
            "status": "completed",
            "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
            "subject": {"reference": f"Patient/{patient}"},
        },
    )
    assert reply.status == 201, reply.text[:500]
    order = str(reply.document["id"])
    DynamoLabOrders(records_table).index_placer(PlacerEntry(LAB, order, VICTIM, order))
    return order


def extend_victim(client: Client, auth: str, victim: Victim, added: dict[Key, dict[str, Any]]) -> Victim:
    """The victim with clinic-a's new records: every attack by id, search and write covers them."""
    bodies = {**victim.bodies, **added}
    patients = sorted({*victim.patients, *(i for t, i in added if t == "Patient")})
    identifiers = list(victim.identifiers)
    markers = set(victim.markers) | {i for _, i in added}
    for (resource_type, _), body in added.items():
        if resource_type == "Patient":
            markers |= phi_values(body)
            identifiers += [f"{i['system']}|{i['value']}" for i in body["identifier"] if i.get("system")]
        if resource_type == "DocumentReference":
            markers |= {a["attachment"].get("title", "") for a in body.get("content") or []}
    per_type: dict[str, list[Key]] = {}
    for key in sorted(added):
        per_type.setdefault(key[0], []).append(key)
    documents = {k for k in added if k[0] == "DocumentReference"}
    sample = sorted(set(victim.sample) | {keys[0] for keys in per_type.values()} | documents)
    types = sorted({t for t, _ in bodies} | {t for t, _ in victim.deleted})
    return replace(
        victim,
        bodies=bodies,
        patients=patients,
        identifiers=identifiers,
        markers=frozenset(m for m in markers if len(m) >= MIN_MARKER_LENGTH),
        probes=build_probes(bodies),
        totals=type_totals(client, auth, types),
        sample=sample,
    )


# -- persons as another facility records them --------------------------------------------------------


def lookalike(patient: dict[str, Any]) -> dict[str, Any]:
    """Another facility's record of the same person: the same identifiers and demographics."""
    return {k: v for k, v in patient.items() if k not in ("id", "meta", "text")}


def mirror_of(patient: dict[str, Any], tag: str) -> dict[str, Any]:
    """A different person with the same shape of record (same elements, other values)."""
    number = str(uuid.uuid4().int)[:6]
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5.97", "value": f"MRN-C-{tag}"}],
        "name": [
            {"family": f"Mirrorthird{tag}", "given": [f"Wanda{tag}"]},
            {"use": "nickname", "given": [f"Wandita{tag}"]},
        ],
        "gender": patient.get("gender", "female"),
        "birthDate": "1942-09-23",
        "telecom": [{"system": "phone", "value": f"+44 20 7946 {number[:4]}"}],
        "address": [{"line": [f"{number} Mirror Lane"], "city": "Elsewhere"}],
    }


def _wait_indexed(index: MasterPatientIndex, records: list[tuple[str, str]]) -> bool:
    deadline = time.monotonic() + INDEX_SECONDS
    while time.monotonic() < deadline:
        if all(index.enterprise_id(t, p) for t, p in records):
            return True
        time.sleep(0.2)
    return False


def wait_linked(index: MasterPatientIndex, *records: tuple[str, str]) -> bool:
    deadline = time.monotonic() + INDEX_SECONDS
    while time.monotonic() < deadline:
        found = {index.enterprise_id(t, p) for t, p in records}
        if len(found) == 1 and None not in found:
            return True
        time.sleep(0.2)
    return False


def _third_cursor(client: Client, auth: str, patient: str) -> tuple[str, bool]:
    """A paging cursor clinic-c's own $everything handed out for a page of clinic-a's records."""
    path = f"Patient/{patient}/$everything?_count=1"
    prefix = base(THIRD) + "/"
    for _ in range(12):
        reply = client.call("GET", prefix + path, auth)
        assert reply.status == 200, reply.text[:500]
        tags = {
            t.get("code")
            for e in reply.document.get("entry") or []
            for t in (e.get("resource") or {}).get("meta", {}).get("tag") or []
            if t.get("system") == SOURCE_TAG
        }
        if VICTIM in tags and "_cursor=" in path:
            return path, True
        following = [k["url"] for k in reply.document.get("link") or [] if k.get("relation") == "next"]
        if not following:
            break
        url = urlsplit(following[0])
        path = f"{url.path[len(prefix) :]}?{url.query}"
    return path, False
