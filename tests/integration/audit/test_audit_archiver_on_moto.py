"""The real audit_archiver handler, invoked as the stream's event source mapping invokes it, writing
to the Object Lock bucket that local mode creates in moto (``infra.local.cloud``).

The emulated cloud is this module's own (a prefix of its own, stopped at the end), so no moto mock
outlives the module and captures the DynamoDB Local tests that follow.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from ehr import names
from ehr.audit_archive import ARCHIVE_LOCK_MODE, ARCHIVE_RETENTION_DAYS, archive_key
from ehr.fhir.validation import validate_resource
from ehr.settings import AuditArchiverSettings, environment_for
from ehr.store.audit_dynamo import DynamoAuditSink
from ehr.store.schema import AUDIT_TABLE
from infra.local.audit_stream import StreamPoller
from infra.local.cloud import LocalCloud, LocalResources
from infra.local.gateway import FUNCTIONS_DIR, LambdaContext
from tests.conftest import load_event
from tests.unit.audit.audit_builders import audit_record, item_image, stream_change

STREAM_EVENT = "dynamodb_stream_audit.json"


class Archive:
    """The module's emulated cloud and the archiver handler loaded against it."""

    def __init__(self, resources: LocalResources, handler: Callable[..., Any]) -> None:
        self.resources = resources
        self._handler = handler

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._handler(event, LambdaContext(function_name=names.FN_AUDIT_ARCHIVER))


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    with LocalCloud(prefix="ehr-audit-test") as resources, pytest.MonkeyPatch.context() as patch:
        environment = {
            **environment_for(
                AuditArchiverSettings, environment="test", archive_bucket=resources.archive_bucket
            ),
            "POWERTOOLS_SERVICE_NAME": names.SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": names.METRICS_NAMESPACE,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }
        for key, value in environment.items():
            patch.setenv(key, value)
        # The handler file as Lambda loads it, under a name of its own (its settings are this cloud's).
        path = FUNCTIONS_DIR / names.FN_AUDIT_ARCHIVER / "handler.py"
        spec = importlib.util.spec_from_file_location("audit_archiver_handler_under_test", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield Archive(resources, getattr(module, names.HANDLER_ATTRIBUTE))


@pytest.fixture
def s3(archive):
    return boto3.client("s3", region_name=archive.resources.region)


def stored(s3, archive, key: str) -> tuple[dict, dict]:
    head = s3.head_object(Bucket=archive.resources.archive_bucket, Key=key)
    body = s3.get_object(Bucket=archive.resources.archive_bucket, Key=key)["Body"].read()
    return json.loads(body), head


def test_a_stream_batch_becomes_audit_events_in_the_locked_bucket(archive, s3) -> None:
    # Given a real-shaped stream event: two day items and three per-patient copies
    event = load_event(STREAM_EVENT)

    # When the archiver handler takes it
    response = archive.invoke(event)

    # Then nothing failed, and each day item is an AuditEvent under {tenant}/{yyyy}/{mm}/{dd}/
    assert response == {"batchItemFailures": []}
    listed = s3.list_objects_v2(Bucket=archive.resources.archive_bucket, Prefix="clinic-a/2024/05/01/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    expected = {
        "clinic-a/2024/05/01/2024-05-01T09:30:00.123456Z-5b0c3f0e-8f1a-4c55-9d3e-0a1b2c3d4e01.json",
        "clinic-a/2024/05/01/2024-05-01T09:31:12.000001Z-5b0c3f0e-8f1a-4c55-9d3e-0a1b2c3d4e02.json",
    }
    assert expected <= keys
    for key in expected:
        audit_event, head = stored(s3, archive, key)
        AuditEvent.model_validate(audit_event)
        validate_resource(audit_event)
        assert audit_event["id"] == key.rsplit("Z-", 1)[1].removesuffix(".json")
        assert head["ContentType"] == "application/fhir+json"
        # and it is locked in COMPLIANCE mode for six years
        assert head["ObjectLockMode"] == ARCHIVE_LOCK_MODE
        retained = head["ObjectLockRetainUntilDate"] - datetime.now(UTC)
        assert abs(retained - timedelta(days=ARCHIVE_RETENTION_DAYS)) < timedelta(days=1)


def test_a_search_record_keeps_its_patients_and_query_in_the_archive(archive, s3) -> None:
    archive.invoke(load_event(STREAM_EVENT))

    audit_event, _ = stored(
        s3,
        archive,
        "clinic-a/2024/05/01/2024-05-01T09:31:12.000001Z-5b0c3f0e-8f1a-4c55-9d3e-0a1b2c3d4e02.json",
    )

    patients = [e["what"]["reference"] for e in audit_event["entity"] if e.get("role", {}).get("code") == "1"]
    assert patients == ["Patient/pat-1", "Patient/pat-2"]
    assert any("query" in e for e in audit_event["entity"])


def test_a_partial_failure_reports_only_the_failed_change(archive, s3) -> None:
    # Given a batch whose middle change is not a readable audit item
    good = [audit_record(id=f"partial-{n}", recorded=f"2024-06-0{n + 1}T12:00:00Z") for n in range(2)]
    poison = item_image(audit_record(id="partial-poison"))
    poison["r"] = {"B": "bm90IGFuIGF1ZGl0IGl0ZW0="}
    event = {
        "Records": [
            stream_change(good[0], sequence="9000000000000000000001"),
            stream_change(image=poison, sequence="9000000000000000000002"),
            stream_change(good[1], sequence="9000000000000000000003"),
        ]
    }

    # When the handler takes it
    response = archive.invoke(event)

    # Then only the poison change's sequence number is reported (Lambda retries just that part),
    # and the good changes are archived
    assert response == {"batchItemFailures": [{"itemIdentifier": "9000000000000000000002"}]}
    for record in good:
        audit_event, _ = stored(s3, archive, archive_key(record))
        assert audit_event["id"] == record.id


def test_locally_the_table_stream_feeds_the_archiver(archive, s3) -> None:
    # Given a record appended to local mode's audit table, whose stream local mode polls
    record = audit_record(id="local-stream-1", recorded="2024-07-04T08:00:00Z", patients=("pat-1", "pat-2"))
    DynamoAuditSink(archive.resources.audit_table).record(record)
    poller = StreamPoller(archive.resources.audit_table, archive.invoke, region=archive.resources.region)

    # When the poller runs (as the event source mapping would)
    poller.poll()

    # Then the record's AuditEvent is in the archive bucket, once
    audit_event, _ = stored(s3, archive, archive_key(record))
    assert audit_event["id"] == record.id
    versions = s3.list_object_versions(Bucket=archive.resources.archive_bucket, Prefix=archive_key(record))
    assert len(versions["Versions"]) == 1


def test_the_local_poller_retries_from_the_first_failed_change(archive) -> None:
    # Given a fresh audit table in local mode's moto, and a consumer that fails one change once
    table = "audit-poller-retry"
    boto3.client("dynamodb", region_name=archive.resources.region).create_table(
        **AUDIT_TABLE.create_table_kwargs(table)
    )
    seen: list[list[str]] = []
    failed_once: set[str] = set()

    def consumer(event: dict) -> dict:
        ids = [r["dynamodb"]["NewImage"]["rid"]["S"] for r in event["Records"]]
        seen.append(ids)
        for change in event["Records"]:
            if change["dynamodb"]["NewImage"]["rid"]["S"] == "retry-1" and "retry-1" not in failed_once:
                failed_once.add("retry-1")
                return {"batchItemFailures": [{"itemIdentifier": change["dynamodb"]["SequenceNumber"]}]}
        return {"batchItemFailures": []}

    poller = StreamPoller(table, consumer, region=archive.resources.region)
    sink = DynamoAuditSink(table)
    for n in range(3):
        sink.record(audit_record(id=f"retry-{n}", recorded=f"2024-08-01T10:00:0{n}Z", patients=()))

    # When it polls twice
    poller.poll()
    poller.poll()

    # Then the second delivery starts at the failed change, as Lambda's partial batch response does
    assert seen == [["retry-0", "retry-1", "retry-2"], ["retry-1", "retry-2"]]
    assert poller.poll() == 0  # and nothing is delivered again
