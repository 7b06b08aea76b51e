"""Index ranges for a clause, and their consistency with extraction and matching."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from ehr.fhir.outcome import OperationOutcomeError
from ehr.fhir.search.extract import END_PREFIX, IDENTIFIER_PREFIX, IndexTerm, index_terms
from ehr.fhir.search.match import matches
from ehr.fhir.search.plan import STRING_PREFIX_END, KeyRange, key_ranges
from ehr.fhir.search.query import PREFIXES, SearchClause, parse_query, resolve_chain
from tests.unit.search.samples import example_files, load, resolve_transaction, resources_in, synthea_files

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def clause(resource_type: str, name: str, value: str) -> SearchClause:
    (parsed,) = parse_query(resource_type, {name: [value]}, now=NOW).clauses
    return parsed


def ranges(resource_type: str, name: str, value: str) -> list[KeyRange] | None:
    return key_ranges(clause(resource_type, name, value))


# --- shapes -------------------------------------------------------------------------------


def test_tokens_references_and_uris_are_exact_key_lookups():
    # Given token, reference and uri clauses
    # When they are planned
    # Then each value is one exact key
    assert ranges("Observation", "code", "http://loinc.org|1,2") == [
        KeyRange("code", "http://loinc.org|1"),
        KeyRange("code", "2"),
    ]
    assert ranges("Observation", "subject", "Patient/1") == [KeyRange("subject", "Patient/1")]
    assert ranges("Observation", "subject:identifier", "urn:x|1") == [
        KeyRange("subject", "identifier:urn:x|1")
    ]
    assert ranges("ValueSet", "url", "http://x/vs") == [KeyRange("url", "http://x/vs")]


def test_a_bare_id_looks_up_every_target_type():
    # Given a bare id on a reference with four target types
    # When it is planned
    # Then there is one key per type
    found = ranges("Observation", "subject", "7")
    assert found is not None and {r.key for r in found} == {"Device/7", "Group/7", "Location/7", "Patient/7"}


def test_a_code_without_system_must_be_post_filtered():
    # Given a |code token
    # When it is planned
    # Then the code key is read and candidates need matching
    assert ranges("Observation", "code", "|x") == [KeyRange("code", "x", exact=False)]


def test_strings_are_prefix_ranges_and_exact_strings_point_ranges():
    # Given a string prefix and an :exact string
    # When they are planned
    # Then a prefix range and a point range come out
    assert ranges("Patient", "family", "Chal") == [KeyRange("family", "", "chal", "chal" + STRING_PREFIX_END)]
    assert ranges("Patient", "family:exact", "Chalmers") == [
        KeyRange("family", "", "chalmers", "chalmers", exact=False)
    ]


def test_date_ranges_reach_back_a_day_for_narrow_values_and_use_end_terms_for_wide_ones():
    # Given date clauses gt, lt and eq 2020
    # When they are planned
    # Then gt reads low ends a day back and end terms, lt and eq the low ends
    assert ranges("Observation", "date", "gt2020") == [
        KeyRange("date", "", "2020-12-30T23:59:59.999999Z", None, exact=False),
        KeyRange("date", END_PREFIX, "2020-12-31T23:59:59.999999Z", None, exact=False),
    ]
    assert ranges("Observation", "date", "lt2020") == [
        KeyRange("date", "", None, "2020-01-01T00:00:00.000000Z", exact=False)
    ]
    assert ranges("Observation", "date", "2020") == [
        KeyRange("date", "", "2020-01-01T00:00:00.000000Z", "2020-12-31T23:59:59.999999Z", exact=False)
    ]


def test_quantities_with_a_system_use_its_key_and_without_one_the_value_key():
    # Given quantities with and without a unit system
    # When they are planned
    # Then system|code or the value-only key is read
    with_system = ranges("Observation", "value-quantity", "5|http://unitsofmeasure.org|mg")
    any_system = ranges("Observation", "value-quantity", "5||mg")
    assert with_system is not None and {r.key for r in with_system} == {"http://unitsofmeasure.org|mg"}
    assert any_system is not None and {r.key for r in any_system} == {""}
    assert not any(r.exact for r in any_system)


@pytest.mark.parametrize(
    ("resource_type", "name", "value"),
    [
        ("Patient", "gender:missing", "true"),
        ("Patient", "gender:not", "male"),
        ("Patient", "family:contains", "alm"),
        ("Observation", "code:text", "height"),
        ("Observation", "code", "http://loinc.org|"),
        ("Observation", "date", "ne2020"),
        ("RiskAssessment", "probability", "ne0.5"),
        ("ValueSet", "url:below", "http://x/"),
    ],
)
def test_clauses_that_cannot_drive_a_query(resource_type: str, name: str, value: str):
    # Given a clause that no index range can answer
    # When it is planned
    # Then there is no plan
    assert ranges(resource_type, name, value) is None


def test_a_chain_is_planned_only_once_resolved():
    # Given a chained clause
    # When it is planned before and after resolution
    # Then only the resolved one has ranges, none when nothing was found
    chained = clause("Observation", "subject:Patient.name", "peter")
    assert key_ranges(chained) is None
    assert key_ranges(resolve_chain(chained, ["Patient/1"])) == [KeyRange("subject", "Patient/1")]
    assert key_ranges(resolve_chain(chained, [])) == []


def test_a_range_contains_the_terms_of_its_param_and_key_within_its_bounds():
    # Given a bounded date range
    # When terms are tested against it
    # Then param, key and bounds all count
    bounded = KeyRange("date", "", "2020", "2021", exact=False)
    assert bounded.contains(IndexTerm("date", "", "2020-05"))
    assert not bounded.contains(IndexTerm("date", "", "2022"))
    assert not bounded.contains(IndexTerm("date", END_PREFIX, "2020-05"))
    assert not bounded.contains(IndexTerm("birthdate", "", "2020-05"))


# --- consistency: key_ranges ∘ index_terms ------------------------------------------------

DATES = ["1970", "2000-01-01", "2011-11", "2015-06-15", "2019-12-31T23:00:00Z", "2024"]
NUMBERS = ["0", "0.5", "1", "5", "6.3", "10", "36.6", "100", "181.97", "1000", "-1"]


def _values_for(
    resource_type: str, param: str, term: IndexTerm, rng: random.Random
) -> Iterator[tuple[str, str]]:
    """Query (name, value) pairs derived from one real term, so that some of them match."""
    if term.is_end or term.match_only:
        return
    key, sort = term.key, term.sort
    if param in ("_lastUpdated",) or (term.high and sort[:1].isdigit() and "T" in sort):
        day = sort[:10]
        for prefix in PREFIXES:
            yield param, f"{prefix}{day}"
            yield param, f"{prefix}{rng.choice(DATES)}"
        yield param, sort[:4]
        return
    if key.startswith(IDENTIFIER_PREFIX):
        yield f"{param}:identifier", key[len(IDENTIFIER_PREFIX) :]
        return
    if sort and key == "" and not term.high:  # string
        yield param, sort[: max(1, len(sort) // 2)]
        yield f"{param}:exact", term.text.split("\x1f")[0]
        return
    if sort and term.high:  # number or quantity
        for prefix in PREFIXES:
            number = rng.choice(NUMBERS)
            yield param, f"{prefix}{number}"
            if "|" in key:
                system, code = key.split("|", 1)
                yield param, f"{prefix}{number}|{system}|{code}"
                yield param, f"{prefix}{number}||{code}"
        return
    if key and "/" in key and "|" not in key and key[:1].isupper():  # Type/id reference
        yield param, key
        yield param, key.split("/", 1)[1]
        return
    if key:
        yield param, key.replace("\\", "\\\\").replace(",", "\\,")


def _synthetic(rng: random.Random) -> Iterator[dict[str, Any]]:
    """Numbers, ranges and periods of every width, open ends included (rare in the samples)."""

    def day() -> str:
        return f"{rng.randint(1995, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"

    for index in range(80):
        low = rng.choice(NUMBERS)
        prediction: dict[str, Any] = (
            {"probabilityDecimal": float(low)}
            if index % 2
            else {
                "probabilityRange": {
                    "low": {"value": float(low)},
                    "high": {"value": float(low) + rng.random()},
                }
            }
        )
        yield {"resourceType": "RiskAssessment", "id": f"r{index}", "prediction": [prediction]}
        start, end = sorted([day(), day()])
        period = rng.choice(
            [{"start": start, "end": end}, {"start": start}, {"end": end}, {"start": start[:4]}]
        )
        yield {"resourceType": "Encounter", "id": f"e{index}", "status": "finished", "period": period}


def _population() -> dict[str, list[dict[str, Any]]]:
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for resource in _synthetic(random.Random(99)):
        by_type[resource["resourceType"]].append(resource)
    for path in example_files():
        for resource in resources_in(load(path)):
            if isinstance(resource.get("resourceType"), str):
                by_type[resource["resourceType"]].append(resource)
    for path in synthea_files():
        for resource in resolve_transaction(load(path)):
            by_type[resource["resourceType"]].append(resource)
    return by_type


def test_every_match_of_a_plannable_clause_has_a_term_in_one_of_its_ranges():
    population = _population()
    if not population:
        pytest.skip("no shared FHIR samples available")
    rng = random.Random(1234)
    checked = matched = 0
    for resource_type, resources in sorted(population.items()):
        # Given every resource of a type with its terms, and clauses derived from those terms
        terms_by_resource = [index_terms(r) for r in resources[:150]]
        candidates = [(t.param, t) for terms in terms_by_resource for t in terms]
        queries: set[tuple[str, str]] = set()
        for param, term in rng.sample(candidates, min(len(candidates), 60)):
            queries.update(_values_for(resource_type, param, term, rng))
        for name, value in sorted(queries):
            try:
                parsed = parse_query(resource_type, {name: [value]}, now=NOW).clauses
            except OperationOutcomeError:
                continue  # e.g. a derived reference whose type the parameter does not allow
            if len(parsed) != 1:
                continue
            (search,) = parsed
            planned = key_ranges(search)
            if planned is None:
                continue
            for terms in terms_by_resource:
                # When a resource matches the clause
                hit = matches(search, terms)
                inside = [r for r in planned if any(r.contains(t) for t in terms)]
                checked += 1
                if hit:
                    matched += 1
                    # Then one of its terms lies in one of the clause's ranges
                    assert inside, (resource_type, name, value)
                # And a term in an exact range always means a match
                if any(r.exact for r in inside):
                    assert hit, (resource_type, name, value)
    assert checked > 10_000 and matched > 500, (checked, matched)
