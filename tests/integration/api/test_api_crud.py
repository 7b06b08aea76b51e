"""FHIR REST interactions on one resource: create, read, vread, update, delete, patch, Prefer.

What a client sees: status codes, Location/ETag/Last-Modified headers, OperationOutcome codes,
and what a later read returns.
"""

from __future__ import annotations

import json
from datetime import datetime
from email.utils import parsedate_to_datetime

import pytest
from api_support import PATCH_JSON, FhirClient, without_server_fields


def a_patient(system: str, family: str = "Testperson") -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": "1"}],
        "name": [{"family": family, "given": ["Tess"]}],
        "birthDate": "1984-02-29",
    }


# -- create --------------------------------------------------------------------------------------


def test_create_answers_201_with_location_etag_and_last_modified(fhir: FhirClient, system: str) -> None:
    # When a Patient is created
    reply = fhir.post("Patient", json_body=a_patient(system))

    # Then 201 with the version's Location, the weak ETag of version 1 and Last-Modified
    assert reply.status == 201, reply
    created = reply.json
    assert reply.header("Location") == f"{fhir.base_url}/Patient/{created['id']}/_history/1"
    assert reply.header("ETag") == 'W/"1"'
    last_updated = datetime.fromisoformat(created["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert parsedate_to_datetime(reply.header("Last-Modified")) == last_updated.replace(microsecond=0)
    assert reply.header("Content-Type").startswith("application/fhir+json")


def test_create_assigns_a_server_id_and_meta_whatever_id_the_client_sent(
    fhir: FhirClient, system: str
) -> None:
    # Given a Patient carrying a client-chosen id and version
    sent = {**a_patient(system), "id": "client-chosen", "meta": {"versionId": "7"}}

    # When it is created
    created = fhir.create(sent)

    # Then the server chose the id and set versionId 1 and lastUpdated
    assert created["id"] != "client-chosen"
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["lastUpdated"].endswith("Z")
    assert fhir.get("Patient/client-chosen").status == 404


def test_read_returns_what_was_created_with_its_etag(fhir: FhirClient, system: str) -> None:
    # Given a created Patient
    sent = a_patient(system)
    created = fhir.create(sent)

    # When it is read
    reply = fhir.get(f"Patient/{created['id']}")

    # Then the body is what was sent plus id and meta, with the version's ETag
    assert reply.status == 200, reply
    assert without_server_fields(reply.json) == sent
    assert reply.json["id"] == created["id"]
    assert reply.header("ETag") == 'W/"1"'
    assert reply.header("Last-Modified")


def test_read_of_an_unknown_id_is_404(fhir: FhirClient) -> None:
    reply = fhir.get("Patient/no-such-patient")
    assert (reply.status, reply.codes) == (404, {"not-found"})


def test_another_tenant_cannot_read_the_resource(fhir: FhirClient, fhir_b: FhirClient, system: str) -> None:
    # Given a Patient of clinic-a
    created = fhir.create(a_patient(system))

    # When clinic-b reads its id in its own base
    reply = fhir_b.get(f"Patient/{created['id']}")

    # Then it does not exist there
    assert (reply.status, reply.codes) == (404, {"not-found"})


# -- update and vread ----------------------------------------------------------------------------


def test_update_answers_200_with_the_next_version(fhir: FhirClient, system: str) -> None:
    # Given a created Patient
    created = fhir.create(a_patient(system))

    # When it is updated
    changed = {**a_patient(system, family="Renamed"), "id": created["id"]}
    reply = fhir.put(f"Patient/{created['id']}", json_body=changed)

    # Then version 2 is current
    assert reply.status == 200, reply
    assert reply.header("ETag") == 'W/"2"'
    assert reply.header("Location") == f"{fhir.base_url}/Patient/{created['id']}/_history/2"
    assert fhir.read("Patient", created["id"])["name"][0]["family"] == "Renamed"


def test_vread_returns_the_earlier_version_after_an_update(fhir: FhirClient, system: str) -> None:
    # Given a Patient updated once
    created = fhir.create(a_patient(system))
    fhir.put(f"Patient/{created['id']}", json_body={**a_patient(system, "Renamed"), "id": created["id"]})

    # When version 1 is read
    reply = fhir.get(f"Patient/{created['id']}/_history/1")

    # Then it is the resource as first created
    assert reply.status == 200, reply
    assert reply.json == created
    assert reply.header("ETag") == 'W/"1"'


def test_vread_of_a_version_that_does_not_exist_is_404(fhir: FhirClient, system: str) -> None:
    created = fhir.create(a_patient(system))
    reply = fhir.get(f"Patient/{created['id']}/_history/9")
    assert (reply.status, reply.codes) == (404, {"not-found"})


def test_update_with_a_new_client_id_creates_the_resource(fhir: FhirClient, uid: str, system: str) -> None:
    # When a Patient is PUT under an id nobody used
    resource_id = f"chosen-{uid}"
    reply = fhir.put(f"Patient/{resource_id}", json_body={**a_patient(system), "id": resource_id})

    # Then it is created with that id, as version 1
    assert reply.status == 201, reply
    assert reply.header("Location") == f"{fhir.base_url}/Patient/{resource_id}/_history/1"
    assert fhir.read("Patient", resource_id)["meta"]["versionId"] == "1"


def test_update_with_a_stale_if_match_is_refused_with_412(fhir: FhirClient, system: str) -> None:
    # Given a Patient already at version 2
    created = fhir.create(a_patient(system))
    fhir.put(f"Patient/{created['id']}", json_body={**a_patient(system, "Second"), "id": created["id"]})

    # When a client that read version 1 updates it with If-Match
    reply = fhir.put(
        f"Patient/{created['id']}",
        json_body={**a_patient(system, "Lost update"), "id": created["id"]},
        headers={"If-Match": 'W/"1"'},
    )

    # Then 412, and version 2 stays current
    assert (reply.status, reply.codes) == (412, {"conflict"})
    current = fhir.read("Patient", created["id"])
    assert (current["meta"]["versionId"], current["name"][0]["family"]) == ("2", "Second")


def test_update_with_the_current_if_match_succeeds(fhir: FhirClient, system: str) -> None:
    created = fhir.create(a_patient(system))
    reply = fhir.put(
        f"Patient/{created['id']}",
        json_body={**a_patient(system, "Checked"), "id": created["id"]},
        headers={"If-Match": 'W/"1"'},
    )
    assert (reply.status, reply.header("ETag")) == (200, 'W/"2"')


# -- delete --------------------------------------------------------------------------------------


def test_delete_answers_204_and_a_read_then_answers_410(fhir: FhirClient, system: str) -> None:
    # Given a created Patient
    created = fhir.create(a_patient(system))

    # When it is deleted
    reply = fhir.delete(f"Patient/{created['id']}")

    # Then 204 without a body, and reading it answers 410 Gone
    assert (reply.status, reply.body) == (204, b"")
    gone = fhir.get(f"Patient/{created['id']}")
    assert (gone.status, gone.codes) == (410, {"deleted"})


def test_history_keeps_every_version_after_a_delete(fhir: FhirClient, system: str) -> None:
    # Given a Patient created, updated, then deleted
    created = fhir.create(a_patient(system))
    fhir.put(f"Patient/{created['id']}", json_body={**a_patient(system, "Second"), "id": created["id"]})
    fhir.delete(f"Patient/{created['id']}")

    # When its history is read
    history = fhir.get(f"Patient/{created['id']}/_history").json

    # Then all three versions are there, newest first, and the old ones can still be read
    assert history["type"] == "history"
    assert [(e["request"]["method"], e["response"]["etag"]) for e in history["entry"]] == [
        ("DELETE", 'W/"3"'),
        ("PUT", 'W/"2"'),
        ("POST", 'W/"1"'),
    ]
    assert fhir.get(f"Patient/{created['id']}/_history/1").json == created
    assert fhir.get(f"Patient/{created['id']}/_history/3").status == 410


def test_delete_of_an_unknown_resource_is_404(fhir: FhirClient) -> None:
    reply = fhir.delete("Patient/never-existed")
    assert (reply.status, reply.codes) == (404, {"not-found"})


# -- patch ---------------------------------------------------------------------------------------


def test_patch_applies_a_json_patch(fhir: FhirClient, system: str) -> None:
    # Given a created Patient
    created = fhir.create(a_patient(system))

    # When a JSON Patch sets active and replaces the family name
    operations = [
        {"op": "add", "path": "/active", "value": True},
        {"op": "replace", "path": "/name/0/family", "value": "Patched"},
    ]
    reply = fhir.patch(
        f"Patient/{created['id']}", body=json.dumps(operations).encode(), content_type=PATCH_JSON
    )

    # Then version 2 holds both changes
    assert (reply.status, reply.header("ETag")) == (200, 'W/"2"'), reply
    current = fhir.read("Patient", created["id"])
    assert (current["active"], current["name"][0]["family"]) == (True, "Patched")


def test_patch_with_another_content_type_is_415(fhir: FhirClient, system: str) -> None:
    # Given a created Patient
    created = fhir.create(a_patient(system))

    # When a patch document is sent as application/fhir+json
    operations = [{"op": "add", "path": "/active", "value": True}]
    reply = fhir.patch(f"Patient/{created['id']}", body=json.dumps(operations).encode())

    # Then 415, and the resource is unchanged
    assert (reply.status, reply.codes) == (415, {"not-supported"})
    assert fhir.read("Patient", created["id"])["meta"]["versionId"] == "1"


def test_patch_that_changes_the_id_is_422(fhir: FhirClient, system: str) -> None:
    # Given a created Patient
    created = fhir.create(a_patient(system))

    # When a JSON Patch replaces its id
    operations = [{"op": "replace", "path": "/id", "value": "someone-else"}]
    reply = fhir.patch(
        f"Patient/{created['id']}", body=json.dumps(operations).encode(), content_type=PATCH_JSON
    )

    # Then 422, and the resource is unchanged
    assert (reply.status, reply.codes) == (422, {"processing"}), reply
    assert fhir.read("Patient", created["id"])["meta"]["versionId"] == "1"


# -- Prefer: return ------------------------------------------------------------------------------


def test_prefer_return_minimal_answers_without_a_body(fhir: FhirClient, system: str) -> None:
    reply = fhir.post("Patient", json_body=a_patient(system), headers={"Prefer": "return=minimal"})
    assert (reply.status, reply.body) == (201, b"")
    assert reply.header("Location").endswith("/_history/1")
    assert reply.header("ETag") == 'W/"1"'


def test_prefer_return_representation_answers_with_the_stored_resource(fhir: FhirClient, system: str) -> None:
    reply = fhir.post("Patient", json_body=a_patient(system), headers={"Prefer": "return=representation"})
    assert reply.status == 201
    assert reply.json == fhir.read("Patient", reply.json["id"])


def test_prefer_return_operation_outcome_answers_with_an_outcome(fhir: FhirClient, system: str) -> None:
    # When an update asks for an OperationOutcome
    created = fhir.create(a_patient(system))
    reply = fhir.put(
        f"Patient/{created['id']}",
        json_body={**a_patient(system, "Outcome"), "id": created["id"]},
        headers={"Prefer": "return=OperationOutcome"},
    )

    # Then the body is an informational OperationOutcome, and the headers still name the version
    assert reply.status == 200
    assert [i["severity"] for i in reply.issues] == ["information"]
    assert reply.header("ETag") == 'W/"2"'


# -- unknown types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "Spaceship"), ("GET", "Spaceship/1"), ("POST", "Spaceship"), ("GET", "patient/1")],
)
def test_an_unknown_resource_type_is_404(fhir: FhirClient, method: str, path: str) -> None:
    body = {"resourceType": "Spaceship"} if method == "POST" else None
    reply = fhir.request(method, path, json_body=body)
    assert (reply.status, reply.codes) == (404, {"not-found"})
