"""The FHIR store and API on DynamoDB Local (AWS's own engine), measured as side-by-side ratios.

The real Lambda handlers are imported and called with API Gateway proxy events through
``LocalGateway`` (as ``ehr local`` does), their settings pointing at a DynamoDB Local this script
starts. One engine serves both sides of every ratio, and the compared operations are interleaved
so that noise on this 2-core machine hits them alike.

1. create / read / search through the whole handler vs raw boto3 put_item / get_item / query of
   a similar-sized item (a Synthea Observation as JSON): p50 and p99, ratio (target <= 3). A third
   side replays, with the raw client, the DynamoDB requests the handler sent (writes moved to a
   fresh key namespace): the DynamoDB work the design requires, and the handler's time above it.
2. the same searches at a small and a large tenant (Synthea Observations cloned over synthetic
   patients, 100 per patient, written through the store's commit): p50 ratio (target <= 1.5),
   and the items DynamoDB scanned per resource returned (from its Query responses).
3. write units per create of an Observation and a Patient, from the TransactWriteItems the
   handler sends: DynamoDB's rules applied to the items' sizes, DynamoDB Local's own report, and
   the store's ``CommitStats`` estimate.
4. Synthea transaction Bundles POSTed through the handler vs the same resources created one by
   one through the handler: resources per second, ratio (target > 1).

    .venv/bin/python tests/bench/bench_fhir_store.py [--small]

``--small`` runs reduced sizes in under about two minutes; the full run loads up to 100,000
Observations (stopping at ``--load-budget`` seconds, and saying so: at about 95 per second here,
about 57,000 load in the default 600 s and the run takes about 13 minutes). ``--load-budget 0``
loads all 100,000 (about 18 minutes) and takes about 21 minutes.
Writes tests/bench/results/fhir_store.json (or --out) and prints a table. Needs Java 17 and the
DynamoDB Local jar (``make setup``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import random
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SYNTHEA = REPO.parent / "shared" / "data" / "synthea"
sys.path[:0] = [str(REPO), str(REPO / "layers" / "ehr")]

REGION = "us-east-1"
# DynamoDB Local keeps one database per access key and region: every client here uses these.
os.environ.update(
    AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local", AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION
)
os.environ.pop("AWS_SESSION_TOKEN", None)
warnings.filterwarnings("ignore", message="No application metrics to publish")

import boto3  # noqa: E402
from botocore import xform_name  # noqa: E402
from pynamodb.connection.base import Connection  # noqa: E402

from ehr import names  # noqa: E402
from ehr.fhir.service import FhirService  # noqa: E402
from ehr.security.tenancy import new_tenant  # noqa: E402
from ehr.settings import AuthorizerSettings, DiscoverySettings, FhirApiSettings, environment_for  # noqa: E402
from ehr.store import schema  # noqa: E402
from ehr.store.dynamo import DynamoRecordStore  # noqa: E402
from ehr.store.secrets import secret_bytes  # noqa: E402
from ehr.store.tenants import DynamoTenantDirectory  # noqa: E402
from infra.local.dynamodb_local import DynamoDBLocal, jar_path  # noqa: E402
from infra.local.gateway import GatewayResult, LocalFunctions, LocalGateway  # noqa: E402
from infra.local.issuer import DevIssuer  # noqa: E402

TARGET_HANDLER_RATIO = 3.0
TARGET_SIZE_RATIO = 1.5
TARGET_BUNDLE_RATIO = 1.0
OBSERVATIONS_PER_PATIENT = 100  # Synthea's patients here have 48-108 Observations each
LOAD_CHUNK = 500  # Observations per store commit while loading (a staged commit)
LOAD_CONCURRENCY = 3  # commits in flight while loading
TABLE_PREFIX = "bench"


@dataclass(frozen=True)
class Profile:
    samples: int  # interleaved pairs per handler-vs-raw operation
    search_rounds: int  # interleaved rounds of the size comparison
    small_size: int
    large_size: int
    creates_per_type: int  # write-unit sample
    bundle_rounds: int
    bundles: int  # how many Synthea patient bundles (smallest first)


FULL = Profile(
    samples=1000,
    search_rounds=300,
    small_size=1_000,
    large_size=100_000,
    creates_per_type=30,
    bundle_rounds=2,
    bundles=6,
)
SMALL = Profile(
    samples=120,
    search_rounds=60,
    small_size=250,
    large_size=2_500,
    creates_per_type=6,
    bundle_rounds=1,
    bundles=1,
)


# -- Synthea data -----------------------------------------------------------------------------------


@dataclass
class Synthea:
    bundles: list[dict[str, Any]]  # patient transaction Bundles, smallest first
    observations: list[dict[str, Any]]  # every Observation, references as Type/urn-uuid
    patients: list[dict[str, Any]]

    @classmethod
    def load(cls) -> Synthea:
        bundles = []
        for path in sorted(SYNTHEA.glob("synthea__*.json")):
            bundle = json.loads(path.read_text(encoding="utf-8"))
            if any(e["resource"]["resourceType"] == "Patient" for e in bundle.get("entry", [])):
                bundles.append(bundle)
        if not bundles:
            raise SystemExit("no Synthea patient bundles under ../shared/data/synthea")
        bundles.sort(key=lambda b: len(b["entry"]))
        observations, patients = [], []
        for bundle in bundles:
            types = {e["fullUrl"]: e["resource"]["resourceType"] for e in bundle["entry"]}
            for entry in bundle["entry"]:
                resource = _typed_references(entry["resource"], types)
                if resource["resourceType"] == "Observation":
                    observations.append(resource)
                elif resource["resourceType"] == "Patient":
                    patients.append(resource)
        random.Random(7).shuffle(observations)  # an even mix of codes at any size
        return cls(bundles, observations, patients)


def _typed_references(resource: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
    """A copy whose ``urn:uuid`` references read ``Type/uuid`` (what a server would have stored)."""
    copied = copy.deepcopy(resource)
    for holder in _reference_holders(copied):
        reference = holder["reference"]
        if reference in types:
            holder["reference"] = f"{types[reference]}/{reference.removeprefix('urn:uuid:')}"
    return copied


def _reference_holders(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            yield from _reference_holders(value)
    elif isinstance(node, list):
        for value in node:
            yield from _reference_holders(value)


def observation_for(template: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """A Synthea Observation re-pointed at a synthetic patient (and that patient's encounters)."""
    resource = copy.deepcopy(template)
    resource.pop("id", None)
    for holder in _reference_holders(resource):
        kind, _, ref_id = holder["reference"].partition("/")
        if kind == "Patient":
            holder["reference"] = f"Patient/{patient_id}"
        elif ref_id:
            holder["reference"] = f"{kind}/{uuid.uuid5(uuid.NAMESPACE_URL, patient_id + ref_id)}"
    return resource


def patient_id(n: int) -> str:
    return f"pt-{n:06d}"


# -- measuring ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


@dataclass
class Call:
    operation: str
    request: dict[str, Any]
    response: dict[str, Any]
    seconds: float


@dataclass
class DynamoCalls:
    """Every request the product sends to DynamoDB, seen at pynamodb's single exit
    (``Connection._make_api_call``): the request, DynamoDB's response and its duration.
    Only the benchmark patches it, and only inside ``recording()``."""

    calls: list[Call] = field(default_factory=list)

    @contextmanager
    def recording(self) -> Iterator[DynamoCalls]:
        original = Connection._make_api_call
        calls = self.calls

        def recorded(connection: Connection, operation_name: str, operation_kwargs: dict[str, Any]) -> Any:
            started = time.perf_counter()
            response = original(connection, operation_name, operation_kwargs)
            calls.append(
                Call(operation_name, operation_kwargs, response or {}, time.perf_counter() - started)
            )
            return response

        Connection._make_api_call = recorded  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            Connection._make_api_call = original  # type: ignore[method-assign]

    def take(self) -> list[Call]:
        taken, self.calls[:] = list(self.calls), []
        return taken


def attribute_size(value: dict[str, Any]) -> int:
    """Bytes of one attribute value by DynamoDB's item-size rules."""
    ((kind, data),) = value.items()
    if kind == "S":
        return len(data.encode("utf-8"))
    if kind == "B":
        return len(data) if isinstance(data, bytes | bytearray) else len(data) * 3 // 4
    if kind == "N":
        digits = Decimal(data).normalize().as_tuple().digits
        return (len(digits) + 1) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode("utf-8")) for s in data)
    if kind == "NS":
        return sum(attribute_size({"N": n}) for n in data)
    if kind == "BS":
        return sum(attribute_size({"B": b}) for b in data)
    if kind == "L":
        return 3 + sum(1 + attribute_size(v) for v in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode("utf-8")) + attribute_size(v) for k, v in data.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode("utf-8")) + attribute_size(value) for name, value in item.items())


def kb_units(item: dict[str, Any]) -> int:
    return max(1, math.ceil(item_size(item) / 1024))


def write_units_by_rules(calls: list[Call], table: str) -> float:
    """Write units the requests spend on ``table`` by DynamoDB's rules: one per started KB of each
    item written, twice that inside TransactWriteItems. Deletes and updates are counted as one unit
    (two in a transaction): on creates they only touch small items (index items, a staged commit's
    transaction record)."""
    units = 0.0
    for call in calls:
        request = call.request
        if call.operation == "TransactWriteItems":
            for action in request["TransactItems"]:
                ((kind, body),) = action.items()
                if body["TableName"] == table:
                    units += 2 * (kb_units(body["Item"]) if kind == "Put" else 1)
        elif call.operation == "BatchWriteItem":
            writes = request["RequestItems"].get(table, [])
            units += sum(kb_units(w["PutRequest"]["Item"]) if "PutRequest" in w else 1 for w in writes)
        elif request.get("TableName") != table:
            continue
        elif call.operation == "PutItem":
            units += kb_units(request["Item"])
        elif call.operation in ("UpdateItem", "DeleteItem"):
            units += 1
    return units


def transaction_on(calls: list[Call], table: str) -> list[Call]:
    return [
        c
        for c in calls
        if c.operation == "TransactWriteItems"
        and any(next(iter(a.values()))["TableName"] == table for a in c.request["TransactItems"])
    ]


def reported_units(response: dict[str, Any]) -> float:
    capacity = response.get("ConsumedCapacity")
    if isinstance(capacity, list):
        return sum(float(c.get("CapacityUnits", 0)) for c in capacity)
    if isinstance(capacity, dict):
        return float(capacity.get("CapacityUnits", 0))
    return 0.0


# -- replaying the handler's DynamoDB requests with the raw client ------------------------------------

# Both tables the handler writes key their items by the same partition-key attribute ("pk").
PARTITION_KEY = schema.RECORDS_TABLE.partition_key
if schema.AUDIT_TABLE.partition_key != PARTITION_KEY:
    raise SystemExit("the records and audit tables' partition keys differ: extend Replay's rewrite")
REPLAY_READS = frozenset({"GetItem", "Query", "BatchGetItem", "TransactGetItems"})
REPLAY_WRITES = frozenset({"TransactWriteItems", "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"})
# A condition made only of attribute_not_exists(...) holds on an item that does not exist, so it
# holds in a fresh key namespace: the store's creates (current and version items) and every audit
# item use it. Any other condition refers to an existing item (an update's "v = :v AND
# attribute_not_exists(tx)", a staged commit's "tx = :tx" or "status = :pending") and would fail
# there, so the replay drops it (and counts it in ``conditions_dropped``).
_HOLDS_WHEN_ABSENT = re.compile(
    r"\s*attribute_not_exists\s*\(\s*#\w+\s*\)(\s+AND\s+attribute_not_exists\s*\(\s*#\w+\s*\))*\s*"
)


@dataclass
class Replay:
    """The DynamoDB requests one handler call sent, ready to send again with the raw boto3 client:
    reads as they were; writes moved to a fresh key namespace (every partition key prefixed
    ``REPLAY#{uuid}#``) so that their creates' conditions hold again."""

    requests: list[tuple[str, dict[str, Any]]]
    conditions_dropped: int

    @classmethod
    def of(cls, calls: list[Call]) -> Replay:
        prefix = f"REPLAY#{uuid.uuid4()}#"
        dropped = 0
        requests = []
        for call in calls:
            if call.operation in REPLAY_READS:
                requests.append((call.operation, call.request))
                continue
            if call.operation not in REPLAY_WRITES:
                raise SystemExit(f"the handler sent {call.operation}: the replay does not know it")
            request = copy.deepcopy(call.request)
            request.pop("ClientRequestToken", None)  # the same token with other items is refused
            if call.operation == "TransactWriteItems":
                for action in request["TransactItems"]:
                    ((kind, body),) = action.items()
                    if kind == "ConditionCheck":
                        raise SystemExit("a ConditionCheck cannot be replayed in a fresh namespace")
                    _move(body.get("Item") or body["Key"], prefix)
                    dropped += _drop_condition(body)
            elif call.operation == "BatchWriteItem":
                for writes in request["RequestItems"].values():
                    for write in writes:
                        if "PutRequest" in write:
                            _move(write["PutRequest"]["Item"], prefix)
                        else:
                            _move(write["DeleteRequest"]["Key"], prefix)
            else:  # PutItem, UpdateItem, DeleteItem
                _move(request.get("Item") or request["Key"], prefix)
                dropped += _drop_condition(request)
            requests.append((call.operation, request))
        return cls(requests, dropped)

    def send(self, client: Any) -> None:
        for operation, request in self.requests:
            getattr(client, xform_name(operation))(**request)


def _move(item: dict[str, Any], prefix: str) -> None:
    key = item[PARTITION_KEY]
    item[PARTITION_KEY] = {"S": prefix + key["S"]}


def _drop_condition(body: dict[str, Any]) -> int:
    """Drops a condition that would not hold in a fresh namespace, with the placeholders only it
    used (DynamoDB refuses unused ones). Returns 1 if it dropped one."""
    condition = body.get("ConditionExpression")
    if condition is None or _HOLDS_WHEN_ABSENT.fullmatch(condition):
        return 0
    del body["ConditionExpression"]
    body.pop("ReturnValuesOnConditionCheckFailure", None)
    remaining = " ".join(str(body.get(k, "")) for k in ("UpdateExpression", "ProjectionExpression"))
    for holder in ("ExpressionAttributeNames", "ExpressionAttributeValues"):
        if holder in body:
            used = {p: v for p, v in body[holder].items() if re.search(re.escape(p) + r"(?!\w)", remaining)}
            if used:
                body[holder] = used
            else:
                del body[holder]
    return 1


def request_shape(calls: list[Call]) -> str:
    """The requests of one handler call, e.g. "TransactWriteItems(23) + TransactWriteItems(2)"."""
    parts = []
    for call in calls:
        request = call.request
        if call.operation == "TransactWriteItems":
            parts.append(f"{call.operation}({len(request['TransactItems'])})")
        elif call.operation in ("BatchGetItem", "BatchWriteItem"):
            items = sum(
                len(v["Keys"]) if isinstance(v, dict) else len(v) for v in request["RequestItems"].values()
            )
            parts.append(f"{call.operation}({items})")
        else:
            parts.append(call.operation)
    return " + ".join(parts)


# -- the handler stack on DynamoDB Local --------------------------------------------------------------


class _Discard:
    """Where the handlers' stdout goes: with POWERTOOLS_METRICS_DISABLED (as local mode sets it)
    Powertools 3 never clears its metric set, so every 100th request prints an EMF blob."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


_EMF_SINK: Any = _Discard()


class CachingGateway(LocalGateway):
    """``LocalGateway`` with API Gateway's authorizer cache (the stack sets a results TTL): the
    TOKEN authorizer runs once per token, every request still reaches the real handler."""

    def __init__(self, functions: LocalFunctions) -> None:
        super().__init__(functions)
        self._decisions: dict[str, dict[str, Any]] = {}

    def _authorize(self, headers: Any, method: str, path: str) -> Any:
        # A refusal (whatever LocalGateway returns for one) passes through uncached.
        token = headers.get("Authorization", "")
        if token in self._decisions:
            return self._decisions[token]
        outcome = super()._authorize(headers, method, path)
        if isinstance(outcome, dict):
            self._decisions[token] = outcome
        return outcome


class Stack:
    """DynamoDB Local, the platform's tables, the real handlers behind the gateway, a raw client."""

    def __init__(self, ddb: DynamoDBLocal, home: Path, *, keep_streams: bool = False) -> None:
        self.endpoint = ddb.endpoint
        self.raw = boto3.client("dynamodb", endpoint_url=ddb.endpoint, region_name=REGION)
        tables = {}
        for definition in schema.TABLES:
            name = f"{TABLE_PREFIX}-{definition.logical_id}"
            kwargs = definition.create_table_kwargs(name)
            if not keep_streams:
                kwargs.pop("StreamSpecification", None)
            self.raw.create_table(**kwargs)
            tables[definition.logical_id] = name
        self.records_table = tables[schema.RECORDS_TABLE.logical_id]
        self.audit_table = tables[schema.AUDIT_TABLE.logical_id]
        self.issuer = DevIssuer(home / "dev-issuer.pem")
        cursor_secret = f"{TABLE_PREFIX}/cursor-key"
        prime_cursor_secret(cursor_secret)
        auth: dict[str, Any] = {
            "environment": "local",
            "issuer": self.issuer.issuer,
            "audience": self.issuer.audience,
            "jwks_json": json.dumps(self.issuer.jwks()),
            "tenant_claim": names.DEFAULT_TENANT_CLAIM,
        }
        os.environ.update(
            {  # as infra/local/platform.py builds it, plus the DynamoDB Local endpoint
                **environment_for(AuthorizerSettings, **auth),
                **environment_for(DiscoverySettings, **auth),
                **environment_for(
                    FhirApiSettings,
                    records_table=self.records_table,
                    audit_table=tables[schema.AUDIT_TABLE.logical_id],
                    cursor_secret_name=cursor_secret,
                    dynamodb_endpoint=ddb.endpoint,
                    **auth,
                ),
                "POWERTOOLS_SERVICE_NAME": names.SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": names.METRICS_NAMESPACE,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": "WARNING",
            }
        )
        functions = LocalFunctions()
        for function in (names.FN_FHIR_API, names.FN_AUTHORIZER):  # the ones this benchmark calls
            functions.module(function)
        self.gateway = CachingGateway(functions)
        self.tenants = DynamoTenantDirectory(self.records_table, host=ddb.endpoint)
        self.store = DynamoRecordStore(self.records_table, host=ddb.endpoint)  # for loading only
        self.service = FhirService(self.store)
        self._tokens: dict[str, str] = {}

    def tenant(self, tenant_id: str) -> str:
        self.tenants.register(new_tenant(tenant_id, "clinic", f"Benchmark {tenant_id}"))
        self._tokens[tenant_id] = self.issuer.mint(tenant=tenant_id, scope="user/*.cruds", ttl=24 * 3600)
        return tenant_id

    def call(self, method: str, tenant: str, path: str, body: Any = None) -> GatewayResult:
        headers = {
            "Host": "bench.local",
            "Authorization": f"Bearer {self._tokens[tenant]}",
            "Accept": "application/fhir+json",
        }
        payload = b""
        if body is not None:
            headers["Content-Type"] = "application/fhir+json"
            payload = json.dumps(body).encode("utf-8")
        url = f"/tenants/{tenant}/fhir" + (f"/{path}" if path else "")
        with redirect_stdout(_EMF_SINK):
            return self.gateway.handle(method, url, headers, payload)


def prime_cursor_secret(name: str) -> None:
    """The paging-cursor key from Secrets Manager, emulated by moto for that one call only; the
    handler reads it through the same cached ``secret_bytes`` at cold start, as in Lambda."""
    from moto import mock_aws

    with mock_aws():
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=name, SecretString=secrets.token_hex(32)
        )
        secret_bytes(name)


def expect(result: GatewayResult, status: int, what: str) -> dict[str, Any]:
    if result.status != status:
        raise SystemExit(f"{what}: HTTP {result.status}, expected {status}: {result.body[:400]!r}")
    return json.loads(result.body) if result.body else {}


# -- loading a tenant through the store's commit ---------------------------------------------------------


@dataclass
class Loaded:
    tenant: str
    observations: int
    patients: int
    seconds: float
    largest_partitions: list[tuple[str, int]]
    budget_hit: bool


def load_observations(
    stack: Stack, tenant: str, templates: list[dict[str, Any]], count: int, *, budget: float | None
) -> Loaded:
    """``count`` Observations (``OBSERVATIONS_PER_PATIENT`` per patient) written by the store's
    staged commit, ``LOAD_CONCURRENCY`` commits of ``LOAD_CHUNK`` in flight; stops at ``budget``."""
    started = time.perf_counter()
    partitions: Counter[str] = Counter()
    lock = threading.Lock()
    done = 0

    def commit(start: int) -> int:
        if budget is not None and time.perf_counter() - started > budget:
            return 0
        writes = []
        for n in range(start, min(count, start + LOAD_CHUNK)):
            resource = observation_for(
                templates[n % len(templates)], patient_id(n // OBSERVATIONS_PER_PATIENT)
            )
            writes.append(stack.service.prepare(tenant, "Observation", str(uuid.uuid4()), resource, None))
        stack.store.commit(tenant, writes)
        with lock:
            partitions.update(f"{e.param}={e.key}" for w in writes for e in w.index if e.indexed and e.key)
        return len(writes)

    with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
        for written in pool.map(commit, range(0, count, LOAD_CHUNK)):
            done += written
            if written and done % (LOAD_CHUNK * 20) == 0:
                rate = done / (time.perf_counter() - started)
                print(f"  {tenant}: {done:,} Observations ({rate:.0f}/s)", flush=True)
    # Chunks run in order, so what was written is a prefix: patients are whole but the last.
    return Loaded(
        tenant=tenant,
        observations=done,
        patients=math.ceil(done / OBSERVATIONS_PER_PATIENT),
        seconds=round(time.perf_counter() - started, 1),
        largest_partitions=partitions.most_common(3),
        budget_hit=done < count,
    )


# -- 1. handler vs raw DynamoDB ---------------------------------------------------------------------------


def handler_vs_raw(
    stack: Stack, data: Synthea, search_tenant: str, loinc: str, profile: Profile, recorder: DynamoCalls
) -> dict[str, Any]:
    tenant = stack.tenant("bench-api")
    table = stack.records_table
    raw_query_pk = "RAW#QUERY"
    for n in range(40):  # the raw query's partition: 40 Observation-sized items
        body = json.dumps(data.observations[n % len(data.observations)])
        stack.raw.put_item(
            TableName=table, Item={"pk": {"S": raw_query_pk}, "sk": {"S": f"{n:04d}"}, "b": {"S": body}}
        )
    search_path = f"Observation?code={loinc}&_count=20"
    samples: dict[str, list[float]] = {
        k: [] for k in ("create", "read", "search", "put_item", "get_item", "query")
    }
    replayed: dict[str, list[float]] = {"create": [], "read": [], "search": []}
    in_dynamo: dict[str, list[float]] = {"create": [], "read": [], "search": []}
    outside: dict[str, list[float]] = {"create": [], "read": [], "search": []}
    requests: dict[str, Counter[int]] = {"create": Counter(), "read": Counter(), "search": Counter()}
    shapes: dict[str, Counter[str]] = {"create": Counter(), "read": Counter(), "search": Counter()}
    dropped: dict[str, int] = {"create": 0, "read": 0, "search": 0}
    last_calls: dict[str, list[Call]] = {}  # the handler's latest requests, per operation
    # The three sides of each operation run in all 6 orders in turn. The replay sends the requests
    # of the handler's latest call of that operation: this round's if the handler went first, else
    # the previous round's (the same requests for another resource).
    orders = list(itertools.permutations(("handler", "raw", "replay")))
    warmup = 20
    with recorder.recording():
        for n in range(warmup + profile.samples):
            template = data.observations[n % len(data.observations)]
            resource = observation_for(template, patient_id(n % 50))
            raw_key = {"pk": {"S": f"RAW#Observation#{uuid.uuid4()}"}, "sk": {"S": "CUR"}}
            raw_item = {**raw_key, "b": {"S": json.dumps(resource)}}
            created: dict[str, Any] = {}

            def create(resource: dict[str, Any] = resource, created: dict[str, Any] = created) -> Any:
                created.update(expect(stack.call("POST", tenant, "Observation", resource), 201, "create"))
                return created

            def read(created: dict[str, Any] = created) -> Any:
                return expect(stack.call("GET", tenant, f"Observation/{created['id']}"), 200, "read")

            def search() -> Any:
                return expect(stack.call("GET", search_tenant, search_path), 200, "search")

            def put_item(raw_item: dict[str, Any] = raw_item) -> Any:
                return stack.raw.put_item(TableName=table, Item=raw_item)

            def get_item(raw_key: dict[str, Any] = raw_key) -> Any:
                return stack.raw.get_item(TableName=table, Key=raw_key, ConsistentRead=True)

            def query() -> Any:
                return stack.raw.query(
                    TableName=table,
                    KeyConditionExpression="pk = :pk",
                    Limit=20,
                    ConsistentRead=True,
                    ExpressionAttributeValues={":pk": {"S": raw_query_pk}},
                )

            pairs: list[tuple[str, Callable[[], Any], str, Callable[[], Any]]] = [
                ("create", create, "put_item", put_item),
                ("read", read, "get_item", get_item),
                ("search", search, "query", query),
            ]
            for handler_name, handler_fn, raw_name, raw_fn in pairs:
                seconds: dict[str, float] = {}
                for side in orders[n % len(orders)]:
                    if side == "raw":
                        seconds["raw"], _ = timed(raw_fn)
                    elif side == "replay" and handler_name in last_calls:
                        replay = Replay.of(last_calls[handler_name])  # rewritten outside the timing
                        seconds["replay"], _ = timed(partial(replay.send, stack.raw))
                        dropped[handler_name] += replay.conditions_dropped
                    elif side == "handler":
                        recorder.take()
                        seconds["handler"], result = timed(handler_fn)
                        calls = last_calls[handler_name] = recorder.take()
                if handler_name == "search" and n == 0 and len(result.get("entry", [])) != 20:
                    raise SystemExit(f"the search returned {len(result.get('entry', []))} entries, not 20")
                if n >= warmup:
                    samples[handler_name].append(seconds["handler"])
                    samples[raw_name].append(seconds["raw"])
                    replayed[handler_name].append(seconds["replay"])
                    in_dynamo[handler_name].append(sum(c.seconds for c in calls))
                    outside[handler_name].append(seconds["handler"] - in_dynamo[handler_name][-1])
                    requests[handler_name][len(calls)] += 1
                    shapes[handler_name][request_shape(calls)] += 1
    results: dict[str, dict[str, Any]] = {}
    for handler_name, raw_name in (("create", "put_item"), ("read", "get_item"), ("search", "query")):
        h, r, p = samples[handler_name], samples[raw_name], replayed[handler_name]
        results[handler_name] = {
            "baseline": raw_name,
            "handler_p50_ms": ms(statistics.median(h)),
            "handler_p99_ms": ms(percentile(h, 0.99)),
            "raw_p50_ms": ms(statistics.median(r)),
            "raw_p99_ms": ms(percentile(r, 0.99)),
            "ratio_p50": round(statistics.median(h) / statistics.median(r), 2),
            "ratio_p99": round(percentile(h, 0.99) / percentile(r, 0.99), 2),
            "handler_p50_ms_in_dynamodb_calls": ms(statistics.median(in_dynamo[handler_name])),
            "handler_p50_ms_outside_dynamodb_calls": ms(statistics.median(outside[handler_name])),
            "dynamodb_requests_per_call_mode": requests[handler_name].most_common(1)[0][0],
            "dynamodb_requests_mode": shapes[handler_name].most_common(1)[0][0],
            "replay_p50_ms": ms(statistics.median(p)),
            "replay_p99_ms": ms(percentile(p, 0.99)),
            "ratio_to_replay_p50": round(statistics.median(h) / statistics.median(p), 2),
            "replay_over_raw_p50": round(statistics.median(p) / statistics.median(r), 2),
            "replay_conditions_dropped": dropped[handler_name],
        }
    return {
        "samples_per_operation": profile.samples,
        "search": search_path,
        "target_ratio": TARGET_HANDLER_RATIO,
        "replay": "the third side of each operation, interleaved with the other two (all 6 orders in "
        "turn): the DynamoDB requests the handler sent for its latest call of that operation (seen at "
        "pynamodb's Connection._make_api_call) sent again, one after another, with the raw boto3 client. "
        "Reads go as they were; writes get every partition key prefixed REPLAY#{uuid}# (a fresh "
        "namespace per replay), where the creates' attribute_not_exists conditions hold again; any "
        "other condition would be dropped and counted in replay_conditions_dropped. "
        "ratio_to_replay_p50 = handler / replay (the stack's own overhead over the DynamoDB work it "
        "sends); replay_over_raw_p50 = replay / the single raw call (what that DynamoDB work costs).",
        "results": results,
        "within_target_p50": all(r["ratio_p50"] <= TARGET_HANDLER_RATIO for r in results.values()),
    }


# -- 2. search at two tenant sizes --------------------------------------------------------------------------


def search_at_sizes(
    stack: Stack, small: Loaded, large: Loaded, loinc: str, profile: Profile, recorder: DynamoCalls
) -> dict[str, Any]:
    queries = {
        "code": f"Observation?code={loinc}&_count=20",
        "patient": f"Observation?patient={patient_id(0)}",
    }
    tenants = {"small": small.tenant, "large": large.tenant}
    combos = [(q, s) for q in queries for s in tenants]
    cost: dict[tuple[str, str], dict[str, Any]] = {}
    with recorder.recording():  # one untimed call each: what DynamoDB read to answer it
        for query, size in combos:
            recorder.take()
            bundle = expect(stack.call("GET", tenants[size], queries[query]), 200, f"search {query}")
            calls = recorder.take()
            queried = [c.response for c in calls if c.operation == "Query"]
            got = [c.response for c in calls if c.operation == "BatchGetItem"]
            returned = len(bundle.get("entry", []))
            scanned = sum(int(r.get("ScannedCount", 0)) for r in queried)
            count = sum(int(r.get("Count", 0)) for r in queried)
            cost[(query, size)] = {
                "entries_returned": returned,
                "queries": len(queried),
                "query_scanned_count": scanned,
                "query_count": count,
                "scanned_over_count": round(scanned / count, 2) if count else None,
                "index_items_scanned_per_entry": round(scanned / returned, 2) if returned else None,
                "batch_get_items": sum(len(v) for r in got for v in r.get("Responses", {}).values()),
                "read_units_reported_by_dynamodb_local": round(
                    sum(
                        reported_units(c.response) for c in calls if c.operation in ("Query", "BatchGetItem")
                    ),
                    1,
                ),
                "audit_items_written": sum(
                    len(c.request["TransactItems"]) for c in transaction_on(calls, stack.audit_table)
                ),
            }
    samples: dict[tuple[str, str], list[float]] = {c: [] for c in combos}
    store_reads: dict[tuple[str, str], list[float]] = {c: [] for c in combos}  # Query + BatchGetItem
    rng = random.Random(11)
    with recorder.recording():
        for n in range(10 + profile.search_rounds):
            order = list(combos)
            rng.shuffle(order)
            for query, size in order:
                recorder.take()
                seconds, result = timed(partial(stack.call, "GET", tenants[size], queries[query]))
                calls = recorder.take()
                expect(result, 200, f"search {query}")
                if n >= 10:
                    samples[(query, size)].append(seconds)
                    store_reads[(query, size)].append(
                        sum(c.seconds for c in calls if c.operation in ("Query", "BatchGetItem"))
                    )
    results: dict[str, dict[str, Any]] = {}
    for query, path in queries.items():
        small_p50 = statistics.median(samples[(query, "small")])
        large_p50 = statistics.median(samples[(query, "large")])
        small_reads = statistics.median(store_reads[(query, "small")])
        large_reads = statistics.median(store_reads[(query, "large")])
        results[query] = {
            "query": path,
            "small_p50_ms": ms(small_p50),
            "large_p50_ms": ms(large_p50),
            "ratio_p50": round(large_p50 / small_p50, 2),
            "store_reads_small_p50_ms": ms(small_reads),
            "store_reads_large_p50_ms": ms(large_reads),
            "store_reads_ratio_p50": round(large_reads / small_reads, 2),
            "small": cost[(query, "small")],
            "large": cost[(query, "large")],
        }
    return {
        "small_observations": small.observations,
        "large_observations": large.observations,
        "large_target": profile.large_size,
        "large_stopped_by_load_budget": large.budget_hit,
        "rounds": profile.search_rounds,
        "target_ratio": TARGET_SIZE_RATIO,
        "results": results,
        "within_target": all(r["ratio_p50"] <= TARGET_SIZE_RATIO for r in results.values()),
    }


# -- 3. write units per create ----------------------------------------------------------------------------


def dynamodb_local_transaction_report(stack: Stack) -> dict[str, Any]:
    """What DynamoDB Local reports for a raw TransactWriteItems of three 1.5 KB items."""
    items = [
        {"pk": {"S": f"RAW#TX#{uuid.uuid4()}"}, "sk": {"S": "CUR"}, "b": {"S": "x" * 1500}} for _ in range(3)
    ]
    response = stack.raw.transact_write_items(
        TransactItems=[{"Put": {"TableName": stack.records_table, "Item": item}} for item in items],
        ReturnConsumedCapacity="TOTAL",
    )
    return {
        "items": len(items),
        "item_bytes": item_size(items[0]),
        "wcu_dynamodb_rules": sum(2 * kb_units(item) for item in items),
        "wcu_reported_by_dynamodb_local": reported_units(response),
    }


def write_units(stack: Stack, data: Synthea, profile: Profile, recorder: DynamoCalls) -> dict[str, Any]:
    tenant = stack.tenant("bench-wcu")
    direct = "bench-wcu-store"
    samples = {
        "Observation": [
            observation_for(o, patient_id(0)) for o in data.observations[: profile.creates_per_type]
        ],
        "Patient": [data.patients[n % len(data.patients)] for n in range(profile.creates_per_type)],
    }
    results = {}
    with recorder.recording():
        for resource_type, resources in samples.items():
            rows = []
            for resource in resources:
                recorder.take()
                expect(stack.call("POST", tenant, resource_type, resource), 201, f"create {resource_type}")
                calls = recorder.take()
                records = transaction_on(calls, stack.records_table)
                if len(records) != 1:
                    raise SystemExit(
                        f"a create sent {[c.operation for c in calls]}: not one records transaction"
                    )
                write = stack.service.prepare(direct, resource_type, str(uuid.uuid4()), resource, None)
                estimate = stack.store.commit(direct, [write]).write_units
                recorder.take()
                rows.append(
                    {
                        "items": len(records[0].request["TransactItems"]),
                        "rules": write_units_by_rules(records, stack.records_table),
                        "reported": reported_units(records[0].response),
                        "estimate": estimate,
                        "audit": write_units_by_rules(calls, stack.audit_table),
                        "bytes": len(json.dumps(resource)),
                    }
                )
            results[resource_type] = {
                "creates": len(rows),
                "body_bytes_median": statistics.median(r["bytes"] for r in rows),
                "items_per_create_median": statistics.median(r["items"] for r in rows),
                "wcu_dynamodb_rules_median": statistics.median(r["rules"] for r in rows),
                "wcu_dynamodb_rules_max": max(r["rules"] for r in rows),
                "wcu_reported_by_dynamodb_local_median": statistics.median(r["reported"] for r in rows),
                "wcu_store_commitstats_estimate_median": statistics.median(r["estimate"] for r in rows),
                "wcu_audit_record_median": statistics.median(r["audit"] for r in rows),
            }
    return {
        "how": "the TransactWriteItems each create sends (seen at pynamodb's Connection._make_api_call), "
        "priced by DynamoDB's rules: 2 WCU per started KB of each item in a transaction, item size from "
        "attribute names and values. DynamoDB Local's ConsumedCapacity for TransactWriteItems is not the "
        "sum over the items (see dynamodb_local_check), so the computed figure is the one to use. "
        "CommitStats is the store's own estimate, from a direct store.commit of the same resource. "
        "The audit record each request also writes (audit table) is counted apart.",
        "dynamodb_local_check": dynamodb_local_transaction_report(stack),
        "results": results,
    }


# -- 4. transaction Bundles vs one by one -------------------------------------------------------------------


def one_by_one(stack: Stack, tenant: str, bundle: dict[str, Any]) -> int:
    """Each entry POSTed on its own in Bundle order, its urn:uuid references rewritten to the ids
    the server gave the earlier entries (Synthea's entries only refer backwards)."""
    ids: dict[str, str] = {}
    for entry in bundle["entry"]:
        resource = copy.deepcopy(entry["resource"])
        resource.pop("id", None)
        for holder in _reference_holders(resource):
            if holder["reference"] in ids:
                holder["reference"] = ids[holder["reference"]]
        resource_type = resource["resourceType"]
        created = expect(stack.call("POST", tenant, resource_type, resource), 201, f"create {resource_type}")
        ids[entry["fullUrl"]] = f"{resource_type}/{created['id']}"
    return len(bundle["entry"])


def transaction(stack: Stack, tenant: str, bundle: dict[str, Any]) -> int:
    response = expect(stack.call("POST", tenant, "", bundle), 200, "transaction")
    statuses = Counter(e["response"]["status"] for e in response["entry"])
    if statuses != Counter({"201 Created": len(bundle["entry"])}):
        raise SystemExit(f"transaction answered {dict(statuses)}")
    return len(response["entry"])


def bundles_vs_one_by_one(
    stack: Stack, data: Synthea, profile: Profile, recorder: DynamoCalls
) -> dict[str, Any]:
    tenant = stack.tenant("bench-bundle")
    bundles = data.bundles[: profile.bundles]
    transaction(stack, tenant, bundles[0])  # warm both paths once
    one_by_one(stack, tenant, bundles[0])
    totals = {"transaction": [0, 0.0], "one_by_one": [0, 0.0]}
    runs: dict[str, Callable[[Stack, str, dict[str, Any]], int]] = {
        "transaction": transaction,
        "one_by_one": one_by_one,
    }
    for round_number in range(profile.bundle_rounds):
        for n, bundle in enumerate(bundles):
            order = ["transaction", "one_by_one"]
            if (round_number + n) % 2:
                order.reverse()
            for mode in order:
                seconds, resources = timed(partial(runs[mode], stack, tenant, bundle))
                totals[mode][0] += resources
                totals[mode][1] += seconds
    requests: dict[str, float] = {}
    units: dict[str, dict[str, float]] = {}
    with recorder.recording():  # DynamoDB requests and write units per resource, one bundle each way
        for mode, run in runs.items():
            recorder.take()
            resources = run(stack, tenant, bundles[0])
            calls = recorder.take()
            requests[mode] = round(len(calls) / resources, 2)
            units[mode] = {
                "records": round(write_units_by_rules(calls, stack.records_table) / resources, 1),
                "audit": round(write_units_by_rules(calls, stack.audit_table) / resources, 1),
            }
    rates = {mode: total[0] / total[1] for mode, total in totals.items()}
    return {
        "bundles": [f"{len(b['entry'])} entries" for b in bundles],
        "rounds": profile.bundle_rounds,
        "resources_each_way": totals["transaction"][0],
        "transaction_resources_per_s": round(rates["transaction"], 1),
        "one_by_one_resources_per_s": round(rates["one_by_one"], 1),
        "ratio": round(rates["transaction"] / rates["one_by_one"], 2),
        "dynamodb_requests_per_resource": requests,
        "wcu_per_resource_dynamodb_rules": units,
        "target_ratio_above": TARGET_BUNDLE_RATIO,
        "within_target": rates["transaction"] / rates["one_by_one"] > TARGET_BUNDLE_RATIO,
    }


# -- main ---------------------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    one = report["handler_vs_raw"]
    print(f"\n1. handler vs raw DynamoDB ({one['samples_per_operation']} interleaved pairs each)")
    print(
        f"{'operation':<10}{'p50 ms':>9}{'p99 ms':>9}{'raw':>10}{'raw p50':>9}{'raw p99':>9}"
        f"{'x p50':>8}{'x p99':>8}{'in DDB':>8}{'outside':>9}"
    )
    for name, r in one["results"].items():
        print(
            f"{name:<10}{r['handler_p50_ms']:>9}{r['handler_p99_ms']:>9}{r['baseline']:>10}{r['raw_p50_ms']:>9}"
            f"{r['raw_p99_ms']:>9}{r['ratio_p50']:>8}{r['ratio_p99']:>8}"
            f"{r['handler_p50_ms_in_dynamodb_calls']:>8}{r['handler_p50_ms_outside_dynamodb_calls']:>9}"
        )
    print("   the handler's DynamoDB requests replayed with the raw client, interleaved with both")
    print(
        f"{'operation':<10}{'replay p50':>11}{'replay p99':>11}{'handler/replay':>15}{'replay/raw':>11}"
        f"{'dropped':>8}  requests (mode)"
    )
    for name, r in one["results"].items():
        print(
            f"{name:<10}{r['replay_p50_ms']:>11}{r['replay_p99_ms']:>11}{r['ratio_to_replay_p50']:>15}"
            f"{r['replay_over_raw_p50']:>11}{r['replay_conditions_dropped']:>8}"
            f"  {r['dynamodb_requests_mode']}"
        )
    two = report["search_at_sizes"]
    print(
        f"\n2. search p50 at {two['small_observations']:,} vs {two['large_observations']:,} Observations"
        + (" (load budget hit)" if two["large_stopped_by_load_budget"] else "")
    )
    print(
        f"{'query':<38}{'small':>7}{'large':>7}{'ratio':>7}{'reads x':>9}{'scanned/entry':>15}"
        f"{'Scanned/Count':>15}{'audit items':>13}"
    )
    for r in two["results"].values():
        audit = f"{r['small']['audit_items_written']}/{r['large']['audit_items_written']}"
        print(
            f"{r['query']:<38}{r['small_p50_ms']:>7}{r['large_p50_ms']:>7}{r['ratio_p50']:>7}"
            f"{r['store_reads_ratio_p50']:>9}{r['large']['index_items_scanned_per_entry']!s:>15}"
            f"{r['large']['scanned_over_count']!s:>15}{audit:>13}"
        )
    check = report["write_units"]["dynamodb_local_check"]
    print(
        "\n3. write units per create (median); DynamoDB Local reports "
        f"{check['wcu_reported_by_dynamodb_local']} WCU for a transaction that costs "
        f"{check['wcu_dynamodb_rules']} by DynamoDB's rules"
    )
    print(
        f"{'type':<13}{'items':>7}{'WCU rules':>11}{'WCU max':>9}{'DDB Local':>11}{'CommitStats':>13}"
        f"{'audit WCU':>11}"
    )
    for name, r in report["write_units"]["results"].items():
        print(
            f"{name:<13}{r['items_per_create_median']:>7}{r['wcu_dynamodb_rules_median']:>11}"
            f"{r['wcu_dynamodb_rules_max']:>9}{r['wcu_reported_by_dynamodb_local_median']:>11}"
            f"{r['wcu_store_commitstats_estimate_median']:>13}{r['wcu_audit_record_median']:>11}"
        )
    four = report["bundles"]
    print(
        f"\n4. transaction Bundle {four['transaction_resources_per_s']} resources/s vs one by one "
        f"{four['one_by_one_resources_per_s']} resources/s: ratio {four['ratio']} "
        f"({four['resources_each_way']} resources each way)"
    )
    print(
        f"   DynamoDB requests per resource {four['dynamodb_requests_per_resource']}, "
        f"WCU per resource {four['wcu_per_resource_dynamodb_rules']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="reduced sizes, about two minutes")
    parser.add_argument("--large", type=int, help="Observations in the large tenant (default 100000)")
    parser.add_argument(
        "--load-budget",
        type=float,
        default=600.0,
        help="seconds allowed for loading the large tenant; 0 = no limit (default 600)",
    )
    parser.add_argument(
        "--streams",
        action="store_true",
        help="create the tables with their DynamoDB Streams (off by default: DynamoDB Local's stream "
        "emulation makes writes to the audit table take 0.2-1 s once the records table's stream is large)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "bench" / "results" / "fhir_store.json")
    args = parser.parse_args()
    profile = SMALL if args.small else FULL
    if args.large:
        profile = Profile(**{**profile.__dict__, "large_size": args.large})
    command = ".venv/bin/python tests/bench/bench_fhir_store.py" + (" --small" if args.small else "")
    if args.large:
        command += f" --large {args.large}"
    if args.streams:
        command += " --streams"
    if args.load_budget != 600.0:
        command += f" --load-budget {args.load_budget:g}"

    started = time.perf_counter()
    data = Synthea.load()
    loinc = Counter(o["code"]["coding"][0]["code"] for o in data.observations).most_common(1)[0][0]
    recorder = DynamoCalls()
    with tempfile.TemporaryDirectory() as home, DynamoDBLocal() as ddb:
        stack = Stack(ddb, Path(home), keep_streams=args.streams)
        print(
            f"DynamoDB Local up; loading {profile.small_size:,} and up to {profile.large_size:,} "
            "Observations",
            flush=True,
        )
        small = load_observations(
            stack, stack.tenant("bench-small"), data.observations, profile.small_size, budget=None
        )
        large = load_observations(
            stack,
            stack.tenant("bench-large"),
            data.observations,
            profile.large_size,
            budget=args.load_budget or None,
        )
        if large.budget_hit:
            print(
                f"  load budget of {args.load_budget:g} s reached: the large tenant holds "
                f"{large.observations:,} Observations, not {profile.large_size:,}",
                flush=True,
            )
        print("1. handler vs raw", flush=True)
        one = handler_vs_raw(stack, data, small.tenant, loinc, profile, recorder)
        print("2. search at two sizes", flush=True)
        two = search_at_sizes(stack, small, large, loinc, profile, recorder)
        print("3. write units", flush=True)
        three = write_units(stack, data, profile, recorder)
        print("4. transaction Bundles", flush=True)
        four = bundles_vs_one_by_one(stack, data, profile, recorder)

    report = {
        "benchmark": "FHIR store and API on DynamoDB Local: handler vs raw DynamoDB, search at two sizes, "
        "write units per create, transaction Bundles vs one by one",
        "command": command,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.system()},
        "engine": f"DynamoDB Local ({jar_path().parent.name}, in memory)",
        "tables": "schema.TABLES key schemas" + (" with their streams" if args.streams else ", streams off"),
        "profile": "small" if args.small else "full",
        "run_seconds": round(time.perf_counter() - started),
        "loading": {
            loaded.tenant: {
                "observations": loaded.observations,
                "patients": loaded.patients,
                "seconds": loaded.seconds,
                "observations_per_s": round(loaded.observations / max(loaded.seconds, 0.001)),
                "largest_index_partitions": loaded.largest_partitions,
            }
            for loaded in (small, large)
        },
        "handler_vs_raw": one,
        "search_at_sizes": two,
        "write_units": three,
        "bundles": four,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    try:
        shown = args.out.resolve().relative_to(REPO)
    except ValueError:
        shown = args.out
    print(f"\nran {report['run_seconds']} s; wrote {shown}")


if __name__ == "__main__":
    main()
