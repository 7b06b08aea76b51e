"""Helpers for the validation tests: the external samples and the outcome a client would see."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ehr.fhir.outcome import OperationOutcomeError
from ehr.fhir.validation import parse_json

REPO_ROOT = Path(__file__).resolve().parents[3]
# External samples live beside the repository (../shared/data) and are used as they are.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
EXAMPLES = SHARED_DATA / "fhir-examples"
SYNTHEA = SHARED_DATA / "synthea"


def load(path: Path) -> Any:
    return parse_json(path.read_bytes())


def outcome_of(validate: Callable[[], None]) -> dict[str, Any]:
    """The OperationOutcome a client would see; fails the test if validation passed."""
    with pytest.raises(OperationOutcomeError) as caught:
        validate()
    assert caught.value.status == 400
    return caught.value.to_fhir()


def issues_at(outcome: dict[str, Any], expression: str) -> list[dict[str, Any]]:
    return [i for i in outcome["issue"] if expression in i.get("expression", [])]


def found(outcome: dict[str, Any]) -> set[tuple[str, str]]:
    """(code, expression) of every issue."""
    return {(i["code"], e) for i in outcome["issue"] for e in i.get("expression", [""])}
