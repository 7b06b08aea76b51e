"""AuditArchiver with the in-memory archive: which stream changes become which objects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from fhir.resources.R4B.auditevent import AuditEvent

from ehr.audit_archive import (
    ARCHIVED_METRIC,
    MODIFIED_METRIC,
    REMOVED_METRIC,
    ArchiveUnavailableError,
    AuditArchiver,
    AuditChangeError,
    InMemoryArchiveStore,
    archive_key,
)
from ehr.security.audit_fhir import to_audit_event
from tests.unit.audit.audit_builders import audit_record, item_image, stream_change

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def archive() -> InMemoryArchiveStore:
    return InMemoryArchiveStore()


@pytest.fixture
def metrics() -> list[str]:
    return []


@pytest.fixture
def archiver(archive, metrics) -> AuditArchiver:
    return AuditArchiver(archive, observe=metrics.append)


def test_a_new_day_item_becomes_its_audit_event_under_tenant_and_date(archiver, archive, metrics) -> None:
    # Given the stream change of a new day item
    record = audit_record(id="rec-1", recorded="2024-05-01T09:30:00.5+02:00")

    # When it is archived
    key = archiver.archive(stream_change(record, sequence="100"))

    # Then one object holds the record's AuditEvent, keyed by tenant, UTC date and instant
    assert key == "clinic-a/2024/05/01/2024-05-01T07:30:00.500000Z-rec-1.json"
    (body,) = archive.versions[key]
    assert json.loads(body) == to_audit_event(record)
    AuditEvent.model_validate(json.loads(body))
    assert metrics == [ARCHIVED_METRIC]


def test_the_key_is_the_documented_layout() -> None:
    record = audit_record(id="abc", tenant="clinic-b", recorded="2023-12-31T23:59:59Z")
    assert archive_key(record) == "clinic-b/2023/12/31/2023-12-31T23:59:59.000000Z-abc.json"


def test_patient_copies_are_not_archived(archiver, archive) -> None:
    # Given the change of a per-patient copy of a record
    change = stream_change(audit_record(), sequence="101", patient="pat-1")

    # When it is archived, Then nothing is written: the day item carries the same record
    assert archiver.archive(change) is None
    assert archive.versions == {}


def test_a_retried_change_writes_the_same_bytes_again(archiver, archive) -> None:
    # Given a change archived once, When the batch is retried
    change = stream_change(audit_record(), sequence="102")
    key = archiver.archive(change)
    archiver.archive(change)

    # Then the key holds two identical versions (Object Lock keeps both; nothing is lost)
    first, second = archive.versions[key]
    assert first == second


def test_a_modified_day_item_is_reported_and_archived_as_a_new_version(archiver, archive, metrics) -> None:
    # Given an audit item that someone rewrote after it was written
    original = audit_record()
    rewritten = audit_record(outcome="0", status=200, entities=())
    archiver.archive(stream_change(original, sequence="103"))

    # When the MODIFY change arrives
    key = archiver.archive(stream_change(rewritten, sequence="104", event_name="MODIFY"))

    # Then it is counted as tampering, and the original version stays beside the new one
    assert MODIFIED_METRIC in metrics
    versions = archive.versions[key]
    assert [json.loads(v) for v in versions] == [to_audit_event(original), to_audit_event(rewritten)]


def test_a_removed_item_is_reported_and_nothing_is_written(archiver, archive, metrics) -> None:
    change = stream_change(audit_record(), sequence="105", event_name="REMOVE")

    assert archiver.archive(change) is None
    assert metrics == [REMOVED_METRIC]
    assert archive.versions == {}


def test_an_image_that_is_not_an_audit_item_is_refused(archiver) -> None:
    image = item_image(audit_record())
    image["r"] = {"B": "bm90IHpsaWI="}  # "not zlib"

    with pytest.raises(AuditChangeError) as raised:
        archiver.archive(stream_change(image=image, sequence="106"))
    assert raised.value.sequence_number == "106"


def test_an_archive_failure_propagates_so_the_change_is_retried(archiver, archive) -> None:
    record = audit_record()
    archive.fail.add(archive_key(record))

    with pytest.raises(ArchiveUnavailableError):
        archiver.archive(stream_change(record, sequence="107"))


def test_in_a_batch_only_the_changes_that_failed_are_reported(archiver, archive) -> None:
    # Given a batch of three day items, the archive refusing the second one's key
    records = [audit_record(id=f"rec-{n}", recorded=f"2024-05-01T10:00:0{n}Z") for n in range(3)]
    archive.fail.add(archive_key(records[1]))
    event = {"Records": [stream_change(r, sequence=str(200 + n)) for n, r in enumerate(records)]}

    # When Powertools' batch processor runs the archiver over it
    response = process_partial_response(
        event=event,
        record_handler=lambda record: archiver.archive(record.raw_event),
        processor=BatchProcessor(event_type=EventType.DynamoDBStreams),
    )

    # Then only the failed change's sequence number comes back, and the others are archived
    assert response == {"batchItemFailures": [{"itemIdentifier": "201"}]}
    assert set(archive.versions) == {archive_key(records[0]), archive_key(records[2])}


def test_the_adapters_never_update_or_delete_audit_items() -> None:
    # The trail is append-only by construction: no code path of the adapter or the archiver can
    # issue an UpdateItem, DeleteItem or a BatchWriteItem (which can delete).
    for path in ("layers/ehr/ehr/store/audit_dynamo.py", "layers/ehr/ehr/audit_archive.py"):
        source = (REPO_ROOT / path).read_text()
        for forbidden in (".update(", ".delete(", "batch_write", "UpdateItem", "DeleteItem", "delete_object"):
            assert forbidden not in source, (path, forbidden)


def test_an_image_of_no_known_kind_is_refused_not_skipped(archiver, archive) -> None:
    # Given an image without the item kind (not written by the audit adapter)
    image = item_image(audit_record())
    del image["kind"]

    # Then it is a failed change (retried, then queued), never silently dropped
    with pytest.raises(AuditChangeError):
        archiver.archive(stream_change(image=image, sequence="108"))
    assert archive.versions == {}
