"""The ``PatientIndex`` contract on the in-memory fake, on moto and on DynamoDB Local (AWS's own
engine), and the MPI's behaviour end to end on each. Tables are created from ``MPI_TABLE``."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace

import boto3
import pytest
from moto import mock_aws

from ehr.sharing.mpi import (
    IndexEntry,
    InMemoryPatientIndex,
    MasterPatientIndex,
    MpiUnavailableError,
    PatientIndex,
    PatientKey,
)
from ehr.sharing.mpi_features import MAX_BLOCKS, Features
from ehr.store.mpi_dynamo import DynamoPatientIndex
from ehr.store.schema import MPI_TABLE
from infra.local.cloud import MOTO_CONFIG
from infra.local.dynamodb_local import DynamoDBLocal
from tests.unit.sharing.mpi_population import patient

BACKENDS = ("memory", "moto", "dynamodb-local")
KEY = b"integration-mpi-key-0123456789abcdef"
SSN = "http://hl7.org/fhir/sid/us-ssn"
A, B = "clinic-a", "clinic-b"


@pytest.fixture(scope="module")
def mpi_dynamodb_local() -> Iterator[DynamoDBLocal]:
    with DynamoDBLocal() as server:
        yield server


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def _dynamo_index(host: str | None) -> DynamoPatientIndex:
    """An index on a fresh table, created through the index's own client (DynamoDB Local keeps
    tables per access key, and an active moto mock may hand pynamodb other credentials)."""
    index = DynamoPatientIndex(f"mpi-{uuid.uuid4().hex[:8]}", host=host)
    client = index.model._get_connection().connection.client
    client.create_table(**MPI_TABLE.create_table_kwargs(index.model.Meta.table_name))
    return index


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest, aws_credentials: None) -> Iterator[PatientIndex]:
    if request.param == "memory":
        yield InMemoryPatientIndex()
    elif request.param == "moto":
        with mock_aws(config=MOTO_CONFIG):
            yield _dynamo_index(None)
    else:
        server: DynamoDBLocal = request.getfixturevalue("mpi_dynamodb_local")
        yield _dynamo_index(server.endpoint)


@pytest.fixture
def mpi(index: PatientIndex) -> MasterPatientIndex:
    counter = itertools.count(1)
    return MasterPatientIndex(index, lambda: KEY, new_id=lambda: f"E{next(counter)}")


def _entry(
    index_mpi: MasterPatientIndex, key: PatientKey, version: int, eid: str, **fields: object
) -> IndexEntry:
    return IndexEntry(key, version, eid, index_mpi.features(patient(**fields)))  # type: ignore[arg-type]


# --- the port -------------------------------------------------------------------------------------


def test_a_saved_entry_reads_back_with_its_blocks_and_membership(index, mpi):
    key = PatientKey(A, "p1")
    entry = _entry(mpi, key, 1, "E1")
    assert index.save(entry, previous=None) is True
    assert index.get(key) == entry
    assert index.get(key).features.blocks == entry.features.blocks
    assert index.get_many([key, PatientKey(A, "missing")]) == [entry]
    assert all(index.blocked(block, limit=10) == [key] for block in entry.blocks)
    assert index.members("E1", limit=10) == [key]


def test_a_save_from_a_stale_state_writes_nothing(index, mpi):
    # Given an entry at version 2
    key = PatientKey(A, "p1")
    first = _entry(mpi, key, 1, "E1")
    index.save(first, previous=None)
    second = _entry(mpi, key, 2, "E1", phone="212-555-0100")
    assert index.save(second, previous=first) is True
    # When writers that read version 1 (or nothing) try to save
    late = _entry(mpi, key, 3, "E9", phone="212-555-0199")
    assert index.save(late, previous=first) is False
    assert index.save(late, previous=None) is False
    # Then version 2 stands, with its own blocks only
    assert index.get(key) == second
    assert index.members("E9", limit=10) == []
    for block in late.blocks - second.blocks:
        assert index.blocked(block, limit=10) == []


def test_an_update_moves_blocks_and_membership(index, mpi):
    key = PatientKey(A, "p1")
    first = _entry(mpi, key, 1, "E1")
    index.save(first, previous=None)
    moved = _entry(
        mpi, key, 2, "E2", family="Lindqvist", phone="212-555-0100", postal="10001", line="9 Elm Road"
    )
    assert index.save(moved, previous=first) is True
    for block in first.blocks - moved.blocks:
        assert index.blocked(block, limit=10) == []
    for block in moved.blocks:
        assert index.blocked(block, limit=10) == [key]
    assert index.members("E1", limit=10) == []
    assert index.members("E2", limit=10) == [key]


def test_a_relink_at_the_same_version_is_conditional_on_the_enterprise_id(index, mpi):
    key = PatientKey(A, "p1")
    entry = _entry(mpi, key, 1, "E1")
    index.save(entry, previous=None)
    relinked = replace(entry, enterprise_id="E2")
    assert index.save(relinked, previous=entry) is True
    assert index.save(replace(entry, enterprise_id="E3"), previous=entry) is False
    assert index.get(key) == relinked
    assert index.members("E2", limit=10) == [key]


def test_deleted_and_merged_entries_are_neither_blocked_nor_members(index, mpi):
    key = PatientKey(A, "p1")
    entry = _entry(mpi, key, 1, "E1")
    index.save(entry, previous=None)
    merged = replace(entry, version=2, merged_into="p0")
    assert index.save(merged, previous=entry) is True
    assert index.get(key) == merged
    assert index.members("E1", limit=10) == []
    assert all(index.blocked(block, limit=10) == [] for block in entry.blocks)
    deleted = IndexEntry(key, 3, deleted=True)
    assert index.save(deleted, previous=merged) is True
    assert index.get(key) == deleted


def test_the_largest_record_fits_one_transaction_both_ways(index, mpi):
    # Given a record with every feature repeated up to the caps (the most blocking keys)
    many = patient(identifiers=tuple((f"urn:id:{n}", f"{n}") for n in range(10)))
    many["name"] += [{"family": f"Family{c} Other{c}", "given": [f"Given{c} Second{c}"]} for c in "ABC"]
    many["telecom"] = [{"system": "phone", "value": f"212-555-01{n:02d}"} for n in range(5)]
    many["address"] = [{"line": [f"{n} Elm Road"], "postalCode": f"1000{n}"} for n in range(5)]
    key = PatientKey(A, "big")
    first = IndexEntry(key, 1, "E1", mpi.features(many))
    assert len(first.blocks) == MAX_BLOCKS
    # When it is saved, then replaced by one sharing no blocking key with it
    assert index.save(first, previous=None) is True
    second = replace(first, version=2, enterprise_id="E2", features=Features.from_json({"f": 1}, ["x"]))
    assert index.save(second, previous=first) is True
    # Then all the old keys are gone
    assert all(index.blocked(block, limit=10) == [] for block in first.blocks)
    assert index.blocked("x", limit=10) == [key]


# --- the MPI on each backend ----------------------------------------------------------------------


def test_the_mpi_links_merges_unmerges_and_deletes_on_every_backend(mpi):
    # Given one person in two clinics (an identifier) and a duplicate in clinic A
    mpi.record(A, "p1", 1, patient(identifiers=((SSN, "123456789"),)))
    mpi.record(
        B,
        "q1",
        1,
        patient("Lindqvist", phone=None, line=None, postal=None, identifiers=((SSN, "123-45-6789"),)),
    )
    other = patient(
        "Nakamura",
        "Hiroshi",
        gender="male",
        birth="1950-01-02",
        phone="212-555-0100",
        line="9 Elm Road",
        postal="10001",
    )
    mpi.record(A, "dup", 1, other)
    assert mpi.enterprise_id(A, "p1") == mpi.enterprise_id(B, "q1") != mpi.enterprise_id(A, "dup")
    assert mpi.linked(A, "p1") == [PatientKey(B, "q1")]
    assert next((m.tenant, m.patient_id, m.grade) for m in mpi.match(patient())) == (A, "p1", "certain")
    # When the duplicate is merged into p1, then unmerged
    mpi.record(A, "dup", 2, other | {"link": [{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}]})
    assert mpi.enterprise_id(A, "dup") == mpi.enterprise_id(A, "p1")
    assert mpi.match(other) == []
    mpi.record(A, "dup", 3, other)
    assert [m.patient_id for m in mpi.match(other)] == ["dup"]
    assert mpi.enterprise_id(A, "dup") != mpi.enterprise_id(A, "p1")
    # And a late redelivery of version 2 changes nothing
    mpi.record(A, "dup", 2, other | {"link": [{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}]})
    assert [m.patient_id for m in mpi.match(other)] == ["dup"]
    # When clinic B deletes its record
    mpi.record(B, "q1", 2, None)
    assert mpi.enterprise_id(B, "q1") is None
    assert mpi.linked(A, "p1") == []


def test_no_item_in_the_table_holds_demographics_in_clear_text(aws_credentials):
    # Given seeded patients indexed in a DynamoDB table
    with mock_aws(config=MOTO_CONFIG):
        index = _dynamo_index(None)
        mpi = MasterPatientIndex(index, lambda: KEY)
        body = patient(
            "Zebulon",
            "Quixotic",
            birth="1987-06-05",
            phone="+44 20 7946 0958",
            line="221B Baker Street",
            postal="NW1 6XE",
            identifiers=(("urn:oid:2.16.840.1.113883.2.1.4.1", "943 476 5919"),),
        )
        mpi.record(A, "p1", 1, body)
        mpi.record(B, "p2", 1, body)
        assert mpi.linked(A, "p1") == [PatientKey(B, "p2")]
        # When the whole table is read
        client = boto3.client("dynamodb", region_name="us-east-1")
        items = client.scan(TableName=index.model.Meta.table_name)["Items"]
    stored = json.dumps(items).casefold()
    # Then no demographic value appears in it
    for value in (
        "Zebulon",
        "Quixotic",
        "1987-06-05",
        "19870605",
        "7946 0958",
        "2079460958",
        "221B Baker",
        "NW1 6XE",
        "NW16XE",
        "943 476 5919",
        "9434765919",
    ):
        assert value.casefold() not in stored, value
    assert {item["pk"]["S"].split("#", 1)[0] for item in items} == {"P", "BK", "E"}


def test_a_missing_table_raises_mpi_unavailable(aws_credentials):
    with mock_aws(config=MOTO_CONFIG):
        index = DynamoPatientIndex("no-such-table")
        mpi = MasterPatientIndex(index, lambda: KEY)
        with pytest.raises(MpiUnavailableError):
            mpi.record(A, "p1", 1, patient())
        with pytest.raises(MpiUnavailableError):
            mpi.match(patient())
        with pytest.raises(MpiUnavailableError):
            mpi.linked(A, "p1")
