"""The shared FHIR examples and Synthea bundles: valid ones pass, invalid ones fail for their reason.

``fhir-examples/invalid/`` holds resources a validator must reject (see ../shared/data/PROVENANCE.md
for what each one breaks); ``*.expected-outcome.json`` is what the HL7 Java validator answers. Two
"valid" examples really break an R4 rule; they are listed in ``BREAK_R4`` with the rule, and
docs/validation.md explains them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from validation_helpers import EXAMPLES, SYNTHEA, found, load, outcome_of

from ehr.fhir.validation import validate_bundle, validate_resource

OUTCOME = ".expected-outcome.json"


def _names(folder: Path, *, outcomes: bool = False, leave_out: Iterable[str] = ()) -> list[Any]:
    """File names to parametrise over: samples, or the reference validator's outcomes."""
    if not folder.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason="shared samples not present"))]
    names = (p.name for p in folder.glob("*.json") if p.name.endswith(OUTCOME) == outcomes)
    return sorted(set(names) - set(leave_out))


# file -> (code, expression) issues the file was made to produce (PROVENANCE.md says which).
INTENDED: dict[str, set[tuple[str, str]]] = {
    # relative fullUrls ('Patient/1'): a fullUrl must be absolute
    "fhir-test-cases__bundle-duplicate-id.json": {
        ("value", "Bundle.entry[0].fullUrl"),
        ("value", "Bundle.entry[1].fullUrl"),
    },
    # start 2023-06-21 (a day), end 2023-06-21T06:20:00Z: per-1 cannot be shown in R4
    "fhir-test-cases__encounter-period.json": {("invariant", "Encounter.period")},
    "fhir-test-cases__json-comments.json": {("structure", "Patient.fhir_comments")},
    "fhir-test-cases__patient-id-bad-1.json": {("value", "Patient.id")},
    # reasonCode is an object, and 'completed' is not an R4 encounter status
    "fhir-test-cases__synthea.json": {
        ("structure", "Encounter.reasonCode"),
        ("code-invalid", "Encounter.status"),
    },
    "msft-fhir-server__Bundle-TypeMissing.json": {("required", "Bundle.type")},
    # the status is invalid, and code is missing as well
    "msft-fhir-server__ObservationWithInvalidStatus.json": {
        ("code-invalid", "Observation.status"),
        ("required", "Observation.code"),
    },
    "msft-fhir-server__ObservationWithNoCode.json": {("required", "Observation.code")},
    "msft-fhir-server__PatientMissingResourceType.json": {("invalid", "resourceType")},
    # end 2031-01-01T12:00:00 has no time zone: not an instant
    "msft-fhir-server__SubscriptionForObservationReferenceToPatient.json": {("value", "Subscription.end")},
    "us-core__diagnosticreport-cbc.json": {("required", "DiagnosticReport.text.div")},
}

# "Valid" examples that break an R4 rule, and the issues that say so (docs/validation.md).
BREAK_R4: dict[str, set[tuple[str, str]]] = {
    # fullUrl .../Observation/lri-gramstain1 for the resource Observation/gramstain1: R4 (bundle.html)
    # says the fullUrl SHALL NOT disagree with the resource's id.
    "fhir-r4-spec__diagnosticreport-example-lri.json": {
        ("invalid", f"Bundle.entry[{i}].fullUrl") for i in range(1, 17)
    },
    # two PUT entries with the same fullUrl and no meta.versionId: bdl-7.
    "msft-fhir-server__Bundle-Batch.json": {("invariant", "Bundle.entry[4].fullUrl")},
}

INTERNAL_WORDS = ("fhir.resources", "pydantic", "Traceback", "ValidationError", "FHIRAbstractModel")


@pytest.mark.parametrize("name", _names(EXAMPLES, leave_out=BREAK_R4))
def test_valid_example_is_accepted(name: str, examples_dir: Path) -> None:
    # Given an example that is valid R4
    resource = load(examples_dir / name)

    # When it is validated, Then nothing is raised
    validate_resource(resource)


@pytest.mark.parametrize("name", sorted(BREAK_R4))
def test_example_that_breaks_r4_is_rejected_for_that_rule(name: str, examples_dir: Path) -> None:
    # Given an example the shared set calls valid, but that breaks an R4 rule
    resource = load(examples_dir / name)

    # When it is validated
    outcome = outcome_of(lambda: validate_resource(resource))

    # Then exactly that rule is reported
    assert found(outcome) == BREAK_R4[name]


@pytest.mark.parametrize("name", _names(EXAMPLES / "invalid"))
def test_invalid_example_is_rejected_with_the_intended_issue(name: str, examples_dir: Path) -> None:
    # Given a file made to break a rule
    assert name in INTENDED, "a new invalid sample: add the issue it is meant to produce to INTENDED"
    resource = load(examples_dir / "invalid" / name)

    # When it is validated
    outcome = outcome_of(lambda: validate_resource(resource))

    # Then the intended issues are among what the client sees, with readable diagnostics
    assert INTENDED[name] <= found(outcome), outcome
    for issue in outcome["issue"]:
        assert issue["severity"] == "error"
        assert not any(word in issue["diagnostics"] for word in INTERNAL_WORDS), issue


@pytest.mark.parametrize("name", _names(EXAMPLES / "invalid", outcomes=True))
def test_every_error_of_the_reference_validator_is_located_too(name: str, examples_dir: Path) -> None:
    # Given what the HL7 Java validator answers for an invalid file (terminology lookups aside)
    expected = json.loads((examples_dir / "invalid" / name).read_text(encoding="utf-8"))
    errors = [i for i in expected["issue"] if i["severity"] == "error" and i["code"] not in ("not-found",)]
    resource = load(examples_dir / "invalid" / name.replace(OUTCOME, ".json"))

    # When we validate the same file
    outcome = outcome_of(lambda: validate_resource(resource))

    # Then each of its errors has an issue of ours at (or inside) the same element
    ours = [e for i in outcome["issue"] for e in i.get("expression", [])]
    for error in errors:
        where = error["expression"][0]
        assert any(e == where or e.startswith((where + ".", where + "[")) for e in ours), (where, ours)


@pytest.mark.parametrize("name", _names(SYNTHEA))
def test_synthea_transaction_is_accepted_for_the_server_base(name: str, synthea_dir: Path) -> None:
    # Given a Synthea patient (or hospital) transaction Bundle
    bundle = load(synthea_dir / name)
    assert bundle["type"] == "transaction"

    # When it is validated as a submission to the server base, Then it passes,
    validate_bundle(bundle)

    # And so does every entry's resource on its own
    for entry in bundle["entry"]:
        validate_resource(entry["resource"], expected_type=entry["request"]["url"].split("?")[0])


@pytest.mark.parametrize(
    "name",
    ["msft-fhir-server__Bundle-Transaction.json", "fwoa__createPatientPractitionerEncounterBundle.json"],
)
def test_example_transactions_are_accepted_for_the_server_base(name: str, examples_dir: Path) -> None:
    # Given a transaction with POST, conditional create, PUT, conditional PUT, DELETE, GET, an operation
    bundle = load(examples_dir / name)

    # When it is validated for the base, Then it passes
    validate_bundle(bundle)
