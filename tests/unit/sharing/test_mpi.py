"""The master patient index on its in-memory fake: grades, enterprise ids after record, merge,
unmerge and delete, stale versions, what is stored, and what $match refuses."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

import pytest

from ehr.sharing.mpi import (
    NOTHING_TO_MATCH,
    IndexEntry,
    InMemoryPatientIndex,
    MasterPatientIndex,
    Match,
    MpiUnavailableError,
    PatientKey,
)
from tests.unit.sharing.mpi_population import patient, population

KEY = b"unit-test-mpi-key-0123456789abcdef"
SSN = "http://hl7.org/fhir/sid/us-ssn"
A, B, C = "clinic-a", "clinic-b", "clinic-c"


def make_mpi(index: InMemoryPatientIndex | None = None) -> MasterPatientIndex:
    counter = itertools.count(1)
    return MasterPatientIndex(
        index or InMemoryPatientIndex(), lambda: KEY, new_id=lambda: f"E{next(counter)}"
    )


def grades(matches: Sequence[Match]) -> dict[tuple[str, str], str]:
    return {(m.tenant, m.patient_id): m.grade for m in matches}


def only(identifier: tuple[str, str]) -> dict:
    return patient(
        None, None, birth=None, gender=None, phone=None, line=None, postal=None, identifiers=(identifier,)
    )


# --- grades ---------------------------------------------------------------------------------------


def test_an_equal_identifier_is_certain_with_score_one_in_any_tenant():
    # Given a patient indexed in clinic A with a national identifier
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient(identifiers=((SSN, "123-45-6789"),)))
    # When another facility matches on that identifier alone, written differently
    matches = mpi.match(only((SSN, "123 45 6789")))
    # Then it is a certain match, with a score of 1
    assert matches == [Match(A, "p1", 1.0, "certain", mpi.enterprise_id(A, "p1") or "")]


def test_same_demographics_with_an_address_and_phone_are_certain():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient())
    [match] = mpi.match(patient())
    assert match.grade == "certain" and match.score >= 0.95


def test_typos_in_both_names_still_match_certainly_when_everything_else_agrees():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient())
    [match] = mpi.match(patient("Quinterro", "Maribell"))
    assert match.grade == "certain"


def test_day_and_month_swapped_still_match():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient(birth="1984-07-09"))
    [match] = mpi.match(patient(birth="1984-09-07"))
    assert match.grade == "certain"


def test_a_nickname_matches_its_given_name():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient("Okafor", "William", gender="male"))
    [match] = mpi.match(patient("Okafor", "Bill", gender="male"))
    assert match.grade == "certain"


def test_name_and_birth_date_alone_are_probable_not_certain():
    # Given a record with a name, birth date and sex only
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient(phone=None, line=None, postal=None))
    # When the same name and birth date are matched
    [match] = mpi.match(patient(phone=None, line=None, postal=None))
    # Then it is probable: a name and a birth date are shared by different people at scale
    assert match.grade == "probable"
    assert 0.8 <= match.score < 0.95


def test_twins_are_never_certain():
    # Given a twin: same family name, birth date, address and phone, another given name
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient(given="Maribel"))
    # When the other twin is matched
    matches = mpi.match(patient(given="Lucia"))
    # Then the first is at most possible
    assert [m.grade for m in matches] == ["possible"]


def test_twins_with_similar_names_but_different_sex_are_not_certain():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient(given="Daniel", gender="male"))
    assert [m.grade for m in mpi.match(patient(given="Daniela", gender="female"))] != ["certain"]


def test_a_parent_and_child_of_the_same_name_are_at_most_possible():
    mpi = make_mpi()
    mpi.record(A, "senior", 1, patient("Reyes", "Marco", gender="male", birth="1961-02-03"))
    matches = mpi.match(patient("Reyes", "Marco", gender="male", birth="1992-10-27"))
    assert [m.grade for m in matches] in ([], ["possible"])


def test_a_family_name_changed_by_marriage_still_matches_on_birth_date_and_phone():
    # Given a record under the maiden name
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient("Quintero"))
    # When the married name is matched with the same birth date, phone and given name
    [match] = mpi.match(patient("Lindqvist", line=None, postal=None))
    # Then it is found (probable), and certain when an identifier or the maiden name agrees
    assert match.grade == "probable"
    [with_maiden] = mpi.match(patient("Lindqvist", old_family="Quintero", line=None, postal=None))
    assert with_maiden.grade == "certain"


def test_a_family_name_change_with_an_identifier_is_certain():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient("Quintero", identifiers=((SSN, "123456789"),)))
    [match] = mpi.match(patient("Lindqvist", phone=None, identifiers=((SSN, "123456789"),)))
    assert match.grade == "certain"


def test_an_identifier_on_someone_with_another_name_and_birth_date_is_only_possible():
    # Given a record with an identifier
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient(identifiers=((SSN, "123456789"),)))
    # When someone else entirely carries the same identifier (a typo or reuse)
    [match] = mpi.match(
        patient("Nakamura", "Hiroshi", gender="male", birth="1950-01-02", identifiers=((SSN, "123456789"),))
    )
    # Then it is flagged for a person to look at, not linked
    assert match.grade == "possible"


def test_unrelated_people_are_not_returned():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient())
    other = patient(
        "Nakamura",
        "Hiroshi",
        gender="male",
        birth="1950-01-02",
        phone="212-555-0100",
        line="9 Elm Road",
        postal="10001",
    )
    assert mpi.match(other) == []


def test_results_are_sorted_by_score_and_cut_to_count():
    # Given the same person in three clinics, one of them with less to go on
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient())
    mpi.record(B, "p2", 1, patient(phone=None, line=None, postal=None))
    mpi.record(C, "p3", 1, patient("Quinterro"))
    # When matched
    matches = mpi.match(patient())
    # Then the best come first, and count and only_certain cut the list
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    assert [(m.tenant, m.grade) for m in matches][-1] == (B, "probable")
    assert len(mpi.match(patient(), count=1)) == 1
    assert {m.grade for m in mpi.match(patient(), only_certain=True)} == {"certain"}


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Patient"},
        {},
        patient(birth=None, gender=None, phone=None, line=None, postal=None),  # a name only
        {"resourceType": "Patient", "identifier": [{"value": "123"}]},  # no system
    ],
    ids=["empty", "no-type", "name-only", "identifier-without-system"],
)
def test_a_patient_with_nothing_to_match_on_is_refused(body):
    with pytest.raises(ValueError, match="nothing to match on") as error:
        make_mpi().match(body)
    assert str(error.value) == NOTHING_TO_MATCH


def test_match_refuses_other_resources_and_bad_counts():
    mpi = make_mpi()
    with pytest.raises(ValueError, match="Patient"):
        mpi.match({"resourceType": "Observation"})
    with pytest.raises(ValueError, match="count"):
        mpi.match(patient(), count=0)


# --- enterprise ids -------------------------------------------------------------------------------


def test_a_certain_match_shares_the_enterprise_id_and_is_linked_across_tenants():
    # Given one person registered in three clinics (one with a typo), and someone else
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient(identifiers=((SSN, "123456789"),)))
    mpi.record(B, "p2", 1, patient("Quinterro"))
    mpi.record(C, "p3", 1, only((SSN, "123-45-6789")))
    mpi.record(C, "x", 1, patient("Nakamura", "Hiroshi", gender="male", birth="1950-01-02"))
    # Then the three share one enterprise id, and each sees the others' records in other tenants
    assert mpi.enterprise_id(A, "p1") == mpi.enterprise_id(B, "p2") == mpi.enterprise_id(C, "p3")
    assert mpi.enterprise_id(C, "x") != mpi.enterprise_id(A, "p1")
    assert mpi.linked(A, "p1") == [PatientKey(B, "p2"), PatientKey(C, "p3")]
    assert mpi.linked(B, "p2") == [PatientKey(A, "p1"), PatientKey(C, "p3")]
    assert mpi.linked(C, "x") == []


def test_a_same_tenant_duplicate_shares_the_enterprise_id_but_is_not_linked_as_another_tenant():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient())
    mpi.record(A, "dup", 1, patient())
    assert mpi.enterprise_id(A, "dup") == mpi.enterprise_id(A, "p1")
    assert mpi.linked(A, "p1") == []


def test_probable_matches_are_not_linked():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient(phone=None, line=None, postal=None))
    mpi.record(B, "p2", 1, patient(phone=None, line=None, postal=None))
    assert mpi.enterprise_id(A, "p1") != mpi.enterprise_id(B, "p2")
    assert mpi.linked(A, "p1") == []


def test_unknown_records_have_no_enterprise_id():
    mpi = make_mpi()
    assert mpi.enterprise_id(A, "nobody") is None
    assert mpi.linked(A, "nobody") == []


def test_an_update_keeps_the_enterprise_id():
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient())
    before = mpi.enterprise_id(A, "p1")
    mpi.record(A, "p1", 2, patient(phone="(415) 555-0199"))
    assert mpi.enterprise_id(A, "p1") == before


def test_a_stale_or_redelivered_version_is_ignored():
    # Given version 2 indexed
    mpi = make_mpi()
    mpi.record(A, "p1", 2, only((SSN, "new")))
    eid = mpi.enterprise_id(A, "p1")
    # When version 1 arrives late, and version 2 again
    mpi.record(A, "p1", 1, only((SSN, "old")))
    mpi.record(A, "p1", 2, only((SSN, "old")))
    # Then the index still holds version 2
    assert [m.patient_id for m in mpi.match(only((SSN, "new")))] == ["p1"]
    assert mpi.match(only((SSN, "old"))) == []
    assert mpi.enterprise_id(A, "p1") == eid


def test_a_deleted_record_leaves_the_index_and_a_late_older_version_does_not_bring_it_back():
    # Given a person in two clinics
    mpi = make_mpi()
    mpi.record(A, "p1", 1, patient())
    mpi.record(B, "p2", 1, patient())
    # When clinic B deletes its record (version 2), and version 1 is redelivered afterwards
    mpi.record(B, "p2", 2, None)
    mpi.record(B, "p2", 1, patient())
    # Then it is neither matched nor linked, and has no enterprise id
    assert [(m.tenant, m.patient_id) for m in mpi.match(patient())] == [(A, "p1")]
    assert mpi.enterprise_id(B, "p2") is None
    assert mpi.linked(A, "p1") == []
    # And a later version brings it back
    mpi.record(B, "p2", 3, patient())
    assert mpi.linked(A, "p1") == [PatientKey(B, "p2")]


def _merge_fixture() -> MasterPatientIndex:
    """Clinic A holds a survivor and a duplicate (not linked: too different); clinic B's record is
    certainly the duplicate (same identifier)."""
    mpi = make_mpi()
    mpi.record(A, "survivor", 1, patient())
    duplicate = patient(
        "Quintero",
        "Maribel",
        birth="1984-07-18",
        phone=None,
        line="4 Birch Way",
        postal="94112",
        identifiers=((SSN, "555"),),
    )
    mpi.record(A, "dup", 1, duplicate)
    mpi.record(B, "elsewhere", 1, patient(phone=None, line=None, postal=None, identifiers=((SSN, "555"),)))
    assert mpi.enterprise_id(A, "dup") != mpi.enterprise_id(A, "survivor")
    assert mpi.enterprise_id(B, "elsewhere") == mpi.enterprise_id(A, "dup")
    return mpi


def test_a_merged_record_follows_the_survivor_and_is_no_longer_a_candidate():
    # Given a duplicate linked to a record in clinic B
    mpi = _merge_fixture()
    merged = patient(
        "Quintero",
        "Maribel",
        birth="1984-07-18",
        identifiers=((SSN, "555"),),
        links=(("replaced-by", "Patient/survivor"),),
    )
    # When clinic A merges the duplicate into the survivor (ADT^A40: the duplicate is replaced-by it)
    mpi.record(A, "dup", 2, merged)
    # Then the duplicate takes the survivor's enterprise id, and so does clinic B's record
    survivor_eid = mpi.enterprise_id(A, "survivor")
    assert mpi.enterprise_id(A, "dup") == survivor_eid
    assert mpi.enterprise_id(B, "elsewhere") == survivor_eid
    assert mpi.linked(A, "survivor") == [PatientKey(B, "elsewhere")]
    # And the duplicate is no longer matched nor listed as linked
    assert (A, "dup") not in grades(mpi.match(only((SSN, "555"))))
    assert PatientKey(A, "dup") not in mpi.linked(B, "elsewhere")


def test_a_merge_seen_before_the_survivor_is_indexed_catches_up_when_the_survivor_arrives():
    # Given a duplicate merged into a survivor the index has not seen yet (stream order)
    mpi = make_mpi()
    mpi.record(A, "dup", 1, patient(phone=None, identifiers=((SSN, "555"),)))
    mpi.record(
        A, "dup", 2, patient(phone=None, identifiers=((SSN, "555"),), links=(("replaced-by", "Patient/s"),))
    )
    # When the survivor arrives, saying it replaces the duplicate
    mpi.record(
        A,
        "s",
        1,
        patient(
            "Nakamura", "Hiroshi", gender="male", birth="1950-01-02", links=(("replaces", "Patient/dup"),)
        ),
    )
    # Then the duplicate's enterprise id is the survivor's
    assert mpi.enterprise_id(A, "dup") == mpi.enterprise_id(A, "s")


def test_an_unmerged_record_is_a_candidate_again_with_its_own_enterprise_id():
    # Given someone merged by mistake into another person's record
    mpi = make_mpi()
    mpi.record(A, "s", 1, patient())
    other = patient(
        "Nakamura",
        "Hiroshi",
        gender="male",
        birth="1950-01-02",
        phone="212-555-0100",
        line="9 Elm Road",
        postal="10001",
    )
    mpi.record(A, "wrong", 1, other)
    mpi.record(
        A, "wrong", 2, other | {"link": [{"other": {"reference": "Patient/s"}, "type": "replaced-by"}]}
    )
    assert mpi.enterprise_id(A, "wrong") == mpi.enterprise_id(A, "s")
    # When the merge is undone (a version without the link)
    mpi.record(A, "wrong", 3, other)
    # Then it is matched again, under an enterprise id of its own
    assert [m.patient_id for m in mpi.match(other)] == ["wrong"]
    assert mpi.enterprise_id(A, "wrong") not in (None, mpi.enterprise_id(A, "s"))


def test_an_unmerged_record_rejoins_its_certain_matches():
    mpi = _merge_fixture()
    body = patient("Quintero", "Maribel", birth="1984-07-18", identifiers=((SSN, "555"),))
    mpi.record(
        A, "dup", 2, body | {"link": [{"other": {"reference": "Patient/survivor"}, "type": "replaced-by"}]}
    )
    mpi.record(A, "dup", 3, body)
    assert mpi.enterprise_id(A, "dup") == mpi.enterprise_id(B, "elsewhere")
    assert mpi.linked(A, "dup") == [PatientKey(B, "elsewhere")]


# --- storage --------------------------------------------------------------------------------------


SEEDED = [
    patient(
        "Zebulon",
        "Quixotic",
        birth="1987-06-05",
        phone="+44 20 7946 0958",
        line="221B Baker Street",
        postal="NW1 6XE",
        gender="male",
    ),
    patient(
        "Featherstonehaugh",
        "Ottoline",
        birth="1931-12-30",
        phone="0161 496 0734",
        line="7 Quay Street",
        postal="M3 3JE",
        identifiers=(("urn:oid:2.16.840.1.113883.2.1.4.1", "943 476 5919"),),
    ),
]


def test_no_stored_item_contains_a_name_birth_date_phone_or_postal_code_in_clear_text():
    # Given seeded patients indexed
    index = InMemoryPatientIndex()
    mpi = make_mpi(index)
    for number, body in enumerate(SEEDED):
        mpi.record(A, f"p{number}", 1, body)
    # When everything stored is read back
    stored = json.dumps(index.stored_documents()).casefold()
    # Then none of their demographics appear, in any usual spelling
    for body in SEEDED:
        assert mpi.match(body), "the seeded patients are indexed"
        name = body["name"][0]
        phone_digits = "".join(ch for ch in body["telecom"][0]["value"] if ch.isdigit())
        address = body["address"][0]
        clear = [
            name["family"],
            name["given"][0],
            body["birthDate"],
            body["birthDate"].replace("-", ""),
            body["telecom"][0]["value"],
            phone_digits,
            phone_digits[-10:],
            address["line"][0],
            address["postalCode"],
            address["postalCode"].replace(" ", ""),
            *(i["value"] for i in body.get("identifier", [])),
            *(i["value"].replace(" ", "") for i in body.get("identifier", [])),
        ]
        for value in clear:
            assert value.casefold() not in stored, value


def test_the_key_is_read_lazily_once():
    calls: list[int] = []

    def key() -> bytes:
        calls.append(1)
        return KEY

    mpi = MasterPatientIndex(InMemoryPatientIndex(), key)
    assert calls == []
    mpi.record(A, "p1", 1, patient())
    mpi.match(patient())
    assert calls == [1]


def test_a_short_key_makes_the_index_unavailable_rather_than_blaming_the_input():
    mpi = MasterPatientIndex(InMemoryPatientIndex(), lambda: b"short")
    with pytest.raises(MpiUnavailableError, match="at least 16 bytes"):
        mpi.match(patient())


def test_another_key_gives_other_tokens():
    ours = make_mpi().features(patient())
    theirs = MasterPatientIndex(InMemoryPatientIndex(), lambda: b"another-key-0123456789abcdef").features(
        patient()
    )
    assert ours.identifiers == theirs.identifiers == frozenset()
    assert not ours.blocks & theirs.blocks and ours.phones != theirs.phones


class CountingIndex(InMemoryPatientIndex):
    def __init__(self) -> None:
        super().__init__()
        self.fetched = 0

    def get_many(self, keys: Sequence[PatientKey]) -> list[IndexEntry]:
        self.fetched += len(keys)
        return super().get_many(keys)


def test_match_reads_only_the_candidates_of_its_blocking_keys():
    # Given an index of about 1,700 records
    index = CountingIndex()
    mpi = make_mpi(index)
    for record in population(seed=3, count=1000):
        mpi.record(record.tenant, record.patient_id, 1, record.body)
    # When one patient is matched
    index.fetched = 0
    mpi.match(patient())
    # Then only a handful of records were read, not the index
    assert index.fetched < 40
