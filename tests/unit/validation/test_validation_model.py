"""The R4B model's errors, translated to FHIR paths (the walk usually reports them first)."""

from __future__ import annotations

from decimal import Decimal

from ehr.fhir.validation.model import expression_for, model_issues


def test_pydantic_locations_become_fhir_paths() -> None:
    assert expression_for("Patient", ("name", 0, "period", "start")) == "Patient.name[0].period.start"
    assert expression_for("Observation", ("valueQuantity", "value")) == "Observation.valueQuantity.value"
    # union tags and validator names are not elements; _name is the primitive's extension
    assert expression_for("Patient", ("fhir_comments", "list[str]", 1)) == "Patient.fhir_comments[1]"
    assert expression_for("Patient", ("_birthDate", "extension", 0)) == "Patient.birthDate.extension[0]"


def test_model_errors_are_issues_at_the_element_including_list_indexes_and_choice_names() -> None:
    # Given an Observation whose second component has a malformed dateTime
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "component": [{"code": {"text": "a"}}, {"code": {"text": "b"}, "valueDateTime": "2020-13-01"}],
    }

    # When only the model judges it (nothing reported by the walk)
    issues = list(model_issues(resource, "Observation", "Observation", set()))

    # Then the issue names the element the way a client wrote it
    assert [(i.code, i.expression) for i in issues] == [
        ("value", ("Observation.component[1].valueDateTime",))
    ]
    assert "pydantic" not in issues[0].diagnostics and "fhir.resources" not in issues[0].diagnostics


def test_bundle_entries_are_judged_in_place_and_reported_problems_are_not_repeated() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "birthDate": "1974-13-01"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {}, "issued": "2020"}},
        ],
    }
    issues = list(model_issues(bundle, "Bundle", "Bundle", {"Bundle.entry[1].resource.issued"}))
    assert [i.expression for i in issues] == [("Bundle.entry[0].resource.birthDate",)]


def test_the_model_works_on_a_copy_and_accepts_decimals() -> None:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {},
        "valueQuantity": {"value": Decimal("1.50")},
    }
    assert list(model_issues(resource, "Observation", "Observation", set())) == []
    assert str(resource["valueQuantity"]["value"]) == "1.50"
