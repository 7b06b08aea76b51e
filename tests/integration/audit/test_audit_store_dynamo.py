"""DynamoAuditSink on moto and DynamoDB Local: append-only writes, queries newest first, paging,
tenant isolation, and failures that surface as AuditUnavailableError."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest

from ehr.security.audit import AuditQueryError, AuditRecordExistsError, AuditUnavailableError
from ehr.store.audit_dynamo import MAX_TENANT_WINDOW_DAYS, DynamoAuditSink
from tests.unit.audit.audit_builders import audit_record


def everything(sink, tenant, *, patient=None, since=None, until=None, limit=100):
    """Every page of a query, concatenated; also the page sizes seen."""
    found, sizes, cursor = [], [], None
    while True:
        page = sink.query(tenant, patient=patient, since=since, until=until, limit=limit, cursor=cursor)
        found.extend(page.items)
        sizes.append(len(page.items))
        cursor = page.cursor
        if cursor is None:
            return found, sizes


def instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_record_round_trips_by_patient_and_by_day(sink) -> None:
    # Given a record written to the trail
    record = audit_record()
    sink.record(record)

    # When it is read back by patient and tenant-wide for its day
    by_patient = sink.query("clinic-a", patient="pat-1", since=None, until=None, limit=10, cursor=None)
    by_day = sink.query(
        "clinic-a", patient=None, since="2024-05-01", until="2024-05-01", limit=10, cursor=None
    )

    # Then both give back exactly the record that was written
    assert by_patient.items == (record,)
    assert by_day.items == (record,)
    assert by_patient.cursor is None and by_day.cursor is None


def test_a_second_write_of_the_same_id_is_refused_and_the_first_kept(sink) -> None:
    # Given a record in the trail
    original = audit_record(outcome="0", status=200)
    sink.record(original)

    # When a record with the same id (and time) is written again, with other content
    forged = audit_record(outcome="4", status=403, entities=())
    with pytest.raises(AuditRecordExistsError) as raised:
        sink.record(forged)

    # Then the write is refused as an audit failure, and the trail still holds the original
    assert isinstance(raised.value, AuditUnavailableError)
    assert raised.value.record_id == original.id
    page = sink.query("clinic-a", patient="pat-1", since=None, until=None, limit=10, cursor=None)
    assert page.items == (original,)


def test_a_patients_trail_in_a_window_comes_newest_first_in_pages(sink) -> None:
    # Given ten records about pat-1 over ten days, and others about pat-2
    start = datetime(2024, 3, 1, 8, tzinfo=UTC)
    mine = [
        audit_record(id=f"rec-{n:02d}", recorded=instant(start + timedelta(days=n, minutes=n)))
        for n in range(10)
    ]
    for record in mine:
        sink.record(record)
    sink.record(audit_record(id="rec-other", patients=("pat-2",), recorded=instant(start)))

    # When pat-1's trail between the 3rd and the 8th is read three at a time
    found, sizes = everything(
        sink, "clinic-a", patient="pat-1", since="2024-03-03", until="2024-03-08", limit=3
    )

    # Then the six records of that window come back newest first, each once, over pages of three
    assert [r.id for r in found] == ["rec-07", "rec-06", "rec-05", "rec-04", "rec-03", "rec-02"]
    assert sizes[:2] == [3, 3] and sum(sizes) == 6


def test_a_tenant_wide_listing_walks_the_days_newest_first(sink) -> None:
    # Given records on three days, two or three per day, in random write order
    times = [
        "2024-05-03T10:00:00Z", "2024-05-01T09:00:00Z", "2024-05-03T08:00:00Z", "2024-05-02T23:59:59.999999Z",
        "2024-05-01T00:00:00Z", "2024-05-03T08:00:00.5Z", "2024-05-02T00:00:00Z",
    ]  # fmt: skip
    records = [audit_record(id=f"rec-{n}", recorded=t) for n, t in enumerate(times)]
    for record in records:
        sink.record(record)

    # When the tenant's trail of May 1-31 is read two at a time
    found, _ = everything(sink, "clinic-a", since="2024-05-01", until="2024-05-31", limit=2)

    # Then every record comes back once, newest first, across the day partitions
    expected = sorted(records, key=lambda r: datetime.fromisoformat(r.recorded), reverse=True)
    assert [r.id for r in found] == [r.id for r in expected]


def test_a_tenant_wide_window_is_at_most_31_days(sink) -> None:
    # Given a record, When the tenant-wide trail is asked for a 32-day window
    sink.record(audit_record())
    with pytest.raises(AuditQueryError):
        sink.query("clinic-a", patient=None, since="2024-04-01", until="2024-05-02", limit=10, cursor=None)

    # Then a 31-day window is fine, and a patient's trail has no such limit
    within = sink.query(
        "clinic-a", patient=None, since="2024-04-01", until="2024-05-01", limit=10, cursor=None
    )
    assert len(within.items) == 1
    year = sink.query("clinic-a", patient="pat-1", since="2023", until="2024", limit=10, cursor=None)
    assert len(year.items) == 1


def test_without_dates_a_tenant_listing_covers_the_last_31_days(sink) -> None:
    # Given a record written now and one recorded 40 days ago
    now = datetime.now(UTC)
    recent = audit_record(id="rec-recent", recorded=instant(now - timedelta(seconds=1)))
    old = audit_record(id="rec-old", recorded=instant(now - timedelta(days=MAX_TENANT_WINDOW_DAYS + 9)))
    sink.record(recent)
    sink.record(old)

    # When the trail is listed without dates, Then only the recent one is in the window
    page = sink.query("clinic-a", patient=None, since=None, until=None, limit=10, cursor=None)
    assert page.items == (recent,)
    # and the patient's trail, unbounded, has both
    assert (
        len(sink.query("clinic-a", patient="pat-1", since=None, until=None, limit=10, cursor=None).items) == 2
    )


def test_tenants_never_see_each_others_trail(sink) -> None:
    # Given the same patient id and day in two tenants
    sink.record(audit_record(id="rec-a1", tenant="clinic-a"))
    sink.record(audit_record(id="rec-a2", tenant="clinic-a", recorded="2024-05-01T11:00:00Z"))
    sink.record(audit_record(id="rec-b1", tenant="clinic-b"))

    # When clinic-b reads pat-1's trail and its day
    by_patient = sink.query("clinic-b", patient="pat-1", since=None, until=None, limit=10, cursor=None)
    by_day = sink.query(
        "clinic-b", patient=None, since="2024-05-01", until="2024-05-01", limit=10, cursor=None
    )

    # Then it sees its own record only
    assert [r.id for r in by_patient.items] == ["rec-b1"]
    assert [r.id for r in by_day.items] == ["rec-b1"]


def test_a_cursor_of_another_tenant_is_refused(sink) -> None:
    # Given a cursor from clinic-a's trail
    for n in range(3):
        sink.record(audit_record(id=f"rec-{n}", recorded=f"2024-05-01T1{n}:00:00Z"))
    page = sink.query("clinic-a", patient="pat-1", since=None, until=None, limit=1, cursor=None)
    assert page.cursor is not None

    # When clinic-b presents it, Then the query is refused rather than reading clinic-a's partition
    with pytest.raises(AuditQueryError):
        sink.query("clinic-b", patient="pat-1", since=None, until=None, limit=1, cursor=page.cursor)


def test_a_record_about_many_patients_reaches_every_patients_trail(sink) -> None:
    # Given a search that touched 150 patients (more than one transaction holds)
    patients = tuple(f"pat-{n:03d}" for n in range(150))
    record = audit_record(id="rec-wide", subtype="search-type", patients=patients, entities=())

    # When it is recorded
    sink.record(record)

    # Then each patient's trail has it, and the day has it once
    for patient in (patients[0], patients[99], patients[149]):
        page = sink.query("clinic-a", patient=patient, since=None, until=None, limit=5, cursor=None)
        assert page.items == (record,)
    day = sink.query("clinic-a", patient=None, since="2024-05-01", until="2024-05-01", limit=5, cursor=None)
    assert day.items == (record,)


def test_a_missing_table_surfaces_as_audit_unavailable(endpoint) -> None:
    # Given a sink on a table that does not exist
    sink = DynamoAuditSink("no-such-audit-table", host=endpoint)

    # When a record is written or the trail read, Then the caller gets AuditUnavailableError,
    # with DynamoDB's error as its cause
    with pytest.raises(AuditUnavailableError) as written:
        sink.record(audit_record())
    assert written.value.__cause__ is not None
    with pytest.raises(AuditUnavailableError) as read:
        sink.query("clinic-a", patient="pat-1", since=None, until=None, limit=5, cursor=None)
    assert read.value.__cause__ is not None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_dynamodb_surfaces_as_audit_unavailable(aws_credentials) -> None:
    # Given DynamoDB that cannot be reached at all (nothing listens on the port)
    sink = DynamoAuditSink("audit", host=f"http://127.0.0.1:{_closed_port()}")

    # When a record is written, Then AuditUnavailableError says so (the request fails closed)
    with pytest.raises(AuditUnavailableError) as raised:
        sink.record(audit_record())
    assert raised.value.__cause__ is not None
