"""validate_bundle: a batch or transaction POSTed to the server base, and R4's Bundle invariants."""

from __future__ import annotations

from typing import Any

import pytest
from validation_helpers import found, outcome_of

from ehr.fhir.validation import validate_bundle, validate_resource

PATIENT_URN = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
OBSERVATION_URN = "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059"


def patient_entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "fullUrl": PATIENT_URN,
        "resource": {"resourceType": "Patient", "name": [{"family": "Chalmers"}]},
        "request": {"method": "POST", "url": "Patient"},
    }
    entry.update(overrides)
    return entry


def observation_entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "fullUrl": OBSERVATION_URN,
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "Weight"},
            "subject": {"reference": PATIENT_URN},
        },
        "request": {"method": "POST", "url": "Observation"},
    }
    entry.update(overrides)
    return entry


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def rejected(bundle: Any) -> dict[str, Any]:
    return outcome_of(lambda: validate_bundle(bundle))


def test_a_transaction_with_internal_references_is_accepted() -> None:
    validate_bundle(transaction(patient_entry(), observation_entry()))


def test_a_batch_with_updates_deletes_and_reads_is_accepted() -> None:
    bundle = transaction(
        patient_entry(
            fullUrl="http://example.org/fhir/Patient/123",
            resource={"resourceType": "Patient", "id": "123"},
            request={"method": "PUT", "url": "Patient/123"},
        ),
        {"request": {"method": "DELETE", "url": "Patient/234"}},
        {"request": {"method": "GET", "url": "Patient?name=peter"}},
        {
            "request": {"method": "PUT", "url": "Patient?identifier=x|1"},
            "resource": {"resourceType": "Patient"},
        },
        kind="batch",
    )
    validate_bundle(bundle)


@pytest.mark.parametrize("kind", ["collection", "searchset", "document", "message", "history"])
def test_only_batch_and_transaction_can_be_submitted_to_the_base(kind: str) -> None:
    outcome = rejected({"resourceType": "Bundle", "type": kind})
    assert ("invalid", "Bundle.type") in found(outcome)


def test_an_unknown_bundle_type_is_refused() -> None:
    outcome = rejected({"resourceType": "Bundle", "type": "bulk"})
    assert ("code-invalid", "Bundle.type") in found(outcome)


def test_a_bundle_without_a_type_is_refused() -> None:
    assert found(rejected({"resourceType": "Bundle"})) == {("required", "Bundle.type")}


def test_a_body_that_is_not_a_bundle_is_refused() -> None:
    assert found(rejected({"resourceType": "Patient"})) == {("invalid", "resourceType")}


def test_an_entry_needs_a_request_with_a_valid_method_and_a_url() -> None:
    # Given three entries: no request, an unknown method, no url
    bundle = transaction(
        patient_entry(request=None),
        observation_entry(request={"method": "FETCH", "url": "Observation"}),
        {"request": {"method": "DELETE"}},
    )
    bundle["entry"][0].pop("request")

    # Then each is reported at its own place
    assert found(rejected(bundle)) == {
        ("invariant", "Bundle.entry[0].request"),
        ("code-invalid", "Bundle.entry[1].request.method"),
        ("required", "Bundle.entry[2].request.url"),
    }


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_a_create_update_or_patch_needs_a_resource(method: str) -> None:
    bundle = transaction({"fullUrl": PATIENT_URN, "request": {"method": method, "url": "Patient/1"}})
    assert found(rejected(bundle)) == {("required", "Bundle.entry[0].resource")}


def test_the_resource_must_be_of_the_type_the_request_url_names() -> None:
    bundle = transaction(patient_entry(request={"method": "POST", "url": "Observation"}))
    assert found(rejected(bundle)) == {("invalid", "Bundle.entry[0].resource")}


def test_an_update_must_carry_the_id_of_its_url() -> None:
    bundle = transaction(
        patient_entry(
            fullUrl="http://example.org/fhir/Patient/2",
            resource={"resourceType": "Patient", "id": "2"},
            request={"method": "PUT", "url": "Patient/1"},
        ),
        patient_entry(fullUrl=OBSERVATION_URN, request={"method": "PUT", "url": "Patient/3"}),
    )
    assert found(rejected(bundle)) == {
        ("invalid", "Bundle.entry[0].resource.id"),
        ("required", "Bundle.entry[1].resource.id"),
    }


def test_a_request_for_an_unknown_type_is_refused() -> None:
    bundle = transaction({"request": {"method": "GET", "url": "Nonsense/1"}})
    assert found(rejected(bundle)) == {("invalid", "Bundle.entry[0].request.url")}


def test_full_urls_must_be_unique_bdl_7() -> None:
    bundle = transaction(patient_entry(), observation_entry(fullUrl=PATIENT_URN))
    outcome = rejected(bundle)
    assert found(outcome) == {("invariant", "Bundle.entry[1].fullUrl")}
    assert "bdl-7" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "full_url",
    ["urn:uuid:not-a-uuid", "urn:uuid:61ebe359-bfdc-4613-8bf2", "Patient/1", "urn:oid:1.2.x"],
)
def test_a_full_url_must_be_absolute_and_well_formed(full_url: str) -> None:
    bundle = transaction(patient_entry(fullUrl=full_url), observation_entry())
    bundle["entry"][1]["resource"].pop("subject")
    assert found(rejected(bundle)) == {("value", "Bundle.entry[0].fullUrl")}


def test_a_full_url_cannot_be_version_specific_bdl_8() -> None:
    bundle = transaction(
        patient_entry(
            fullUrl="http://example.org/fhir/Patient/1/_history/2",
            resource={"resourceType": "Patient", "id": "1"},
            request={"method": "PUT", "url": "Patient/1"},
        )
    )
    assert ("invariant", "Bundle.entry[0].fullUrl") in found(rejected(bundle))


def test_a_transaction_reference_to_no_entry_is_refused() -> None:
    bundle = transaction(observation_entry())
    assert found(rejected(bundle)) == {("invalid", "Bundle.entry[0].resource.subject.reference")}


def test_entries_of_a_transaction_cannot_carry_a_response_bdl_4() -> None:
    bundle = transaction(patient_entry(response={"status": "201 Created"}))
    assert found(rejected(bundle)) == {("invariant", "Bundle.entry[0].response")}


def test_total_is_only_for_searchset_and_history_bdl_1() -> None:
    bundle = transaction(patient_entry())
    bundle["total"] = 1
    assert found(rejected(bundle)) == {("invariant", "Bundle.total")}


def test_entry_search_is_only_for_searchset_bdl_2() -> None:
    bundle = transaction(patient_entry(search={"mode": "match"}))
    assert found(rejected(bundle)) == {("invariant", "Bundle.entry[0].search")}


def test_each_entry_resource_is_validated_at_its_place() -> None:
    # Given two entries whose resources break rules
    bundle = transaction(
        patient_entry(resource={"resourceType": "Patient", "gender": "M"}),
        observation_entry(resource={"resourceType": "Observation", "status": "final"}),
    )
    bundle["entry"][1]["request"]["url"] = "Observation"

    # Then the issues are under Bundle.entry[i].resource
    assert found(rejected(bundle)) == {
        ("code-invalid", "Bundle.entry[0].resource.gender"),
        ("required", "Bundle.entry[1].resource.code"),
    }


def test_an_entry_resource_of_unknown_type_is_refused_at_its_place() -> None:
    bundle = transaction(patient_entry(resource={"resourceType": "Nope"}))
    assert ("invalid", "Bundle.entry[0].resource") in found(rejected(bundle))


def test_a_collection_is_valid_as_a_resource_but_not_as_a_submission() -> None:
    # Given a collection Bundle (entries without requests)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": PATIENT_URN, "resource": {"resourceType": "Patient"}}],
    }

    # Then it can be stored as a resource, but not processed as a batch
    validate_resource(bundle)
    assert found(rejected(bundle)) == {("invalid", "Bundle.type")}


def test_document_bundle_rules_bdl_9_10_11() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [{"fullUrl": PATIENT_URN, "resource": {"resourceType": "Patient"}}],
    }
    outcome = outcome_of(lambda: validate_resource(bundle))
    text = " ".join(i["diagnostics"] for i in outcome["issue"])
    assert "bdl-9" in text and "bdl-10" in text and "bdl-11" in text
