"""A JSON Patch that cannot be applied is a 422 that names the operation, never the stored data."""

from __future__ import annotations

import pytest

from ehr.fhir.outcome import OperationOutcomeError
from ehr.fhir.service import FhirService
from ehr.store.memory import InMemoryRecordStore

PATIENT = {"resourceType": "Patient", "name": [{"family": "Confidential", "given": ["Secret"]}]}


@pytest.fixture
def stored() -> tuple[FhirService, str]:
    service = FhirService(InMemoryRecordStore())
    result = service.create("t", "Patient", dict(PATIENT))
    assert result.stored is not None
    return service, result.stored.id


@pytest.mark.parametrize(
    ("operations", "says"),
    [
        (
            [{"op": "replace", "path": "/name/0/family/x", "value": "y"}],
            "operation 1 (replace /name/0/family/x)",
        ),
        (
            [{"op": "add", "path": "/gender", "value": "female"}, {"op": "add", "path": "/a/b", "value": 1}],
            "operation 2 (add /a/b)",
        ),
        (
            [{"op": "test", "path": "/name/0/family", "value": "Other"}],
            "operation 1 (test /name/0/family) failed",
        ),
        ([{"op": "remove", "path": "/birthDate"}], "operation 1 (remove /birthDate)"),
        ([{"op": "bogus", "path": "/a"}], "not a valid JSON Patch operation"),
    ],
)
def test_a_failed_patch_names_the_operation_and_leaks_nothing(
    stored: tuple[FhirService, str], operations: list[dict[str, object]], says: str
) -> None:
    service, patient_id = stored
    with pytest.raises(OperationOutcomeError) as error:
        service.patch("t", "Patient", patient_id, operations)
    assert error.value.status == 422
    text = error.value.issues[0].diagnostics
    assert says in text
    for leak in ("Confidential", "Secret", "<class", "str'>", "{'"):
        assert leak not in text
