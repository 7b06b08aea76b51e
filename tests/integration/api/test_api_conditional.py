"""Conditional interactions: create with If-None-Exist, update and delete by search criteria."""

from __future__ import annotations

from api_support import FhirClient, match_ids


def a_patient(system: str, value: str, family: str = "Conditional") -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value}],
        "name": [{"family": family}],
    }


def ids_with(fhir: FhirClient, system: str, value: str) -> list[str]:
    return match_ids(fhir.search("Patient", {"identifier": f"{system}|{value}"}))


# -- If-None-Exist -------------------------------------------------------------------------------


def test_conditional_create_without_a_match_creates(fhir: FhirClient, system: str) -> None:
    # When a Patient is created if none has its identifier yet
    reply = fhir.post(
        "Patient", json_body=a_patient(system, "a"), headers={"If-None-Exist": f"identifier={system}|a"}
    )

    # Then it is created
    assert reply.status == 201, reply
    assert ids_with(fhir, system, "a") == [reply.json["id"]]


def test_conditional_create_with_one_match_answers_200_with_the_existing(
    fhir: FhirClient, system: str
) -> None:
    # Given a Patient with the identifier
    existing = fhir.create(a_patient(system, "a"))

    # When the same Patient is created if none exists
    reply = fhir.post(
        "Patient",
        json_body=a_patient(system, "a", family="Duplicate"),
        headers={"If-None-Exist": f"identifier={system}|a"},
    )

    # Then 200 with the existing resource, and nothing new is stored
    assert reply.status == 200, reply
    assert reply.json == existing
    assert reply.header("Location") == f"{fhir.base_url}/Patient/{existing['id']}/_history/1"
    assert ids_with(fhir, system, "a") == [existing["id"]]


def test_conditional_create_with_two_matches_is_412(fhir: FhirClient, system: str) -> None:
    # Given two Patients with the same identifier
    first, second = fhir.create(a_patient(system, "a")), fhir.create(a_patient(system, "a"))

    # When a third is created if none exists
    reply = fhir.post(
        "Patient", json_body=a_patient(system, "a"), headers={"If-None-Exist": f"identifier={system}|a"}
    )

    # Then 412, and still only the two exist
    assert reply.status == 412, reply
    assert sorted(ids_with(fhir, system, "a")) == sorted([first["id"], second["id"]])


def test_conditional_create_with_an_unknown_parameter_is_400(fhir: FhirClient, system: str) -> None:
    reply = fhir.post("Patient", json_body=a_patient(system, "a"), headers={"If-None-Exist": "shoe-size=42"})
    assert (reply.status, reply.expressions) == (400, {"If-None-Exist"})
    assert ids_with(fhir, system, "a") == []


# -- conditional update --------------------------------------------------------------------------


def test_conditional_update_without_a_match_creates(fhir: FhirClient, system: str) -> None:
    # When a Patient is PUT by identifier and none has it
    reply = fhir.put(f"Patient?identifier={system}|c", json_body=a_patient(system, "c"))

    # Then it is created
    assert reply.status == 201, reply
    assert ids_with(fhir, system, "c") == [reply.json["id"]]


def test_conditional_update_with_one_match_updates_it(fhir: FhirClient, system: str) -> None:
    # Given a Patient with the identifier
    existing = fhir.create(a_patient(system, "c"))

    # When a Patient is PUT by that identifier
    reply = fhir.put(f"Patient?identifier={system}|c", json_body=a_patient(system, "c", family="Updated"))

    # Then the existing one gets version 2
    assert reply.status == 200, reply
    assert (reply.json["id"], reply.header("ETag")) == (existing["id"], 'W/"2"')
    assert fhir.read("Patient", existing["id"])["name"][0]["family"] == "Updated"
    assert ids_with(fhir, system, "c") == [existing["id"]]


def test_conditional_update_with_two_matches_is_412(fhir: FhirClient, system: str) -> None:
    # Given two Patients with the identifier
    first, second = fhir.create(a_patient(system, "c")), fhir.create(a_patient(system, "c"))

    # When a Patient is PUT by that identifier
    reply = fhir.put(f"Patient?identifier={system}|c", json_body=a_patient(system, "c", family="Ambiguous"))

    # Then 412, and neither changed
    assert reply.status == 412, reply
    for created in (first, second):
        assert fhir.read("Patient", created["id"])["meta"]["versionId"] == "1"


# -- conditional delete --------------------------------------------------------------------------


def test_conditional_delete_with_one_match_deletes_it(fhir: FhirClient, system: str) -> None:
    # Given a Patient with the identifier
    existing = fhir.create(a_patient(system, "d"))

    # When Patients with that identifier are deleted
    reply = fhir.delete(f"Patient?identifier={system}|d")

    # Then it is gone
    assert reply.status == 204, reply
    assert fhir.get(f"Patient/{existing['id']}").status == 410
    assert ids_with(fhir, system, "d") == []


def test_conditional_delete_without_a_match_succeeds_doing_nothing(fhir: FhirClient, system: str) -> None:
    reply = fhir.delete(f"Patient?identifier={system}|nobody")
    assert reply.status in (200, 204), reply


def test_conditional_delete_with_two_matches_is_412(fhir: FhirClient, system: str) -> None:
    # Given two Patients with the identifier (the server deletes one match only)
    first, second = fhir.create(a_patient(system, "d")), fhir.create(a_patient(system, "d"))

    # When Patients with that identifier are deleted
    reply = fhir.delete(f"Patient?identifier={system}|d")

    # Then 412, and both remain
    assert reply.status == 412, reply
    assert sorted(ids_with(fhir, system, "d")) == sorted([first["id"], second["id"]])
