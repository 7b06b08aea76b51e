"""The shared external samples (../shared/data), used as they are: every FHIR example round-trips
through the API, and every Synthea bundle loads as a transaction and comes back by $everything.

This module writes the most data, so it is the last of the API suite (file order).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_support import SHARED_DATA, FhirClient, Reply, digits, loads, location_ref, without_server_fields

from ehr.documents.service import SHA256_EXTENSION, VERIFICATION_EXTENSION

EXAMPLES = SHARED_DATA / "fhir-examples"
SYNTHEA = SHARED_DATA / "synthea"


def names(folder: Path) -> list[Any]:
    if not folder.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"shared samples not present: {folder}"))]
    return sorted(p.name for p in folder.glob("*.json"))


def is_submission(document: dict) -> bool:
    return document["resourceType"] == "Bundle" and document.get("type") in ("transaction", "batch")


# Examples the server must refuse: (status, 0 for any 4xx; expression the outcome points at, if any).
# Each was checked against the R4 text (see ../shared/data/PROVENANCE.md for the files).
REFUSED: dict[str, tuple[int, str | None]] = {
    # R4 bundle.html: a fullUrl "SHALL NOT disagree with the id in the resource"; here entry 1's
    # fullUrl ends Observation/lri-gramstain1 while the resource is Observation/gramstain1.
    "fhir-r4-spec__diagnosticreport-example-lri.json": (400, "Bundle.entry[1].fullUrl"),
    # bdl-7: entries 2 and 4 share the fullUrl .../Patient/123 without distinct meta.versionId.
    "msft-fhir-server__Bundle-Batch.json": (400, "Bundle.entry[4].fullUrl"),
    # Valid R4, but it cannot commit as one unit here: entry 4 updates Patient/123a with ifMatch
    # W/"2" (no such version), entry 7 runs the ValueSet/$lookup operation; a transaction fails whole.
    "msft-fhir-server__Bundle-Transaction.json": (0, "Bundle.entry[7].request.url"),
    # Valid R4, but AuditEvents are the server's own append-only record (DESIGN.md): clients
    # cannot create them.
    "fhir-test-cases__auditevent-example.json": (405, None),
    # Valid R4, but its rest-hook endpoint (https://biliwatch.com/…) is not on the tenant's
    # allow-list (docs/subscriptions.md): the platform only calls endpoints an administrator
    # registered for the tenant.
    "fhir-test-cases__subscription-example.json": (422, "Subscription.channel.endpoint"),
}


def sha256(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def with_stored_attachments(resource: dict[str, Any], resource_id: str) -> dict[str, Any]:
    """A DocumentReference with inline data as the server keeps it (docs/documents.md): the bytes
    move to the document store; the attachment gets the content URL, size, hashes; docStatus final."""
    if resource.get("resourceType") != "DocumentReference":
        return resource
    contents = []
    for content in resource.get("content", []):
        attachment = dict(content["attachment"])
        if "data" in attachment:
            raw = base64.b64decode(attachment.pop("data"))
            attachment.update(
                url=f"Binary/{resource_id}",
                size=len(raw),
                hash=base64.b64encode(hashlib.sha1(raw, usedforsecurity=False).digest()).decode(),
                extension=[
                    {"url": SHA256_EXTENSION, "valueBase64Binary": base64.b64encode(sha256(raw)).decode()},
                    {"url": VERIFICATION_EXTENSION, "valueString": "verified-inline"},
                ],
            )
            resource = {**resource, "docStatus": "final"}
        contents.append({**content, "attachment": attachment})
    return {**resource, "content": contents}


def rewritten(resource: Any, references: dict[str, str]) -> Any:
    """``resource`` with references to other entries (by fullUrl) replaced by where they landed."""
    if isinstance(resource, dict):
        return {
            k: references.get(v, v) if k == "reference" and isinstance(v, str) else rewritten(v, references)
            for k, v in resource.items()
        }
    if isinstance(resource, list):
        return [rewritten(v, references) for v in resource]
    return resource


@pytest.mark.parametrize("name", [n for n in names(EXAMPLES) if n not in REFUSED])
def test_fhir_example_round_trips(fhir: FhirClient, name: str) -> None:
    # Given an example exactly as published
    raw = (EXAMPLES / name).read_bytes()
    document = loads(raw)

    if is_submission(document):
        # When a transaction/batch is posted to the base
        reply = fhir.post(body=raw)
        assert reply.status == 200, reply
        responses = [e["response"] for e in reply.json["entry"]]
        assert [r["status"][:3] for r in responses] == ["201"] * len(document["entry"])
        # Then every entry reads back as sent, its references to other entries rewritten
        landed = {
            e["fullUrl"]: location_ref(r["location"])
            for e, r in zip(document["entry"], responses, strict=True)
            if "fullUrl" in e
        }
        for entry, response in zip(document["entry"], responses, strict=True):
            stored = fhir.read(*location_ref(response["location"]).split("/"))
            expected = rewritten(without_server_fields(entry["resource"]), landed)
            assert digits(without_server_fields(stored)) == digits(expected)
    else:
        # When it is created as a resource of its type
        reply = fhir.post(document["resourceType"], body=raw)
        assert reply.status == 201, reply
        # Then a read gives back what was sent, digit for digit, apart from id and meta
        stored = fhir.read(document["resourceType"], reply.json["id"])
        expected = with_stored_attachments(without_server_fields(document), reply.json["id"])
        assert digits(without_server_fields(stored)) == digits(expected)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_fhir_example_that_breaks_a_rule_is_refused(fhir: FhirClient, name: str) -> None:
    if not (EXAMPLES / name).is_file():
        pytest.skip(f"shared sample not present: {name}")
    raw = (EXAMPLES / name).read_bytes()
    document = loads(raw)
    status, expression = REFUSED[name]

    # When it is sent as a client would
    reply = fhir.post(body=raw) if is_submission(document) else fhir.post(document["resourceType"], body=raw)

    # Then it is refused with an OperationOutcome pointing at the rule it breaks
    assert 400 <= reply.status < 500 and reply.status == (status or reply.status), reply
    assert expression is None or expression in reply.expressions, reply
    # And nothing it carried was stored
    assert fhir.get("Patient/123").status == 404
    assert fhir.search("Patient", {"identifier": "http:/example.org/fhir/ids|456456"}).get("entry") is None


# -- Synthea -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def post_synthea(fhir: FhirClient) -> Callable[[str], Reply]:
    """Posts a Synthea bundle once for the module, whichever test asks first."""
    replies: dict[str, Reply] = {}

    def post(name: str) -> Reply:
        if name not in replies:
            replies[name] = fhir.post(body=(SYNTHEA / name).read_bytes())
        return replies[name]

    return post


@pytest.mark.parametrize("name", names(SYNTHEA))
def test_synthea_bundle_posts_as_a_transaction(post_synthea: Callable[[str], Reply], name: str) -> None:
    # When a Synthea transaction is posted to the base
    reply = post_synthea(name)

    # Then it commits, and every entry was created
    assert reply.status == 200, reply
    assert reply.json["type"] == "transaction-response"
    entries = loads((SYNTHEA / name).read_bytes())["entry"]
    assert [e["response"]["status"][:3] for e in reply.json["entry"]] == ["201"] * len(entries)


@pytest.mark.parametrize("name", [n for n in names(SYNTHEA) if not (n and "hospitalInformation" in n)])
def test_everything_returns_each_resource_of_a_synthea_patient(
    fhir: FhirClient, post_synthea: Callable[[str], Reply], name: str
) -> None:
    # Given a Synthea patient loaded as a transaction
    reply = post_synthea(name)
    assert reply.status == 200, reply
    loaded = {location_ref(e["response"]["location"]) for e in reply.json["entry"]}
    patient = next(ref for ref in loaded if ref.startswith("Patient/"))

    # When the patient's $everything is read, following next links
    pages = fhir.pages(fhir.get(f"{patient}/$everything"))

    # Then every resource of the bundle is there
    returned = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for p in pages for e in p.get("entry", [])
    }
    assert loaded - returned == set()
