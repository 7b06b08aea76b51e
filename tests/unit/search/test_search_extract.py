"""Index terms extracted from resources: hand-made, FHIR spec examples and Synthea bundles."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from ehr.fhir.search.definitions import supported_parameters
from ehr.fhir.search.encoding import INSTANT_MAX, encode_decimal
from ehr.fhir.search.extract import (
    END_PREFIX,
    MAX_SORT_BYTES,
    TEXT_SEPARATOR,
    IndexTerm,
    compartment_patients,
    index_terms,
)
from tests.unit.search.samples import (
    FHIR_EXAMPLES,
    SYNTHEA,
    example,
    example_files,
    load,
    resolve_transaction,
    resources_in,
    synthea_files,
)


def terms_of(resource: dict[str, Any], param: str) -> list[IndexTerm]:
    return [t for t in index_terms(resource, [param]) if not t.is_end]


def keys_of(resource: dict[str, Any], param: str) -> set[str]:
    return {t.key for t in terms_of(resource, param)}


def sorts_of(resource: dict[str, Any], param: str) -> set[str]:
    return {t.sort for t in terms_of(resource, param)}


# --- token --------------------------------------------------------------------------------


def test_a_coding_gives_system_code_and_code_alone_with_its_display_for_text():
    # Given an Observation coded in LOINC
    observation = {
        "resourceType": "Observation",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body Height"}],
            "text": "Height",
        },
    }
    # When its code terms are extracted
    terms = terms_of(observation, "code")
    # Then system|code and code are keys, and the code term carries both texts for :text
    assert {t.key for t in terms} == {"http://loinc.org|8302-2", "8302-2"}
    assert [t.text.split(TEXT_SEPARATOR) for t in terms if t.key == "8302-2"] == [["body height", "height"]]


def test_a_coding_without_system_also_gives_the_bar_code_form():
    # Given a coding without a system
    # When its code terms are extracted
    # Then the |code form is there too
    observation = {"resourceType": "Observation", "code": {"coding": [{"code": "local-1"}]}}
    assert keys_of(observation, "code") == {"local-1", "|local-1"}


def test_a_text_only_concept_gives_a_match_only_term():
    # Given a concept with text and no coding
    # When its terms are extracted
    # Then one match-only term carries the text
    observation = {"resourceType": "Observation", "code": {"text": "Some odd test"}}
    (term,) = terms_of(observation, "code")
    assert term.key == "" and term.text == "some odd test" and term.match_only


def test_identifiers_give_system_value_and_value_with_the_type_text():
    # Given the spec's example patient with an MRN
    # When its identifier terms are extracted
    # Then system|value and value are keys
    patient = example("fhir-test-cases__patient-example.json")
    assert keys_of(patient, "identifier") == {"urn:oid:1.2.36.146.595.217.0.1|12345", "12345"}


def test_contact_points_booleans_and_codes_are_tokens():
    # Given the spec's example patient
    patient = example("fhir-test-cases__patient-example.json")
    # Then telecom values, gender, active and deceased are plain codes
    assert keys_of(patient, "phone") == {"(03) 5555 6473", "(03) 3410 5613", "(03) 5555 8834"}
    assert keys_of(patient, "email") == set()
    assert keys_of(patient, "gender") == {"male"}
    assert keys_of(patient, "active") == {"true"}
    assert keys_of(patient, "deceased") == {"false"}
    assert keys_of(patient, "_id") == {"example"}


def test_meta_tags_and_profiles_are_indexed_on_every_type():
    # Given any resource with meta
    organization = {
        "resourceType": "Organization",
        "meta": {
            "tag": [{"system": "urn:t", "code": "demo"}],
            "security": [{"system": "urn:s", "code": "R"}],
            "profile": ["http://x/StructureDefinition/p|1.0"],
            "source": "urn:src",
            "lastUpdated": "2024-01-02T03:04:05.678Z",
        },
    }
    # Then the common Resource parameters find them
    assert keys_of(organization, "_tag") == {"urn:t|demo", "demo"}
    assert keys_of(organization, "_security") == {"urn:s|R", "R"}
    assert keys_of(organization, "_profile") == {
        "http://x/StructureDefinition/p|1.0",
        "http://x/StructureDefinition/p",
    }
    assert keys_of(organization, "_source") == {"urn:src"}
    assert sorts_of(organization, "_lastUpdated") == {"2024-01-02T03:04:05.678000Z"}


# --- string -------------------------------------------------------------------------------


def test_names_and_addresses_give_their_parts_normalised():
    # Given the spec's example patient
    patient = example("fhir-test-cases__patient-example.json")
    # Then family, given and name hold the normalised parts, each with its original text
    assert sorts_of(patient, "family") == {"chalmers", "windsor"}
    assert sorts_of(patient, "given") == {"peter", "james", "jim"}
    assert sorts_of(patient, "name") == {"chalmers", "peter", "james", "jim", "windsor"}
    assert sorts_of(patient, "address-city") == {"pleasantville"}
    assert "534 erewhon st peasantville, rainbow, vic 3999" in sorts_of(patient, "address")
    assert {t.text for t in terms_of(patient, "address-city")} == {"PleasantVille"}
    assert all(t.key == "" for t in terms_of(patient, "name"))


def test_values_equal_once_normalised_share_one_term_keeping_both_originals():
    # Given two family names equal once normalised
    # When they are extracted
    # Then one term keeps both originals
    patient = {"resourceType": "Patient", "name": [{"family": "Marché"}, {"family": "MARCHE"}]}
    (term,) = terms_of(patient, "family")
    assert term.sort == "marche"
    assert term.text.split(TEXT_SEPARATOR) == ["Marché", "MARCHE"]


def test_very_long_strings_are_cut_in_the_sort_key_but_kept_whole_in_text():
    # Given a family name far longer than a sort key allows
    # When it is extracted
    # Then the sort value is cut and the text is whole
    patient = {"resourceType": "Patient", "name": [{"family": "é" * 1000}]}
    (term,) = terms_of(patient, "family")
    assert len(term.sort.encode()) <= MAX_SORT_BYTES
    assert term.text == "é" * 1000


# --- date ---------------------------------------------------------------------------------


def test_a_birth_date_is_the_whole_day():
    # Given the spec's example patient born 1974-12-25
    # When its birthdate term is extracted
    # Then it spans the whole day
    patient = example("fhir-test-cases__patient-example.json")
    (term,) = terms_of(patient, "birthdate")
    assert (term.sort, term.high) == ("1974-12-25T00:00:00.000000Z", "1974-12-25T23:59:59.999999Z")


def test_an_open_period_runs_to_the_end_of_time_and_gets_an_end_term():
    # Given the glucose example, effective from 2013-04-02T09:30:10+01:00 with no end
    observation = example("fhir-r4-spec__observation-example-f001-glucose.json")
    # When its date terms are extracted
    terms = index_terms(observation, ["date"])
    # Then the low end is in UTC, the high end is open, and an end term indexes the high end
    assert IndexTerm("date", "", "2013-04-02T08:30:10.000000Z", INSTANT_MAX) in terms
    assert IndexTerm("date", END_PREFIX, INSTANT_MAX) in terms


def test_narrow_date_values_get_no_end_term():
    # Given an Observation effective at one second
    # When its date terms are extracted
    # Then there is no end term
    observation = {"resourceType": "Observation", "effectiveDateTime": "2020-01-01T10:00:00Z"}
    assert [t.key for t in index_terms(observation, ["date"])] == [""]


def test_timings_index_their_outer_limits():
    # Given a ServiceRequest whose occurrence is a Timing with two events
    request = {"resourceType": "ServiceRequest", "occurrenceTiming": {"event": ["2020-01-05", "2020-01-01"]}}
    # Then its occurrence runs from the first day to the end of the last
    (term,) = terms_of(request, "occurrence")
    assert (term.sort, term.high) == ("2020-01-01T00:00:00.000000Z", "2020-01-05T23:59:59.999999Z")


# --- number and quantity ------------------------------------------------------------------


def test_a_value_quantity_gives_value_only_and_system_code_terms():
    # Given the glucose example, 6.3 mmol/L
    # When its value-quantity terms are extracted
    # Then the value is keyed alone and by system|code, with the unit as text
    observation = example("fhir-r4-spec__observation-example-f001-glucose.json")
    terms = terms_of(observation, "value-quantity")
    encoded = encode_decimal(Decimal("6.3"))
    assert {(t.key, t.sort, t.high, t.text) for t in terms} == {
        ("", encoded, encoded, "mmol/l"),
        ("http://unitsofmeasure.org|mmol/L", encoded, encoded, "mmol/l"),
    }


def test_a_quantity_without_system_is_keyed_by_bar_code():
    # Given a quantity with a code and no system
    # When its terms are extracted
    # Then it is keyed by value alone and by |code
    observation = {"resourceType": "Observation", "valueQuantity": {"value": 5, "code": "mg"}}
    assert keys_of(observation, "value-quantity") == {"", "|mg"}


def test_a_range_gives_low_and_high_with_an_end_term():
    # Given a RiskAssessment whose probability is a Range (number parameter)
    assessment = {
        "resourceType": "RiskAssessment",
        "prediction": [{"probabilityRange": {"low": {"value": 0.2}, "high": {"value": 0.4}}}],
    }
    # Then the term spans the range and the high end is indexed too
    terms = index_terms(assessment, ["probability"])
    low, high = encode_decimal(Decimal("0.2")), encode_decimal(Decimal("0.4"))
    assert IndexTerm("probability", "", low, high) in terms
    assert IndexTerm("probability", END_PREFIX, high) in terms


def test_numbers_keep_their_decimal_precision():
    # Given a decimal parsed with trailing zeros
    # When it is extracted
    # Then it is the same point as without them
    assessment = {"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": Decimal("0.250")}]}
    (term,) = terms_of(assessment, "probability")
    assert term.sort == term.high == encode_decimal(Decimal("0.25"))


# --- reference and uri --------------------------------------------------------------------


def test_references_are_keyed_by_type_and_id_and_absolute_urls_as_they_are():
    # Given relative, absolute, contained and identifier references
    # When their terms are extracted
    # Then Type/id, the URL and identifier keys are there and the contained one is not
    observation = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p1/_history/3"},
        "performer": [
            {"reference": "https://other.example/fhir/Practitioner/9"},
            {"reference": "#contained-1"},
            {"identifier": {"system": "urn:npi", "value": "123"}, "type": "Practitioner"},
        ],
    }
    assert keys_of(observation, "subject") == {"Patient/p1"}
    assert keys_of(observation, "performer") == {
        "https://other.example/fhir/Practitioner/9",
        "identifier:urn:npi|123",
        "identifier:123",
    }


def test_resolve_is_filters_references_by_target_type():
    # Given Observations about a Patient and about a Group
    about_patient = {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}
    about_group = {"resourceType": "Observation", "subject": {"reference": "Group/g1"}}
    by_type_only = {
        "resourceType": "Observation",
        "subject": {"type": "Patient", "identifier": {"value": "x"}},
    }
    # Then `patient` (subject.where(resolve() is Patient)) only keeps the Patient
    assert keys_of(about_patient, "patient") == {"Patient/p1"}
    assert keys_of(about_group, "patient") == set()
    assert keys_of(about_group, "subject") == {"Group/g1"}
    assert keys_of(by_type_only, "patient") == {"identifier:x"}


def test_canonical_references_and_uris_are_indexed_with_and_without_version():
    # Given a PlanDefinition with a url and a versioned library
    # When its terms are extracted
    # Then the canonical is keyed with and without its version
    plan = {
        "resourceType": "PlanDefinition",
        "url": "http://x/PlanDefinition/a",
        "library": ["http://x/Library/l|2.0"],
    }
    assert keys_of(plan, "url") == {"http://x/PlanDefinition/a"}
    assert keys_of(plan, "depends-on") == {"http://x/Library/l|2.0", "http://x/Library/l"}


# --- robustness ---------------------------------------------------------------------------


BAD_RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Patient", "birthDate": "not a date", "name": "Peter", "gender": 5},
    {"resourceType": "Patient", "birthDate": 1974, "name": [None, 3, {"family": ["x"], "given": "Pe"}]},
    {"resourceType": "Patient", "identifier": [{"system": 3, "value": None}, "x"], "telecom": {"value": 1}},
    {
        "resourceType": "Observation",
        "valueQuantity": {"value": "abc", "system": 1},
        "effectivePeriod": "2020",
    },
    {"resourceType": "Observation", "valueQuantity": {"value": float("inf")}, "code": [1, 2]},
    {
        "resourceType": "Observation",
        "effectivePeriod": {"start": "2021", "end": "2020"},
        "subject": "Patient/1",
    },
    {
        "resourceType": "Observation",
        "effectiveDateTime": "0001-01-01T00:00:00+14:00",
        "subject": {"reference": 5},
    },
    {"resourceType": "Observation", "meta": {"lastUpdated": "yesterday", "tag": "x"}, "performer": [[]]},
    {"resourceType": "Encounter", "period": {"start": {"nested": True}}, "subject": {"reference": ""}},
    {"resourceType": "NoSuchType", "id": "x"},
    {"resourceType": 7},
    {},
]


@pytest.mark.parametrize("resource", BAD_RESOURCES)
def test_bad_data_never_raises(resource: dict[str, Any]):
    # When a resource full of wrongly typed values is indexed
    terms = index_terms(resource)
    # Then nothing raises and every term is well formed
    assert all(isinstance(t.key, str) and isinstance(t.sort, str) for t in terms)
    compartment_patients(resource)


def test_the_valid_parts_of_a_partly_bad_resource_are_still_indexed():
    # Given a Patient with a bad birth date and family but a good gender
    # When it is indexed
    # Then the good value is there and the bad ones are skipped
    patient = {
        "resourceType": "Patient",
        "birthDate": "not a date",
        "gender": "female",
        "name": [{"family": 3}],
    }
    assert keys_of(patient, "gender") == {"female"}
    assert terms_of(patient, "birthdate") == []
    assert terms_of(patient, "family") == []


def test_no_two_terms_share_param_key_and_sort():
    # Given the spec's example patient
    # When it is indexed
    # Then no two terms would write the same index item
    patient = example("fhir-test-cases__patient-example.json")
    terms = index_terms(patient)
    assert len({(t.param, t.key, t.sort) for t in terms}) == len(terms)


# --- compartments -------------------------------------------------------------------------


def test_an_observation_is_in_its_subject_patients_compartment():
    # Given the glucose example about Patient/f001
    # When its compartments are computed
    # Then it is in f001's
    observation = example("fhir-r4-spec__observation-example-f001-glucose.json")
    assert compartment_patients(observation) == {"f001"}


def test_a_patient_is_in_its_own_and_its_linked_patients_compartments():
    # Given a Patient linked to another
    # When its compartments are computed
    # Then it is in both
    patient = {
        "resourceType": "Patient",
        "id": "a",
        "link": [{"other": {"reference": "Patient/b"}, "type": "seealso"}],
    }
    assert compartment_patients(patient) == {"a", "b"}


def test_references_to_other_types_or_servers_put_nothing_in_a_compartment():
    # Given references to a Group, another server and a Practitioner
    # When compartments are computed
    # Then there are none
    observation = {
        "resourceType": "Observation",
        "subject": {"reference": "Group/g"},
        "performer": [{"reference": "https://elsewhere/fhir/Patient/p"}, {"reference": "Practitioner/x"}],
    }
    assert compartment_patients(observation) == set()
    assert compartment_patients({"resourceType": "Organization", "id": "o"}) == set()


# --- the shared samples -------------------------------------------------------------------


def test_every_shared_fhir_example_extracts_without_raising():
    # Given every shared FHIR example, bundles opened
    # When each resource is indexed
    # Then nothing raises and every term belongs to a supported parameter
    files = example_files()
    if not files:
        pytest.skip("shared FHIR examples not available")
    count = 0
    for path in files:
        for resource in resources_in(load(path)):
            terms = index_terms(resource)
            supported = supported_parameters(resource.get("resourceType", ""))
            assert all(t.param in supported for t in terms), path.name
            compartment_patients(resource)
            count += 1
    assert count > 50


def test_every_resource_of_every_synthea_bundle_extracts_without_raising():
    # Given every resource of every Synthea bundle, references resolved
    # When each is indexed
    # Then nothing raises and dates are well formed
    files = synthea_files()
    if not files:
        pytest.skip(f"Synthea bundles not available under {SYNTHEA}")
    total = 0
    for path in files:
        for resource in resolve_transaction(load(path)):
            terms = index_terms(resource)
            assert any(t.param == "_id" for t in terms), path.name
            for term in terms:
                if term.param in ("date", "_lastUpdated", "birthdate") and not term.is_end:
                    assert len(term.sort) == len(term.high) == 27
            total += 1
    assert total > 500


def _synthea(name_start: str) -> list[dict[str, Any]]:
    files = [f for f in synthea_files() if f.name.startswith(f"synthea__{name_start}")]
    if not files:
        pytest.skip(f"Synthea bundle {name_start} not available")
    return resolve_transaction(load(files[0]))


def test_a_synthea_observation_has_the_right_code_subject_date_and_value_terms():
    # Given Clarence Mills' first Observation (a body height), references resolved as on import
    resources = _synthea("Clarence_Mills")
    observation = next(r for r in resources if r["id"] == "1df62aa4-deb5-4559-a093-0811402fd834")
    # When it is indexed
    terms = index_terms(observation)

    def keys(param: str) -> set[str]:
        return {t.key for t in terms if t.param == param}

    # Then code, subject, patient, date and value-quantity are what a search expects
    assert keys("code") == {"http://loinc.org|8302-2", "8302-2"}
    assert keys("subject") == keys("patient") == {"Patient/8b7b7d9e-07bc-403b-8983-455635e3b63f"}
    assert keys("category") >= {"http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"}
    (date,) = [t for t in terms if t.param == "date"]
    assert (date.sort, date.high) == ("2011-11-10T19:20:19.000000Z", "2011-11-10T19:20:19.999999Z")
    value = encode_decimal(Decimal("181.97220860922522"))
    assert {(t.key, t.sort) for t in terms if t.param == "value-quantity"} == {
        ("", value),
        ("http://unitsofmeasure.org|cm", value),
    }
    assert compartment_patients(observation) == {"8b7b7d9e-07bc-403b-8983-455635e3b63f"}


def test_a_synthea_patient_has_the_right_demographic_terms():
    # Given Clarence Mills' Patient resource
    # When it is indexed
    # Then names, gender, birth date and identifiers are searchable
    resources = _synthea("Clarence_Mills")
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    assert sorts_of(patient, "family") == {"mills"}
    assert sorts_of(patient, "given") == {"clarence"}
    assert sorts_of(patient, "name") == {"mills", "clarence", "mr."}
    assert keys_of(patient, "gender") == {"male"}
    assert {(t.sort, t.high) for t in terms_of(patient, "birthdate")} == {
        ("1980-05-29T00:00:00.000000Z", "1980-05-29T23:59:59.999999Z")
    }
    assert {"http://hl7.org/fhir/sid/us-ssn|999-87-3283", "999-87-3283"} <= keys_of(patient, "identifier")
    assert compartment_patients(patient) == {"8b7b7d9e-07bc-403b-8983-455635e3b63f"}


def test_synthea_resources_are_in_their_patients_compartment():
    # Given a whole Synthea record, references resolved
    resources = _synthea("Clarence_Mills")
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    # Then every clinical resource is in that patient's compartment, and organizations are not
    for resource in resources:
        patients = compartment_patients(resource)
        if resource["resourceType"] in ("Organization", "Practitioner"):
            assert patients == set()
        else:
            assert patients == {patient_id}, resource["resourceType"]


def test_the_shared_invalid_examples_extract_without_raising():
    # Given the deliberately invalid samples (those that are JSON at all)
    files = sorted((FHIR_EXAMPLES / "invalid").glob("*.json"))
    documents = []
    for path in files:
        try:
            documents.append(load(path))
        except ValueError:
            continue  # not JSON: the parser's problem, not the indexer's
    if not documents:
        pytest.skip("shared invalid FHIR examples not available")
    # When every resource in them is indexed, then nothing raises
    for document in documents:
        for resource in resources_in(document):
            index_terms(resource)
            compartment_patients(resource)
