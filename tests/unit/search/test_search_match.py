"""FHIR search semantics of one clause against a resource's index terms."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ehr.fhir.search.extract import index_terms
from ehr.fhir.search.match import matches
from ehr.fhir.search.query import parse_query

NOW = datetime(2024, 6, 1, tzinfo=UTC)

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "identifier": [{"system": "urn:mrn", "value": "12345", "type": {"text": "Medical record number"}}],
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}, {"family": "du Marché"}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "telecom": [{"system": "email", "value": "peter@example.org"}],
    "meta": {"tag": [{"code": "untyped"}]},
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {
        "coding": [
            {"system": "http://loinc.org", "code": "8302-2", "display": "Body height"},
            {"code": "local-7"},
        ],
        "text": "Height (standing)",
    },
    "subject": {"reference": "Patient/p1"},
    "performer": [{"identifier": {"system": "urn:npi", "value": "42"}, "type": "Practitioner"}],
    "effectiveDateTime": "2020-03-04T10:15:30Z",
    "valueQuantity": {
        "value": 6.3,
        "unit": "mmol/l",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    },
}
ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "period": {"start": "2020-01-01", "end": "2020-06-30"},
}
ONGOING: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "e2",
    "status": "in-progress",
    "class": {"code": "AMB"},
    "period": {"start": "2020-01-01"},
}
RISK: dict[str, Any] = {
    "resourceType": "RiskAssessment",
    "id": "r1",
    "prediction": [{"probabilityDecimal": 0.25}],
}
VALUE_SET: dict[str, Any] = {"resourceType": "ValueSet", "id": "v1", "url": "http://acme.org/fhir/ValueSet/x"}


def hit(resource: dict[str, Any], name: str, value: str) -> bool:
    """Whether ``resource`` matches the search ``name=value`` of its own type."""
    query = parse_query(resource["resourceType"], {name: [value]}, now=NOW)
    (clause,) = query.clauses
    return matches(clause, index_terms(resource))


# --- token --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8302-2", True),
        ("http://loinc.org|8302-2", True),
        ("http://snomed.info/sct|8302-2", False),
        ("|8302-2", False),  # it has a system
        ("|local-7", True),  # a coding without a system
        ("local-7", True),
        ("http://loinc.org|", True),
        ("http://snomed.info/sct|", False),
        ("nope,8302-2", True),  # OR
        ("nope", False),
    ],
)
def test_token_codes_with_and_without_system(value: str, expected: bool):
    # Given an Observation coded LOINC 8302-2 and local-7 (no system)
    # When it is searched by code
    # Then the token form decides
    assert hit(OBSERVATION, "code", value) is expected


def test_plain_codes_and_booleans_match_with_or_without_the_bar():
    # Given codes and booleans that have no system
    # When they are searched with and without the bar
    # Then both forms find them
    assert hit(OBSERVATION, "status", "final")
    assert hit(OBSERVATION, "status", "|final")
    assert not hit(OBSERVATION, "status", "amended")
    assert hit(PATIENT, "active", "true")
    assert not hit(PATIENT, "active", "false")
    assert hit(PATIENT, "_tag", "|untyped")


def test_identifiers_and_ids_are_tokens():
    # Given a Patient with an MRN, an id and an email
    # When they are searched
    # Then system|value, value and id match
    assert hit(PATIENT, "identifier", "urn:mrn|12345")
    assert hit(PATIENT, "identifier", "12345")
    assert not hit(PATIENT, "identifier", "urn:other|12345")
    assert hit(PATIENT, "_id", "p1")
    assert hit(PATIENT, "email", "peter@example.org")


def test_token_not_matches_resources_without_the_code_including_those_without_any():
    # Given resources with and without the searched code
    # When they are searched with :not
    # Then only those without a matching code match
    assert not hit(OBSERVATION, "status:not", "final")
    assert hit(OBSERVATION, "status:not", "amended")
    assert not hit(OBSERVATION, "code:not", "nope,http://loinc.org|8302-2")
    assert hit(PATIENT, "gender:not", "female")
    assert hit({"resourceType": "Patient", "id": "x"}, "gender:not", "male")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("height", True),  # a word of the concept text
        ("Body Hei", True),  # the start of a display, case and spacing ignored
        ("standing", True),
        ("eight", False),  # not at a word start
        ("weight", False),
    ],
)
def test_token_text_searches_displays_and_concept_text(value: str, expected: bool):
    # Given an Observation whose display is Body height and text Height (standing)
    # When it is searched with :text
    # Then words starting a run of words match
    assert hit(OBSERVATION, "code:text", value) is expected


def test_identifier_text_is_the_type_text():
    # Given an identifier typed Medical record number
    # When it is searched with :text
    # Then the type text matches
    assert hit(PATIENT, "identifier:text", "medical record")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("gender:missing", "false", True),
        ("gender:missing", "true", False),
        ("death-date:missing", "true", True),
        ("birthdate:missing", "false", True),
        ("general-practitioner:missing", "true", True),
        ("family:missing", "false", True),
    ],
)
def test_missing_on_any_type(name: str, value: str, expected: bool):
    # Given a Patient with some elements and not others
    # When it is searched with :missing
    # Then present and absent elements are told apart
    assert hit(PATIENT, name, value) is expected


# --- string -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("family", "chal", True),  # starts with, case-insensitive
        ("family", "Chalmers", True),
        ("family", "halm", False),  # not at the start
        ("family", "du marche", True),  # accents ignored
        ("family", "DU   MARCHÉ", True),
        ("name", "pet", True),  # any part of a HumanName
        ("given", "jam", True),
        ("given", "chalmers", False),
        ("family:exact", "Chalmers", True),
        ("family:exact", "chalmers", False),  # exact is case-sensitive
        ("family:exact", "Chalm", False),
        ("family:exact", "du Marché", True),
        ("family:contains", "ALME", True),
        ("family:contains", "marc", True),
        ("family:contains", "xyz", False),
    ],
)
def test_string_prefix_exact_and_contains(name: str, value: str, expected: bool):
    # Given a Patient Peter James Chalmers, also du Marché
    # When it is searched by name parts
    # Then prefix, :exact and :contains behave as the spec says
    assert hit(PATIENT, name, value) is expected


# --- date ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1974", True),  # the day lies inside the year
        ("1974-12-25", True),
        ("1974-12-25T10:00", False),  # the day is not inside that minute
        ("1975", False),
        ("ne1975", True),
        ("ne1974", False),
        ("gt1974-12-24", True),
        ("gt1974-12-25", False),
        ("ge1974-12-25", True),
        ("ge1974-12-26", False),
        ("lt1974-12-26", True),
        ("lt1974-12-25", False),
        ("le1974-12-25", True),
        ("le1974-12-24", False),
        ("sa1974-12-24", True),
        ("sa1974-12-25", False),
        ("eb1974-12-26", True),
        ("eb1974-12-25", False),
        ("ap1975-01-01", True),  # within a tenth of the ~50 years to now
        ("ap1990", False),
    ],
)
def test_date_prefixes_on_a_day(value: str, expected: bool):
    # Given a Patient born on 1974-12-25 (a whole day)
    # When it is searched by birthdate with each prefix
    # Then the range semantics decide
    assert hit(PATIENT, "birthdate", value) is expected


@pytest.mark.parametrize(
    ("resource", "value", "expected"),
    [
        (ENCOUNTER, "2020", True),  # Jan-Jun lies inside 2020
        (ENCOUNTER, "2020-03", False),  # the period is not inside March
        (ENCOUNTER, "gt2020-03", True),  # it goes on after March
        (ENCOUNTER, "gt2020-06-30", False),
        (ENCOUNTER, "lt2020-03", True),  # it started before March
        (ENCOUNTER, "lt2020-01-01", False),
        (ENCOUNTER, "ge2020-06-30", True),
        (ENCOUNTER, "le2020-01-01", True),
        (ENCOUNTER, "sa2019", True),
        (ENCOUNTER, "sa2020-01", False),
        (ENCOUNTER, "eb2020-07", True),
        (ENCOUNTER, "eb2020-06", False),
        (ENCOUNTER, "ne2020-03", True),
        (ENCOUNTER, "ap2020-03", True),  # overlaps
        (ONGOING, "gt2100", True),  # an open period never ends
        (ONGOING, "2020", False),
        (ONGOING, "eb2100", False),
    ],
)
def test_date_prefixes_on_periods(resource: dict[str, Any], value: str, expected: bool):
    # Given an Encounter from January to June 2020, and an ongoing one
    # When they are searched by date with each prefix
    # Then the range semantics decide
    assert hit(resource, "date", value) is expected


def test_a_datetime_is_the_whole_second():
    # Given an Observation at 2020-03-04T10:15:30Z
    # When it is searched at that second, in another zone, that day and the next second
    # Then only the last misses
    assert hit(OBSERVATION, "date", "2020-03-04T10:15:30Z")
    assert hit(OBSERVATION, "date", "2020-03-04T11:15:30+01:00")
    assert hit(OBSERVATION, "date", "2020-03-04")
    assert not hit(OBSERVATION, "date", "2020-03-04T10:15:31Z")


# --- number and quantity ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.25", True),
        ("0.250", True),  # [0.2495, 0.2505)
        ("0.3", True),  # [0.25, 0.35): implicit precision of the search value
        ("0.2", False),  # [0.15, 0.25): the high end is open
        ("ne0.25", False),
        ("ne0.26", True),
        ("gt0.2", True),
        ("gt0.25", False),
        ("ge0.25", True),
        ("lt0.25", False),
        ("lt0.3", True),
        ("le0.25", True),
        ("sa0.2", True),
        ("eb0.3", True),
        ("ap0.24", True),  # within 10 %
        ("ap0.2", False),
    ],
)
def test_number_prefixes(value: str, expected: bool):
    # Given a RiskAssessment with probability 0.25
    # When it is searched with each prefix
    # Then eq uses the value's precision and the others the exact value
    assert hit(RISK, "probability", value) is expected


def test_a_number_range_is_compared_by_its_ends():
    # Given a probability Range with no high end
    # When it is searched
    # Then its ends decide
    ranged = {"resourceType": "RiskAssessment", "prediction": [{"probabilityRange": {"low": {"value": 0.2}}}]}
    assert hit(ranged, "probability", "gt0.9")  # no high end: it reaches above anything
    assert not hit(ranged, "probability", "lt0.1")
    assert not hit(ranged, "probability", "0.3")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6.3", True),
        ("6.3|http://unitsofmeasure.org|mmol/L", True),
        ("6.3||mmol/L", True),  # the code, any system
        ("6.3||mmol/l", True),  # or the unit as written
        ("6.3||mg", False),
        ("6.3|http://snomed.info/sct|mmol/L", False),
        ("gt6|http://unitsofmeasure.org|mmol/L", True),
        ("gt7", False),
        ("le6.3||mmol/L", True),
        ("ap6", True),
        ("6", True),  # [5.5, 6.5)
        ("6.0", False),  # [5.95, 6.05)
    ],
)
def test_quantity_values_units_and_prefixes(value: str, expected: bool):
    # Given an Observation of 6.3 mmol/L (unit written mmol/l)
    # When it is searched by value-quantity
    # Then system, code or unit and the prefix decide
    assert hit(OBSERVATION, "value-quantity", value) is expected


def test_decimals_parsed_with_their_precision_keep_it():
    # Given a quantity parsed as Decimal 6.30
    # When it is searched for 6.3
    # Then it matches
    precise = dict(OBSERVATION, valueQuantity={"value": Decimal("6.30"), "code": "mmol/L"})
    assert hit(precise, "value-quantity", "6.3")


# --- reference and uri --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("subject", "Patient/p1", True),
        ("subject", "p1", True),  # a bare id: any target type
        ("subject", "Patient/p2", False),
        ("subject:Patient", "p1", True),
        ("subject:Group", "p1", False),
        ("patient", "p1", True),
        ("patient", "Patient/p1/_history/4", True),
        ("performer:identifier", "urn:npi|42", True),
        ("performer:identifier", "42", True),
        ("performer:identifier", "urn:other|42", False),
        ("subject", "https://elsewhere/fhir/Patient/p1", False),
    ],
)
def test_references(name: str, value: str, expected: bool):
    # Given an Observation about Patient/p1 performed by NPI 42
    # When it is searched by reference
    # Then Type/id, bare ids, types and identifiers decide
    assert hit(OBSERVATION, name, value) is expected


def test_absolute_references_match_by_url():
    # Given an Observation whose subject is an absolute URL
    # When it is searched
    # Then only that URL matches
    remote = dict(OBSERVATION, subject={"reference": "https://elsewhere/fhir/Patient/p1"})
    assert hit(remote, "subject", "https://elsewhere/fhir/Patient/p1")
    assert not hit(remote, "subject", "Patient/p1")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("url", "http://acme.org/fhir/ValueSet/x", True),
        ("url", "http://acme.org/fhir/ValueSet", False),
        ("url:below", "http://acme.org/fhir/", True),
        ("url:below", "http://other.org/", False),
        ("url:above", "http://acme.org/fhir/ValueSet/x/_history/1", True),
        ("url:above", "http://acme.org/", False),
    ],
)
def test_uris(name: str, value: str, expected: bool):
    # Given a ValueSet with a url
    # When it is searched by url
    # Then equality, :below and :above behave as the spec says
    assert hit(VALUE_SET, name, value) is expected


def test_terms_of_other_parameters_are_ignored_and_a_chain_must_be_resolved_first():
    # Given all of a resource's terms and a clause on one parameter
    terms = index_terms(OBSERVATION)
    (status,) = parse_query("Observation", {"status": ["final"]}).clauses
    (chained,) = parse_query("Observation", {"subject:Patient.name": ["x"]}).clauses
    # Then only that parameter's terms decide, and a chained clause is the caller's job
    assert matches(status, terms)
    assert not matches(status, [t for t in terms if t.param != "status"])
    with pytest.raises(ValueError):
        matches(chained, terms)
