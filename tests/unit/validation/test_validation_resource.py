"""validate_resource: one behaviour per test, judged by the OperationOutcome a client would see."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from validation_helpers import found, issues_at, outcome_of

from ehr.fhir.validation import known_resource_types, validate_resource


def observation(**elements: Any) -> dict[str, Any]:
    """A minimal valid Observation with ``elements`` added or replaced (None removes one)."""
    resource: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "Weight"}}
    for name, value in elements.items():
        if value is None:
            resource.pop(name, None)
        else:
            resource[name] = value
    return resource


def rejected(resource: Any, **kwargs: Any) -> dict[str, Any]:
    return outcome_of(lambda: validate_resource(resource, **kwargs))


# --- what the resource is --------------------------------------------------------------------------


def test_a_minimal_resource_is_accepted() -> None:
    # Given the smallest valid Observation and Patient, When validated, Then nothing is raised
    validate_resource(observation())
    validate_resource({"resourceType": "Patient"})


def test_a_body_that_is_not_an_object_is_refused() -> None:
    # Given a JSON array instead of a resource
    outcome = rejected([{"resourceType": "Patient"}])

    # Then one structure issue says so
    assert [i["code"] for i in outcome["issue"]] == ["structure"]
    assert "JSON object" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("resource_type", "code"),
    [(None, "required"), (42, "invalid"), ("", "invalid"), ("Patients", "invalid")],
)
def test_a_missing_or_unknown_resource_type_is_refused(resource_type: Any, code: str) -> None:
    # Given a body whose resourceType is missing, not a string, empty or not an R4 type
    body: dict[str, Any] = {"id": "a"}
    if resource_type is not None:
        body["resourceType"] = resource_type

    # Then the issue points at resourceType
    assert found(rejected(body)) == {(code, "resourceType")}


def test_a_resource_type_other_than_the_url_names_is_refused() -> None:
    # Given a Patient sent to the Observation endpoint
    outcome = rejected({"resourceType": "Patient"}, expected_type="Observation")

    # Then the client is told both types
    assert found(outcome) == {("invalid", "resourceType")}
    assert "Patient" in outcome["issue"][0]["diagnostics"]
    assert "Observation" in outcome["issue"][0]["diagnostics"]


def test_an_id_other_than_the_url_names_is_refused() -> None:
    # Given an update to Patient/a whose body says id b
    outcome = rejected({"resourceType": "Patient", "id": "b"}, expected_type="Patient", expected_id="a")

    # Then the issue is at Patient.id
    assert found(outcome) == {("invalid", "Patient.id")}


def test_an_update_without_an_id_is_refused_when_an_id_is_required() -> None:
    outcome = rejected({"resourceType": "Patient"}, require_id=True)
    assert found(outcome) == {("required", "Patient.id")}


@pytest.mark.parametrize("bad_id", ["bad_id", "", "a" * 65, "with space", "é"])
def test_a_malformed_id_is_refused(bad_id: str) -> None:
    outcome = rejected({"resourceType": "Patient", "id": bad_id})
    assert {e for _, e in found(outcome)} == {"Patient.id"}


def test_known_resource_types_are_the_r4_types_r4b_models() -> None:
    types = known_resource_types()
    assert {"Patient", "Observation", "Bundle", "AuditEvent", "Subscription"} <= types
    assert "Citation" not in types  # R4B only
    assert "MedicinalProduct" not in types  # R4 only, no R4B model


# --- structure -------------------------------------------------------------------------------------


def test_an_unknown_element_is_refused_where_it_is() -> None:
    # Given an unknown element deep inside a backbone element
    resource = observation(component=[{"code": {"text": "x"}, "colour": "red"}])

    # Then the expression points at it
    outcome = rejected(resource)
    assert found(outcome) == {("structure", "Observation.component[0].colour")}
    assert "'colour' is not an element of Observation.component" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("element", "value"),
    [
        ("active", "true"),  # boolean as a string
        ("active", 1),
        ("multipleBirthInteger", Decimal("2.0")),  # a decimal where an integer is required
        ("multipleBirthInteger", "2"),
        ("gender", 1),
        ("managingOrganization", "Organization/1"),  # a string where a Reference object is required
    ],
)
def test_a_value_of_the_wrong_json_kind_is_refused(element: str, value: Any) -> None:
    outcome = rejected({"resourceType": "Patient", element: value})
    assert found(outcome) == {("structure", f"Patient.{element}")}


def test_a_decimal_given_as_a_string_is_refused() -> None:
    outcome = rejected(observation(valueQuantity={"value": "1.5"}))
    assert found(outcome) == {("structure", "Observation.valueQuantity.value")}


def test_an_object_where_an_array_is_required_is_refused() -> None:
    outcome = rejected({"resourceType": "Patient", "name": {"family": "Chalmers"}})
    assert found(outcome) == {("structure", "Patient.name")}
    assert "array" in outcome["issue"][0]["diagnostics"]


def test_an_array_where_one_value_is_allowed_is_refused() -> None:
    outcome = rejected({"resourceType": "Patient", "gender": ["male"]})
    assert found(outcome) == {("structure", "Patient.gender")}


def test_a_missing_required_element_is_refused() -> None:
    outcome = rejected(observation(code=None))
    assert found(outcome) == {("required", "Observation.code")}


def test_a_required_element_in_a_backbone_element_is_checked() -> None:
    outcome = rejected(observation(component=[{"valueString": "x"}]))
    assert found(outcome) == {("required", "Observation.component[0].code")}


def test_a_required_primitive_may_be_present_through_its_extension_only() -> None:
    # Given Observation.status absent but explained by a data-absent-reason extension
    resource = observation(
        status=None,
        _status={
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
            ]
        },
    )
    # Then it is valid R4
    validate_resource(resource)


def test_two_types_of_one_choice_element_are_refused() -> None:
    outcome = rejected(observation(valueString="80 kg", valueQuantity={"value": 80}))
    assert found(outcome) == {("structure", "Observation.value[x]")}


def test_choice_elements_are_located_by_their_type_name() -> None:
    outcome = rejected(observation(valueQuantity={"value": 80, "comparator": "about"}))
    assert found(outcome) == {("code-invalid", "Observation.valueQuantity.comparator")}


@pytest.mark.parametrize(
    ("element", "value"),
    [
        ("birthDate", "1974-13-01"),
        ("birthDate", "2023-02-30"),  # matches the pattern, not the calendar
        ("birthDate", "25/12/1974"),
        ("deceasedDateTime", "2020-01-01T10:00:00"),  # a time needs a time zone
        ("deceasedDateTime", "2020-01-01T10:00Z"),  # and seconds
    ],
)
def test_an_invalid_date_or_datetime_is_refused(element: str, value: str) -> None:
    outcome = rejected({"resourceType": "Patient", element: value})
    assert found(outcome) == {("value", f"Patient.{element}")}
    # a date of birth is PHI: the message explains the format without echoing the value
    assert value not in outcome["issue"][0]["diagnostics"]


def test_an_instant_without_time_zone_is_refused() -> None:
    outcome = rejected(observation(issued="2020-01-01T10:00:00"))
    assert found(outcome) == {("value", "Observation.issued")}


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        ({"resourceType": "Patient", "multipleBirthInteger": 2**31}, "Patient.multipleBirthInteger"),
        (observation(valueString="a\x0bb"), "Observation.valueString"),
        (observation(code={"coding": [{"code": " leading"}]}), "Observation.code.coding[0].code"),
        ({"resourceType": "Patient", "photo": [{"data": "not base64!"}]}, "Patient.photo[0].data"),
        (observation(valueString="\ud800"), "Observation.valueString"),  # lone surrogate
        ({"resourceType": "Patient", "implicitRules": "has space"}, "Patient.implicitRules"),
    ],
)
def test_a_primitive_value_in_the_wrong_format_is_refused(resource: dict[str, Any], expression: str) -> None:
    assert ("value", expression) in found(rejected(resource))


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (observation(note=[{"text": ""}]), "Observation.note[0].text"),  # empty string
        (observation(identifier=[]), "Observation.identifier"),  # empty array
        (observation(identifier=[{}]), "Observation.identifier[0]"),  # empty object
        (observation(subject={"id": "x"}), "Observation.subject"),  # only an id
        (observation(_status={}), "Observation.status"),  # empty primitive extension object
    ],
)
def test_empty_elements_are_refused_ele_1(resource: dict[str, Any], expression: str) -> None:
    outcome = rejected(resource)
    assert ("invariant", expression) in found(outcome)
    assert "ele-1" in issues_at(outcome, expression)[0]["diagnostics"]


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (observation(subject=None, focus=[None]), "Observation.focus[0]"),
        ({"resourceType": "Patient", "gender": None}, "Patient.gender"),
        ({"resourceType": "Patient", "name": [{"given": ["Peter", None]}]}, "Patient.name[0].given[1]"),
    ],
)
def test_nulls_are_refused(resource: dict[str, Any], expression: str) -> None:
    assert ("structure", expression) in found(rejected(resource))


def test_a_null_in_a_primitive_array_is_allowed_when_its_extension_stands_in() -> None:
    # Given given[1] replaced by an extension at the same position (FHIR JSON's primitive arrays)
    extension = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}
    resource = {
        "resourceType": "Patient",
        "name": [{"given": ["Peter", None], "_given": [None, {"extension": [extension]}]}],
    }
    validate_resource(resource)


def test_extensions_of_a_primitive_are_validated_too() -> None:
    # Given _birthDate whose extension has neither a value nor nested extensions
    outcome = rejected(
        {
            "resourceType": "Patient",
            "birthDate": "1974-12-25",
            "_birthDate": {"extension": [{"url": "http://x.org/e"}]},
        }
    )
    assert found(outcome) == {("invariant", "Patient.birthDate.extension[0]")}


def test_an_extension_on_an_element_that_is_not_primitive_is_refused() -> None:
    outcome = rejected({"resourceType": "Patient", "_name": {"id": "x"}})
    assert found(outcome) == {("structure", "Patient._name")}


def test_contained_resources_are_validated_at_their_place() -> None:
    resource = observation(
        contained=[{"resourceType": "Patient", "id": "p", "birthDate": "not a date"}],
        subject={"reference": "#p"},
    )
    assert found(rejected(resource)) == {("value", "Observation.contained[0].birthDate")}


def test_a_contained_resource_of_unknown_type_is_refused() -> None:
    resource = observation(contained=[{"resourceType": "Nope", "id": "p"}], subject={"reference": "#p"})
    assert found(rejected(resource)) == {("invalid", "Observation.contained[0]")}


def test_meta_version_and_last_updated_from_the_client_are_accepted() -> None:
    # The server overwrites them; validation does not refuse them.
    validate_resource(
        {"resourceType": "Patient", "meta": {"versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z"}}
    )


def test_every_issue_is_listed_not_just_the_first() -> None:
    # Given a Patient with four unrelated problems
    resource = {
        "resourceType": "Patient",
        "id": "bad_id",
        "gender": "M",
        "birthDate": "1974-13-01",
        "name": [{"period": {"start": "2020-02-01", "end": "2020-01-01"}}],
        "colour": "red",
    }

    # Then the outcome lists them all, each at its element
    assert found(rejected(resource)) == {
        ("value", "Patient.id"),
        ("code-invalid", "Patient.gender"),
        ("value", "Patient.birthDate"),
        ("invariant", "Patient.name[0].period"),
        ("structure", "Patient.colour"),
    }


def test_a_deeply_nested_body_is_refused_without_crashing() -> None:
    nested: dict[str, Any] = {"url": "http://x.org/e", "valueString": "x"}
    for _ in range(500):
        nested = {"url": "http://x.org/e", "extension": [nested]}
    outcome = rejected({"resourceType": "Patient", "extension": [nested]})
    assert any("nested too deeply" in i["diagnostics"] for i in outcome["issue"])


# --- decimals are judged as sent and never rewritten ----------------------------------------------


def test_decimal_precision_is_untouched_by_validation() -> None:
    # Given a value with a trailing zero and one with an exponent, as parse_json produces them
    resource = observation(
        valueQuantity={
            "value": Decimal("1.50"),
            "unit": "mg",
            "system": "http://unitsofmeasure.org",
            "code": "mg",
        },
        referenceRange=[{"low": {"value": Decimal("1.0E+2")}}],
    )
    before = copy.deepcopy(resource)

    # When it is validated
    validate_resource(resource)

    # Then the input is exactly as it was, precision included
    assert resource == before
    assert str(resource["valueQuantity"]["value"]) == "1.50"
    assert str(resource["referenceRange"][0]["low"]["value"]) == "1.0E+2"


# --- required bindings -----------------------------------------------------------------------------


def test_a_code_outside_its_required_value_set_is_refused_with_the_allowed_codes() -> None:
    # Given an Observation status that R4 does not define
    outcome = rejected(observation(status="done"))

    # Then the client learns which codes are allowed
    assert found(outcome) == {("code-invalid", "Observation.status")}
    diagnostics = outcome["issue"][0]["diagnostics"]
    assert "'done'" in diagnostics
    assert "final" in diagnostics and "amended" in diagnostics


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (
            {"resourceType": "Patient", "telecom": [{"system": "telex", "value": "1"}]},
            "Patient.telecom[0].system",
        ),
        (
            {"resourceType": "Patient", "telecom": [{"system": "phone", "use": "cell"}]},
            "Patient.telecom[0].use",
        ),
        ({"resourceType": "Patient", "name": [{"use": "nick", "family": "X"}]}, "Patient.name[0].use"),
        ({"resourceType": "Patient", "address": [{"use": "holiday", "city": "X"}]}, "Patient.address[0].use"),
        ({"resourceType": "Patient", "address": [{"type": "mail", "city": "X"}]}, "Patient.address[0].type"),
        (
            {"resourceType": "Patient", "identifier": [{"use": "primary", "value": "1"}]},
            "Patient.identifier[0].use",
        ),
        (
            {
                "resourceType": "Patient",
                "text": {"status": "auto", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
            },
            "Patient.text.status",
        ),
        (observation(valueQuantity={"value": 1, "comparator": "~"}), "Observation.valueQuantity.comparator"),
        (
            {"resourceType": "Patient", "contact": [{"name": {"family": "X", "use": "nick"}}]},
            "Patient.contact[0].name.use",
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"text": "x"},
                "subject": {"reference": "Patient/1"},
                "dosageInstruction": [{"timing": {"repeat": {"period": 1, "periodUnit": "hour"}}}],
            },
            "MedicationRequest.dosageInstruction[0].timing.repeat.periodUnit",
        ),
    ],
)
def test_data_type_bindings_are_checked_wherever_the_type_appears(
    resource: dict[str, Any], expression: str
) -> None:
    assert found(rejected(resource)) == {("code-invalid", expression)}


def condition(**elements: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Condition", "subject": {"reference": "Patient/1"}}
    resource.update(elements)
    return resource


CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def test_a_codeable_concept_with_a_code_of_its_required_value_set_is_accepted() -> None:
    validate_resource(condition(clinicalStatus={"coding": [{"system": CLINICAL, "code": "active"}]}))


@pytest.mark.parametrize(
    "status",
    [
        {"coding": [{"system": CLINICAL, "code": "cured"}]},  # not a code of the value set
        {"coding": [{"system": "http://snomed.info/sct", "code": "55561003"}]},  # another system
        {"text": "active"},  # no coding at all
    ],
)
def test_a_codeable_concept_without_a_code_of_its_required_value_set_is_refused(
    status: dict[str, Any],
) -> None:
    assert found(rejected(condition(clinicalStatus=status))) == {("code-invalid", "Condition.clinicalStatus")}


# --- invariants ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2020-01-01", "2020-01-02"),
        ("2020-01-01T10:00:00+02:00", "2020-01-01T09:00:00Z"),  # 08:00Z before 09:00Z
        ("2020-01-01", "2020-01-01"),
        ("2019", "2020-01-01T00:00:00Z"),  # different precision, ordered by the year
    ],
)
def test_a_period_that_starts_before_it_ends_is_accepted(start: str, end: str) -> None:
    validate_resource(
        {"resourceType": "Patient", "name": [{"family": "X", "period": {"start": start, "end": end}}]}
    )


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2020-02-01", "2020-01-01"),
        ("2020-01-01T10:00:00Z", "2020-01-01T11:00:00+02:00"),  # 10:00Z after 09:00Z
        ("2023-06-21", "2023-06-21T06:20:00Z"),  # R4 cannot order them: per-1 fails
    ],
)
def test_a_period_that_ends_before_it_starts_is_refused_per_1(start: str, end: str) -> None:
    # Given a Period inside a data type inside the resource
    resource = {"resourceType": "Patient", "name": [{"family": "X", "period": {"start": start, "end": end}}]}

    # Then per-1 is reported at that Period
    outcome = rejected(resource)
    assert found(outcome) == {("invariant", "Patient.name[0].period")}
    assert "per-1" in outcome["issue"][0]["diagnostics"]


def test_a_range_whose_low_is_above_its_high_is_refused_rng_2() -> None:
    resource = observation(
        valueRange={"low": {"value": 10, "unit": "mg"}, "high": {"value": Decimal("9.5"), "unit": "mg"}}
    )
    assert found(rejected(resource)) == {("invariant", "Observation.valueRange")}


def test_a_quantity_code_without_a_system_is_refused_qty_3() -> None:
    outcome = rejected(observation(valueQuantity={"value": 80, "code": "kg"}))
    assert found(outcome) == {("invariant", "Observation.valueQuantity")}


def test_a_simple_quantity_cannot_have_a_comparator() -> None:
    resource = observation(valueRange={"low": {"value": 1, "comparator": "<"}})
    assert found(rejected(resource)) == {("structure", "Observation.valueRange.low.comparator")}


def test_a_reference_needs_a_reference_identifier_or_display() -> None:
    outcome = rejected(observation(subject={"type": "Patient"}))
    assert found(outcome) == {("invariant", "Observation.subject")}
    assert "ref-2" in outcome["issue"][0]["diagnostics"]


def test_a_local_reference_needs_a_contained_resource_ref_1() -> None:
    outcome = rejected(observation(subject={"reference": "#missing"}))
    assert found(outcome) == {("invariant", "Observation.subject.reference")}


@pytest.mark.parametrize(
    "extension",
    [
        {"url": "http://x.org/e"},  # neither
        {
            "url": "http://x.org/e",
            "valueString": "a",
            "extension": [{"url": "b", "valueString": "c"}],
        },  # both
    ],
)
def test_an_extension_has_a_value_or_extensions_but_not_both_ext_1(extension: dict[str, Any]) -> None:
    outcome = rejected({"resourceType": "Patient", "extension": [extension]})
    assert found(outcome) == {("invariant", "Patient.extension[0]")}
    assert "ext-1" in outcome["issue"][0]["diagnostics"]


def test_an_extension_needs_a_url() -> None:
    outcome = rejected({"resourceType": "Patient", "extension": [{"valueString": "a"}]})
    assert found(outcome) == {("required", "Patient.extension[0].url")}


def test_data_absent_reason_with_a_value_is_refused_obs_6() -> None:
    resource = observation(valueString="x", dataAbsentReason={"text": "unknown"})
    assert found(rejected(resource)) == {("invariant", "Observation")}


def test_a_value_beside_a_component_with_the_same_code_is_refused_obs_7() -> None:
    code = {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}
    resource = observation(
        code=code, valueQuantity={"value": 120}, component=[{"code": code, "valueQuantity": {"value": 120}}]
    )
    assert found(rejected(resource)) == {("invariant", "Observation.component[0]")}


def test_a_patient_contact_without_details_is_refused_pat_1() -> None:
    outcome = rejected({"resourceType": "Patient", "contact": [{"gender": "female"}]})
    assert found(outcome) == {("invariant", "Patient.contact[0]")}


def test_a_contained_resource_that_is_not_referred_to_is_refused_dom_3() -> None:
    resource = observation(contained=[{"resourceType": "Patient", "id": "p"}])
    assert found(rejected(resource)) == {("invariant", "Observation.contained[0]")}


def test_a_contained_resource_cannot_contain_resources_or_carry_a_version_dom_2_dom_4() -> None:
    inner = {"resourceType": "Patient", "id": "q"}
    resource = observation(
        contained=[{"resourceType": "Patient", "id": "p", "meta": {"versionId": "1"}, "contained": [inner]}],
        subject={"reference": "#p"},
    )
    outcome = rejected(resource)
    diagnostics = " ".join(i["diagnostics"] for i in issues_at(outcome, "Observation.contained[0]"))
    assert "dom-2" in diagnostics and "dom-4" in diagnostics


@pytest.mark.parametrize(
    "div",
    [
        "plain text",  # not XHTML
        '<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script>x</div>',
        '<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">x</p></div>',
        '<div xmlns="http://www.w3.org/1999/xhtml">  </div>',  # no content (txt-2)
        "<div>no namespace</div>",
        '<div xmlns="http://www.w3.org/1999/xhtml"><p>unclosed</div>',
    ],
)
def test_a_narrative_must_be_safe_well_formed_xhtml_with_content(div: str) -> None:
    outcome = rejected({"resourceType": "Patient", "text": {"status": "generated", "div": div}})
    assert {e for _, e in found(outcome)} == {"Patient.text.div"}


def test_a_narrative_may_use_html_entities_and_basic_formatting() -> None:
    div = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Dose&nbsp;&gt; 5 <b>mg</b><br/></p></div>'
    validate_resource({"resourceType": "Patient", "text": {"status": "generated", "div": div}})


@pytest.mark.parametrize(
    ("resource", "expression", "key"),
    [
        ({"resourceType": "Patient", "photo": [{"data": "AAAA"}]}, "Patient.photo[0]", "att-1"),
        ({"resourceType": "Patient", "telecom": [{"value": "555"}]}, "Patient.telecom[0]", "cpt-2"),
        (observation(valueRatio={"numerator": {"value": 1}}), "Observation.valueRatio", "rat-1"),
        (
            {
                "resourceType": "Organization",
                "name": "X",
                "telecom": [{"system": "phone", "value": "1", "use": "home"}],
            },
            "Organization.telecom[0]",
            "org-3",
        ),
        ({"resourceType": "Organization", "active": True}, "Organization", "org-1"),
        (
            {
                "resourceType": "AllergyIntolerance",
                "patient": {"reference": "Patient/1"},
                "code": {"text": "peanut"},
            },
            "AllergyIntolerance",
            "ait-1",
        ),
        (
            condition(
                abatementDateTime="2020-01-01",
                clinicalStatus={"coding": [{"system": CLINICAL, "code": "active"}]},
            ),
            "Condition",
            "con-4",
        ),
        (
            {
                "resourceType": "Appointment",
                "status": "booked",
                "participant": [{"status": "accepted", "actor": {"display": "Dr X"}}],
            },
            "Appointment",
            "app-3",
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"text": "x"},
                "subject": {"reference": "Patient/1"},
                "dosageInstruction": [{"timing": {"repeat": {"period": 1}}}],
            },
            "MedicationRequest.dosageInstruction[0].timing.repeat",
            "tim-2",
        ),
        (
            observation(referenceRange=[{"type": {"text": "normal"}}]),
            "Observation.referenceRange[0]",
            "obs-3",
        ),
        (
            {
                "resourceType": "FamilyMemberHistory",
                "status": "completed",
                "patient": {"reference": "Patient/1"},
                "relationship": {"text": "mother"},
                "ageAge": {"value": 60, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
                "bornDate": "1950",
            },
            "FamilyMemberHistory",
            "fhs-1",
        ),
        (
            {
                "resourceType": "MedicationDispense",
                "status": "completed",
                "medicationCodeableConcept": {"text": "x"},
                "whenPrepared": "2020-01-02T10:00:00Z",
                "whenHandedOver": "2020-01-01T10:00:00Z",
            },
            "MedicationDispense",
            "mdd-1",
        ),
        (
            {
                "resourceType": "List",
                "status": "current",
                "mode": "snapshot",
                "emptyReason": {"text": "none"},
                "entry": [{"item": {"reference": "Condition/1"}}],
            },
            "List",
            "lst-1",
        ),
        (
            observation(extension=[{"url": "http://x.org/age", "valueAge": {"value": 3}}]),
            "Observation.extension[0].valueAge",
            "age-1",
        ),
    ],
)
def test_more_r4_invariants_are_checked(resource: dict[str, Any], expression: str, key: str) -> None:
    outcome = rejected(resource)
    assert ("invariant", expression) in found(outcome)
    assert key in " ".join(i["diagnostics"] for i in issues_at(outcome, expression))


def test_every_invariant_is_registered_on_a_structure_that_exists() -> None:
    # A typo in a structure path would silently switch a check off.
    from ehr.fhir.validation.definitions import definitions
    from ehr.fhir.validation.structure import CHECKS

    missing = [path for path in CHECKS if not definitions().has_structure(path)]
    assert missing == []
