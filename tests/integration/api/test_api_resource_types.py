"""Each clinical core type: created, read back as sent, and found by a parameter clinics use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from api_support import FhirClient, match_ids, without_server_fields

PATIENT = "Patient/core-types-subject"  # reference targets are not required to exist


def coding(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def ident(system: str, value: str = "1") -> list[dict]:
    return [{"system": system, "value": value}]


# type -> (resource built from (uid, system), (search parameter, value built from (uid, system)))
Builder = Callable[[str, str], dict[str, Any]]
CASES: dict[str, tuple[Builder, str, Callable[[str, str], str]]] = {
    "Patient": (
        lambda uid, s: {"name": [{"family": f"Core{uid}", "given": ["Ada"]}], "gender": "female"},
        "family",
        lambda uid, s: f"Core{uid}",
    ),
    "Practitioner": (
        lambda uid, s: {"name": [{"family": f"Doc{uid}", "prefix": ["Dr"]}], "identifier": ident(s)},
        "name",
        lambda uid, s: f"doc{uid}",
    ),
    "PractitionerRole": (
        lambda uid, s: {"practitioner": {"reference": f"Practitioner/{uid}"}, "code": [coding(s, "nurse")]},
        "role",
        lambda uid, s: f"{s}|nurse",
    ),
    "Organization": (
        lambda uid, s: {"name": f"Clinic {uid}", "active": True},
        "name",
        lambda uid, s: f"clinic {uid}",
    ),
    "Location": (
        lambda uid, s: {"name": f"Ward {uid}", "status": "active"},
        "name",
        lambda uid, s: f"Ward {uid}",
    ),
    "Encounter": (
        lambda uid, s: {
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": PATIENT},
            "identifier": ident(s),
            "period": {"start": "2024-01-02T09:00:00Z", "end": "2024-01-02T09:30:00Z"},
        },
        "identifier",
        lambda uid, s: f"{s}|1",
    ),
    "Observation": (
        lambda uid, s: {
            "status": "final",
            "code": coding(s, "hr"),
            "subject": {"reference": PATIENT},
            "valueQuantity": {
                "value": 72,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        },
        "code",
        lambda uid, s: f"{s}|hr",
    ),
    "DiagnosticReport": (
        lambda uid, s: {"status": "final", "code": coding(s, "cbc"), "subject": {"reference": PATIENT}},
        "code",
        lambda uid, s: f"{s}|cbc",
    ),
    "ServiceRequest": (
        lambda uid, s: {
            "status": "active",
            "intent": "order",
            "code": coding(s, "cbc"),
            "subject": {"reference": PATIENT},
            "identifier": ident(s, "order-1"),
        },
        "identifier",
        lambda uid, s: f"{s}|order-1",
    ),
    "Specimen": (
        lambda uid, s: {"accessionIdentifier": {"system": s, "value": "acc-1"}, "type": coding(s, "blood")},
        "accession",
        lambda uid, s: f"{s}|acc-1",
    ),
    "Condition": (
        lambda uid, s: {"code": coding(s, "asthma"), "subject": {"reference": PATIENT}},
        "code",
        lambda uid, s: f"{s}|asthma",
    ),
    "AllergyIntolerance": (
        lambda uid, s: {
            "clinicalStatus": coding(
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active"
            ),
            "code": coding(s, "peanut"),
            "patient": {"reference": PATIENT},
        },
        "code",
        lambda uid, s: f"{s}|peanut",
    ),
    "MedicationRequest": (
        lambda uid, s: {
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": coding(s, "amoxicillin"),
            "subject": {"reference": PATIENT},
        },
        "code",
        lambda uid, s: f"{s}|amoxicillin",
    ),
    "Medication": (
        lambda uid, s: {"code": coding(s, "amoxicillin")},
        "code",
        lambda uid, s: f"{s}|amoxicillin",
    ),
    "Immunization": (
        lambda uid, s: {
            "status": "completed",
            "vaccineCode": coding(s, "mmr"),
            "patient": {"reference": PATIENT},
            "occurrenceDateTime": "2024-03-01",
        },
        "vaccine-code",
        lambda uid, s: f"{s}|mmr",
    ),
    "Procedure": (
        lambda uid, s: {
            "status": "completed",
            "code": coding(s, "appendectomy"),
            "subject": {"reference": PATIENT},
        },
        "code",
        lambda uid, s: f"{s}|appendectomy",
    ),
    "DocumentReference": (
        lambda uid, s: {
            "status": "current",
            "type": coding(s, "discharge-summary"),
            "content": [
                {"attachment": {"contentType": "text/plain", "url": f"https://example.org/docs/{uid}"}}
            ],
        },
        "type",
        lambda uid, s: f"{s}|discharge-summary",
    ),
    "Consent": (
        lambda uid, s: {
            "status": "active",
            "scope": coding("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"),
            "category": [coding("http://loinc.org", "59284-0")],
            "patient": {"reference": PATIENT},
            "policyRule": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN"),
            "identifier": ident(s),
        },
        "identifier",
        lambda uid, s: f"{s}|1",
    ),
    "Provenance": (
        lambda uid, s: {
            "target": [{"reference": f"Observation/{uid}"}],
            "recorded": "2024-03-01T10:00:00Z",
            "agent": [{"who": {"reference": f"Practitioner/{uid}"}}],
        },
        "target",
        lambda uid, s: f"Observation/{uid}",
    ),
    "Task": (
        lambda uid, s: {"status": "requested", "intent": "order", "code": coding(s, "collect-specimen")},
        "code",
        lambda uid, s: f"{s}|collect-specimen",
    ),
    "Subscription": (
        lambda uid, s: {
            "status": "off",
            "reason": "notify the lab system",
            "criteria": "Observation?code=http://loinc.org|1975-2",
            "channel": {"type": "rest-hook", "endpoint": f"https://example.org/hooks/{uid}"},
        },
        "url",
        lambda uid, s: f"https://example.org/hooks/{uid}",
    ),
    "CarePlan": (
        lambda uid, s: {
            "status": "active",
            "intent": "plan",
            "subject": {"reference": PATIENT},
            "category": [coding(s, "diabetes")],
        },
        "category",
        lambda uid, s: f"{s}|diabetes",
    ),
    "Coverage": (
        lambda uid, s: {
            "status": "active",
            "beneficiary": {"reference": PATIENT},
            "payor": [{"reference": f"Organization/{uid}"}],
            "identifier": ident(s, "member-1"),
        },
        "identifier",
        lambda uid, s: f"{s}|member-1",
    ),
}


@pytest.mark.parametrize("resource_type", sorted(CASES))
def test_core_type_is_created_read_and_searched(
    fhir: FhirClient, resource_type: str, uid: str, system: str
) -> None:
    build, param, value = CASES[resource_type]
    sent = {"resourceType": resource_type, **build(uid, system)}

    # When it is created
    reply = fhir.post(resource_type, json_body=sent)
    assert reply.status == 201, reply
    resource_id = reply.json["id"]

    # Then it reads back as sent
    assert without_server_fields(fhir.read(resource_type, resource_id)) == sent

    # And a search by a typical parameter finds it
    assert match_ids(fhir.search(resource_type, {param: value(uid, system)})) == [resource_id]
