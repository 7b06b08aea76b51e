"""Bad input is refused with the right status and an OperationOutcome that says where; it is
never a 500, and nothing of a refused write is stored."""

from __future__ import annotations

import json

import pytest
from api_support import FhirClient, match_ids

BIG_BODY_BYTES = 6 * 1024 * 1024 + 1024  # over Lambda's 6 MB synchronous payload


def a_patient(system: str, **extra: object) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": system, "value": "1"}], **extra}


def stored_with(fhir: FhirClient, system: str) -> list[str]:
    return match_ids(fhir.search("Patient", {"identifier": f"{system}|"}))


# -- refused bodies ------------------------------------------------------------------------------


def test_invalid_json_is_400(fhir: FhirClient, system: str) -> None:
    body = json.dumps(a_patient(system)).encode()[:-1]  # the closing brace is missing
    reply = fhir.post("Patient", body=body)
    assert (reply.status, reply.codes) == (400, {"invalid"})
    assert stored_with(fhir, system) == []


def test_a_resource_type_other_than_the_url_is_400(fhir: FhirClient, system: str) -> None:
    reply = fhir.post("Practitioner", json_body=a_patient(system))
    assert (reply.status, reply.expressions) == (400, {"resourceType"})
    assert stored_with(fhir, system) == []


def test_an_unknown_element_is_400_at_that_element(fhir: FhirClient, system: str) -> None:
    reply = fhir.post("Patient", json_body=a_patient(system, favouriteColour="green"))
    assert (reply.status, reply.codes, reply.expressions) == (400, {"structure"}, {"Patient.favouriteColour"})
    assert stored_with(fhir, system) == []


def test_an_invalid_date_is_400_at_that_element(fhir: FhirClient, system: str) -> None:
    reply = fhir.post("Patient", json_body=a_patient(system, birthDate="1984-02-30"))
    assert (reply.status, reply.codes, reply.expressions) == (400, {"value"}, {"Patient.birthDate"})
    assert stored_with(fhir, system) == []


def test_a_code_outside_a_required_binding_is_400(fhir: FhirClient, system: str) -> None:
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": system, "value": "1"}],
        "status": "bogus",
        "code": {"text": "weight"},
    }
    reply = fhir.post("Observation", json_body=observation)
    assert (reply.status, reply.codes, reply.expressions) == (400, {"code-invalid"}, {"Observation.status"})
    assert match_ids(fhir.search("Observation", {"identifier": f"{system}|"})) == []


def test_every_problem_of_a_body_is_reported_at_once(fhir: FhirClient, system: str) -> None:
    reply = fhir.post("Patient", json_body=a_patient(system, gender="robot", birthDate="yesterday"))
    assert reply.status == 400
    assert {"Patient.gender", "Patient.birthDate"} <= reply.expressions


def test_an_update_whose_body_has_another_id_is_400(fhir: FhirClient, system: str) -> None:
    # Given a stored Patient
    created = fhir.create(a_patient(system))

    # When it is updated with a body naming another id
    reply = fhir.put(f"Patient/{created['id']}", json_body={**a_patient(system, active=True), "id": "other"})

    # Then 400 at Patient.id, and the stored version is unchanged
    assert (reply.status, reply.expressions) == (400, {"Patient.id"})
    assert fhir.read("Patient", created["id"]) == created


def test_an_invalid_update_leaves_the_resource_unchanged(fhir: FhirClient, system: str) -> None:
    created = fhir.create(a_patient(system))
    reply = fhir.put(
        f"Patient/{created['id']}", json_body={**a_patient(system, gender="robot"), "id": created["id"]}
    )
    assert (reply.status, reply.expressions) == (400, {"Patient.gender"})
    assert fhir.read("Patient", created["id"]) == created


def test_a_body_over_6_mb_is_413(fhir: FhirClient, system: str) -> None:
    # Given a Patient whose narrative makes the body larger than 6 MB
    div = '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * BIG_BODY_BYTES + "</div>"
    body = json.dumps(a_patient(system, text={"status": "generated", "div": div})).encode()

    # When it is created
    reply = fhir.post("Patient", body=body)

    # Then 413, and nothing is stored
    assert (reply.status, reply.codes) == (413, {"too-long"})
    assert stored_with(fhir, system) == []


def test_an_empty_body_is_400(fhir: FhirClient) -> None:
    reply = fhir.post("Patient", body=b"")
    assert (reply.status, reply.codes) == (400, {"invalid"})


def test_a_body_that_is_not_fhir_json_is_415(fhir: FhirClient, system: str) -> None:
    reply = fhir.post("Patient", body=json.dumps(a_patient(system)).encode(), content_type="text/plain")
    assert (reply.status, reply.codes) == (415, {"not-supported"})
    assert stored_with(fhir, system) == []


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"Patient"',
        b"null",
        b'{"resourceType": 5}',
        b'{"resourceType": "Patient", "name": "not a list"}',
        b'{"resourceType": "Patient", "active": "yes"}',
        b'{"resourceType": "Patient", "active": true, "active": false}',
        b'{"resourceType": "Patient", "multipleBirthInteger": NaN}',
        b'{"resourceType": "Patient", "name": [{"family": "\xff\xfe"}]}',
        b'{"resourceType": "Patient", "contained": [{"resourceType": "Patient", "contained": []}]}',
        b'{"resourceType": "Patient", "extension": ' + b"[{" * 400 + b"}]" * 400 + b"}",
        b'{"resourceType": "Patient", "birthDate": 1984}',
        b"\xef\xbb\xbf{",
    ],
    ids=[
        "array",
        "string",
        "null",
        "numeric-type",
        "object-for-list",
        "string-for-boolean",
        "duplicate-key",
        "nan",
        "not-utf8",
        "nested-contained",
        "deep-nesting",
        "number-for-date",
        "bom-then-garbage",
    ],
)
def test_malformed_bodies_are_400_never_500(fhir: FhirClient, body: bytes) -> None:
    reply = fhir.post("Patient", body=body)
    assert reply.status == 400, reply
    assert reply.json["resourceType"] == "OperationOutcome"


# -- malformed search parameters -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "name", "value"),
    [
        ("Patient", "birthdate", "2021-13-45"),
        ("Patient", "birthdate", "xx1980"),
        ("Patient", "_lastUpdated", "yesterday"),
        ("Observation", "value-quantity", "heavy"),
        ("Observation", "value-quantity", "5|a|b|c"),
        ("Observation", "value-quantity", "5|http://unitsofmeasure.org|"),
        ("RiskAssessment", "probability", "likely"),
        ("Observation", "subject", "Spaceship/1"),
        ("Observation", "subject", "Patient/a/b"),
        ("Patient", "identifier", "a|b|c"),
        ("Patient", "family:sounds-like", "smith"),
        ("Patient", "gender:missing", "maybe"),
        ("Patient", "_count", "-1"),
        ("Patient", "_count", "lots"),
        ("Patient", "_sort", "shoe-size"),
        ("Patient", "_summary", "brief"),
        ("Patient", "_total", "some"),
        ("Patient", "_include", "Patient"),
        ("Patient", "_revinclude", "Spaceship:subject"),
        ("Observation", "patient.shoe-size", "42"),
        ("Observation", "code.text", "x"),
    ],
)
def test_a_malformed_search_value_is_400_naming_the_parameter(
    fhir: FhirClient, resource_type: str, name: str, value: str
) -> None:
    reply = fhir.get(resource_type, params={name: value})
    assert (reply.status, reply.codes, reply.expressions) == (400, {"invalid"}, {name}), reply
