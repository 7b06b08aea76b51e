"""A transaction Bundle too large for one DynamoDB transaction commits in stages; a process
killed half-way leaves nothing visible, and the same Bundle can be posted again afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import boto3
import pytest

from ehr.fhir.bundles import BundleProcessor
from ehr.fhir.cursors import CursorCodec
from ehr.fhir.searching import SearchEngine
from ehr.fhir.service import FhirService
from ehr.store.dynamo import DynamoRecordStore
from ehr.store.schema import RECORDS_TABLE

REPO = Path(__file__).resolve().parents[3]
SYNTHEA = REPO.parent / "shared" / "data" / "synthea"
BUNDLE = SYNTHEA / "synthea__Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
T = "clinic-a"

# The child posts the Bundle through the real service and store; only its batch writes are
# slowed down (a pause between chunks), so that the parent can kill it while items land.
CHILD = textwrap.dedent(
    """
    import json, sys, time
    from ehr.fhir.bundles import BundleProcessor
    from ehr.fhir.cursors import CursorCodec
    from ehr.fhir.searching import SearchEngine
    from ehr.fhir.service import FhirService
    from ehr.store.dynamo import DynamoRecordStore

    class SlowStore(DynamoRecordStore):
        def _batch_put(self, items):
            done = 0
            for start in range(0, len(items), 25):
                done += super()._batch_put(items[start:start + 25])
                time.sleep(0.05)
            return done

    table, endpoint, path = sys.argv[1:4]
    store = SlowStore(table, host=endpoint)
    fhir = FhirService(store)
    processor = BundleProcessor(fhir, SearchEngine(store, CursorCodec(b"k" * 32)))
    print("posting", flush=True)
    processor.process("clinic-a", json.load(open(path)), base="http://local/fhir")
    print("committed", flush=True)
    """
)


def services(
    table: str, endpoint: str
) -> tuple[DynamoRecordStore, FhirService, SearchEngine, BundleProcessor]:
    store = DynamoRecordStore(table, host=endpoint)
    fhir = FhirService(store)
    search = SearchEngine(store, CursorCodec(b"k" * 32))
    return store, fhir, search, BundleProcessor(fhir, search)


def visible(search: SearchEngine, resource_type: str) -> int:
    page = search.search(T, resource_type, {"_summary": ["count"]}, base="http://local/fhir", strict=True)
    return int(page.bundle["total"])


@pytest.fixture
def table(dynamodb_local, monkeypatch) -> str:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    name = f"records-{uuid.uuid4().hex[:8]}"
    boto3.client("dynamodb", endpoint_url=dynamodb_local.endpoint).create_table(
        **RECORDS_TABLE.create_table_kwargs(name)
    )
    return name


def staged_items(endpoint: str, table: str) -> int:
    # Test-only inspection of the raw table (the product never scans).
    client = boto3.client("dynamodb", endpoint_url=endpoint)
    pages = client.get_paginator("scan").paginate(
        TableName=table, FilterExpression="attribute_exists(tx)", Select="COUNT"
    )
    return sum(page["Count"] for page in pages)


def test_a_bundle_killed_mid_commit_leaves_nothing_visible_and_can_be_posted_again(dynamodb_local, table):
    bundle = json.loads(BUNDLE.read_text())
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "layers" / "ehr"), str(REPO)])}
    # Given a process posting a Synthea transaction Bundle (thousands of items: a staged commit)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, table, dynamodb_local.endpoint, str(BUNDLE)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # When it is killed (SIGKILL: no clean-up code runs) once a few hundred items have landed
    deadline = time.monotonic() + 120
    landed = 0
    while time.monotonic() < deadline and child.poll() is None:
        landed = staged_items(dynamodb_local.endpoint, table)
        if landed >= 300:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the child was not killed mid-commit: {child.stderr.read()}"
    assert landed >= 300  # items of the half-done commit are physically in the table…

    # Then no resource of the Bundle is visible: not by search, not by read
    _, _, search, _ = services(table, dynamodb_local.endpoint)
    for resource_type in types:
        assert visible(search, resource_type) == 0, resource_type

    # …also after its deadline has passed and a reader has declared it aborted
    client = boto3.client("dynamodb", endpoint_url=dynamodb_local.endpoint)
    records = client.scan(
        TableName=table, FilterExpression="sk = :tx", ExpressionAttributeValues={":tx": {"S": "TX"}}
    )["Items"]
    assert [r["status"]["S"] for r in records] == ["pending"]
    client.update_item(
        TableName=table,
        Key={"pk": records[0]["pk"], "sk": records[0]["sk"]},
        UpdateExpression="SET deadline = :past",
        ExpressionAttributeValues={":past": {"N": "1"}},
    )
    _, _, search, processor = services(table, dynamodb_local.endpoint)
    for resource_type in types:
        assert visible(search, resource_type) == 0, resource_type
    record = client.get_item(TableName=table, Key={"pk": records[0]["pk"], "sk": records[0]["sk"]})["Item"]
    assert record["status"]["S"] == "aborted"

    # And posting the same Bundle again commits it whole, once
    response = processor.process(T, bundle, base="http://local/fhir")
    assert all(e["response"]["status"] == "201 Created" for e in response["entry"])
    counts = {t: sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == t) for t in types}
    for resource_type, expected in counts.items():
        assert visible(search, resource_type) == expected, resource_type
