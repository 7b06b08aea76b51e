"""Parsing search query strings into a SearchQuery, and refusing malformed ones with a 400."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ehr.fhir.outcome import OperationOutcomeError
from ehr.fhir.search.encoding import encode_decimal
from ehr.fhir.search.query import (
    DEFAULT_COUNT,
    MAX_COUNT,
    Include,
    SearchClause,
    SearchQuery,
    parse_query,
    resolve_chain,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def parse(resource_type: str, params: Mapping[str, str | Sequence[str]]) -> SearchQuery:
    given = {k: [v] if isinstance(v, str) else list(v) for k, v in params.items()}
    return parse_query(resource_type, given, now=NOW)


def only(query: SearchQuery) -> SearchClause:
    (clause,) = query.clauses
    return clause


def refused(resource_type: str, params: Mapping[str, str | Sequence[str]]) -> OperationOutcomeError:
    with pytest.raises(OperationOutcomeError) as caught:
        parse(resource_type, params)
    return caught.value


# --- values per type ----------------------------------------------------------------------


def test_token_values_in_their_four_forms():
    # Given the four token forms, OR'ed with commas
    clause = only(parse("Observation", {"code": "http://loinc.org|8302-2,8302-2,|local,http://loinc.org|"}))
    # Then each value keeps its system (None: not given, "": explicitly none) and code
    assert [(v.system, v.code) for v in clause.values] == [
        ("http://loinc.org", "8302-2"),
        (None, "8302-2"),
        ("", "local"),
        ("http://loinc.org", ""),
    ]
    assert clause.param.type == "token" and clause.modifier is None


def test_escaped_commas_bars_and_backslashes_are_literal():
    # Given a token with escaped bar, comma and backslash
    # When it is parsed
    # Then they are literal characters
    clause = only(parse("Observation", {"code": r"urn:a\|b|c\,d\\e"}))
    (value,) = clause.values
    assert (value.system, value.code) == ("urn:a|b", "c,d\\e")


def test_repeated_parameters_are_anded_and_commas_are_ored():
    # Given given repeated, one value with a comma
    # When it is parsed
    # Then two clauses come out, the first with two values
    query = parse("Patient", {"given": ["peter,paul", "james"]})
    assert [[v.text for v in c.values] for c in query.clauses] == [["peter", "paul"], ["james"]]


def test_string_values_are_normalised_but_kept_as_given_for_exact():
    # Given an :exact string with an accent
    # When it is parsed
    # Then it is kept as given and normalised
    clause = only(parse("Patient", {"family:exact": "Marché"}))
    (value,) = clause.values
    assert clause.modifier == "exact" and value.code == "Marché" and value.text == "marche"


@pytest.mark.parametrize(
    ("raw", "prefix", "low", "high"),
    [
        ("2020", "eq", "2020-01-01T00:00:00.000000Z", "2020-12-31T23:59:59.999999Z"),
        ("ge2020-03", "ge", "2020-03-01T00:00:00.000000Z", "2020-03-31T23:59:59.999999Z"),
        ("lt2020-03-04T10:00:00+02:00", "lt", "2020-03-04T08:00:00.000000Z", "2020-03-04T08:00:00.999999Z"),
        ("sa2020-03-04", "sa", "2020-03-04T00:00:00.000000Z", "2020-03-04T23:59:59.999999Z"),
        ("eb2020-03-04", "eb", "2020-03-04T00:00:00.000000Z", "2020-03-04T23:59:59.999999Z"),
        ("ne2020", "ne", "2020-01-01T00:00:00.000000Z", "2020-12-31T23:59:59.999999Z"),
    ],
)
def test_date_values_carry_prefix_and_range(raw: str, prefix: str, low: str, high: str):
    # Given a date value with or without a prefix
    # When it is parsed
    # Then prefix and UTC range are set
    (value,) = only(parse("Observation", {"date": raw})).values
    assert (value.prefix, value.low, value.high) == (prefix, low, high)


def test_approximate_dates_widen_by_a_tenth_of_the_distance_to_now():
    # Given "now" is 2024-06-01 and the value is 2014-06-01 (ten years back)
    (value,) = only(parse("Observation", {"date": "ap2014-06-01"})).values
    # Then the range is widened by about a year on both sides
    assert value.prefix == "ap"
    assert "2013-05-25" < value.low < "2013-06-05"
    assert "2015-05-25" < value.high < "2015-06-05"


def test_number_eq_uses_implicit_precision_and_gt_the_exact_value():
    # Given number values with eq and gt
    # When they are parsed
    # Then eq spans the precision and gt is the exact value
    (eq,) = only(parse("RiskAssessment", {"probability": "100"})).values
    (gt,) = only(parse("RiskAssessment", {"probability": "gt0.5"})).values
    assert (eq.low, eq.high) == (encode_decimal(Decimal("99.5")), encode_decimal(Decimal("100.5")))
    assert gt.prefix == "gt" and gt.low == gt.high == encode_decimal(Decimal("0.5"))


def test_quantity_values_in_their_three_forms():
    # Given the three quantity forms
    # When they are parsed
    # Then prefix, system and code are set
    clause = only(parse("Observation", {"value-quantity": "5.4|http://unitsofmeasure.org|mg,le5||mg,-3"}))
    assert [(v.prefix, v.system, v.code) for v in clause.values] == [
        ("eq", "http://unitsofmeasure.org", "mg"),
        ("le", None, "mg"),
        ("eq", None, ""),
    ]
    assert clause.values[2].low == encode_decimal(Decimal("-3.5"))


def test_reference_values_become_index_keys():
    # Given a literal reference, a bare id, a typed modifier, an absolute URL and a versioned one
    subject = parse(
        "Observation",
        {"subject": "Patient/1,7,https://x/fhir/Patient/2,Patient/3/_history/2", "subject:Patient": "9"},
    )
    first, typed = subject.clauses
    # Then each gives the keys it may match (a bare id: one per target type)
    assert [v.keys for v in first.values] == [
        ("Patient/1",),
        ("Device/7", "Group/7", "Location/7", "Patient/7"),
        ("https://x/fhir/Patient/2",),
        ("Patient/3",),
    ]
    assert typed.modifier == "Patient" and typed.values[0].keys == ("Patient/9",)


def test_reference_identifier_modifier_keys():
    # Given reference :identifier values with and without system
    # When they are parsed
    # Then identifier keys come out
    clause = only(parse("Observation", {"subject:identifier": "urn:mrn|12345,777"}))
    assert [v.keys for v in clause.values] == [("identifier:urn:mrn|12345",), ("identifier:777",)]


def test_uri_values_and_their_modifiers():
    # Given a uri with :below
    # When it is parsed
    # Then the modifier and value are kept
    clause = only(parse("ValueSet", {"url:below": "http://acme.org/fhir/"}))
    assert clause.modifier == "below" and clause.values[0].code == "http://acme.org/fhir/"


def test_missing_takes_true_or_false_on_any_type():
    # Given birthdate:missing=true
    # When it is parsed
    # Then the value says missing
    clause = only(parse("Patient", {"birthdate:missing": "true"}))
    assert clause.modifier == "missing" and clause.values[0].missing is True


def test_token_text_and_not_modifiers():
    # Given :text and :not on tokens
    # When they are parsed
    # Then the text is normalised and the code kept
    text = only(parse("Observation", {"code:text": "Body  HEIGHT"}))
    negated = only(parse("Observation", {"status:not": "final"}))
    assert text.values[0].text == "body height"
    assert negated.modifier == "not" and negated.values[0].code == "final"


def test_an_empty_value_is_ignored():
    # Given family= with no value
    # When it is parsed
    # Then there is no clause
    assert parse("Patient", {"family": ""}).clauses == ()


# --- chaining -----------------------------------------------------------------------------


def test_a_typed_chain_holds_the_target_type_and_the_clause_to_run_there():
    # Given a chain through subject to the Patient's identifier
    clause = only(parse("Observation", {"subject:Patient.identifier": "urn:mrn|12345"}))
    # Then the chain names Patient and holds a token clause on Patient.identifier
    assert clause.chain is not None and clause.values == ()
    assert clause.chain.target_types == ("Patient",)
    inner = clause.chain.clause
    assert inner.param.code == "identifier" and inner.param.expression == "Patient.identifier"
    assert (inner.values[0].system, inner.values[0].code) == ("urn:mrn", "12345")


def test_an_untyped_chain_runs_against_every_target_that_has_the_parameter():
    # Given chains without a type modifier
    # When they are parsed
    # Then every target type with that parameter is listed
    patient_chain = only(parse("Observation", {"patient.identifier": "12345"})).chain
    subject_chain = only(parse("Observation", {"subject.name:exact": "Peter"})).chain
    assert patient_chain is not None and patient_chain.target_types == ("Patient",)
    assert subject_chain is not None and subject_chain.target_types == ("Location", "Patient")
    assert subject_chain.clause.modifier == "exact"


def test_a_resolved_chain_is_a_plain_reference_clause():
    # Given a chain and the references it found (one twice)
    # When it is resolved
    # Then a plain reference clause on each reference once comes out
    clause = only(parse("Observation", {"subject:Patient.name": "peter"}))
    resolved = resolve_chain(clause, ["Patient/1", "Patient/2", "Patient/1"])
    assert resolved.chain is None
    assert [v.keys for v in resolved.values] == [("Patient/1",), ("Patient/2",)]


# --- result parameters --------------------------------------------------------------------


def test_result_parameters_and_their_defaults():
    # Given a query with only a search parameter
    plain = parse("Patient", {"family": "x"})
    # Then count is the default and nothing else is set
    assert plain.count == DEFAULT_COUNT == 20
    assert (plain.sort, plain.includes, plain.summary, plain.total, plain.elements) == (
        (),
        (),
        None,
        None,
        (),
    )
    # And the result parameters are read when given
    query = parse(
        "Observation",
        {
            "_count": "0",
            "_sort": "-date,code,_id,-_lastUpdated,value-quantity",
            "_summary": "count",
            "_total": "accurate",
            "_elements": "code,subject",
            "_format": "json",
            "_pretty": "true",
        },
    )
    assert query.count == 0
    assert [(s.param.code, s.descending) for s in query.sort] == [
        ("date", True),
        ("code", False),
        ("_id", False),
        ("_lastUpdated", True),
        ("value-quantity", False),
    ]
    assert (query.summary, query.total, query.elements) == ("count", "accurate", ("code", "subject"))
    assert query.clauses == () and query.unknown_params == ()


def test_count_accepts_the_maximum():
    # Given _count at its maximum
    # When it is parsed
    # Then it is accepted
    assert parse("Patient", {"_count": str(MAX_COUNT)}).count == MAX_COUNT == 1000


def test_includes_and_revincludes():
    # Given includes with targets, wildcards and :iterate, and a revinclude
    # When they are parsed
    # Then each becomes an Include
    query = parse(
        "Observation",
        {
            "_include": ["Observation:subject:Patient", "Observation:performer", "*"],
            "_include:iterate": "Patient:general-practitioner",
            "_revinclude": "Provenance:target",
        },
    )
    assert query.includes == (
        Include("Observation", "subject", "Patient"),
        Include("Observation", "performer"),
        Include("Observation", None),
        Include("Patient", "general-practitioner", iterate=True),
    )
    assert query.revincludes == (Include("Provenance", "target"),)


def test_unknown_and_unsupported_parameters_are_collected_not_refused():
    # Given an unknown name, _has and a composite beside a real parameter
    # When they are parsed
    # Then the first three are collected and the last is a clause
    query = parse(
        "Observation",
        {"foo": "1", "_has:Observation:patient:code": "x", "code-value-quantity": "x$5", "code": "1"},
    )
    assert query.unknown_params == ("foo", "_has:Observation:patient:code", "code-value-quantity")
    assert [c.param.code for c in query.clauses] == ["code"]


def test_bare_string_values_are_taken_as_one_value():
    # Given a mapping whose value is a plain string
    # When it is parsed
    # Then the string is one value, not characters
    query = parse_query("Patient", {"family": "peter"}, now=NOW)  # type: ignore[dict-item]
    assert only(query).values[0].text == "peter"


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "params", "expression"),
    [
        ("Patient", {"gender:exact": "male"}, "gender:exact"),  # unknown modifier for a token
        ("Patient", {"family:not": "x"}, "family:not"),  # :not is for tokens
        ("Observation", {"code:in": "http://vs"}, "code:in"),  # known, not supported
        ("Observation", {"code:below": "x"}, "code:below"),
        ("Observation", {"date:exact": "2020"}, "date:exact"),
        ("Observation", {"subject:Practitioner": "1"}, "subject:Practitioner"),  # not a target
        ("Observation", {"date": "xx2020"}, "date"),  # bad prefix
        ("Observation", {"date": "2020-13-01"}, "date"),  # not a date
        ("Observation", {"date": "ge"}, "date"),
        ("RiskAssessment", {"probability": "abc"}, "probability"),
        ("RiskAssessment", {"probability": "gtNaN"}, "probability"),
        ("Observation", {"value-quantity": "5|mg"}, "value-quantity"),  # two parts
        ("Observation", {"value-quantity": "5|http://unitsofmeasure.org|"}, "value-quantity"),
        ("Observation", {"value-quantity": "five"}, "value-quantity"),
        ("Observation", {"code": "a|b|c"}, "code"),
        ("Observation", {"code": "|"}, "code"),
        ("Observation", {"subject": "Practitioner/1"}, "subject"),  # not a target type
        ("Observation", {"subject": "not a/reference/at all"}, "subject"),
        ("Observation", {"subject:identifier": "a|b|c"}, "subject:identifier"),
        ("Patient", {"birthdate:missing": "maybe"}, "birthdate:missing"),
        ("Patient", {"_count": "ten"}, "_count"),
        ("Patient", {"_count": "-1"}, "_count"),
        ("Patient", {"_count": "1001"}, "_count"),
        ("Patient", {"_count": "\u00b2"}, "_count"),  # a superscript two is a digit to Python only
        ("Patient", {"_count": ["1", "2"]}, "_count"),
        ("Patient", {"_sort": "organization"}, "_sort"),  # a reference cannot be sorted
        ("Patient", {"_sort": "nope"}, "_sort"),
        ("Patient", {"_summary": "maybe"}, "_summary"),
        ("Patient", {"_total": "some"}, "_total"),
        ("Patient", {"_elements": "name,1bad"}, "_elements"),
        ("Observation", {"_include": "Observation"}, "_include"),  # bad include syntax
        ("Observation", {"_include": "Observation:code"}, "_include"),  # not a reference
        ("Observation", {"_include": "Nope:subject"}, "_include"),
        ("Observation", {"_include": "Observation:subject:Practitioner"}, "_include"),
        ("Observation", {"_include": "Patient:organization"}, "_include"),  # not the searched type
        ("Observation", {"_include:deep": "Observation:subject"}, "_include:deep"),
        ("Observation", {"_revinclude": "Patient:organization"}, "_revinclude"),  # never refers here
        ("Observation", {"code.name": "x"}, "code.name"),  # chain on a token
        ("Observation", {"subject.organization.name": "x"}, "subject.organization.name"),  # too deep
        ("Observation", {"subject:Patient.nope": "x"}, "subject:Patient.nope"),
        ("Observation", {"subject:identifier.name": "x"}, "subject:identifier.name"),
        ("Observation", {"subject:Patient.gender:exact": "x"}, "subject:Patient.gender:exact"),
        ("Observation", {"_count:x": "1"}, "_count:x"),
    ],
)
def test_malformed_queries_are_refused_with_400_naming_the_parameter(
    resource_type: str, params: Mapping[str, str | Sequence[str]], expression: str
):
    # When the malformed query is parsed
    error = refused(resource_type, params)
    # Then it is an OperationOutcome 400 "invalid" whose expression names the query parameter
    assert error.status == 400
    assert error.code == "invalid"
    assert error.issues[0].expression == (expression,)
    assert error.issues[0].diagnostics


def test_an_unknown_resource_type_is_refused():
    # Given a type the server does not know
    # When a query on it is parsed
    # Then it is a 400
    assert refused("NoSuchType", {}).status == 400
