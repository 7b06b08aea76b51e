"""Transactions (all or nothing, references rewritten) and batches (each entry on its own)."""

from __future__ import annotations

from api_support import FhirClient, location_ref, match_ids, new_uuid, post_entry


def a_patient(system: str, value: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}


def an_observation(system: str, value: str, subject: str, status: str = "final") -> dict:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": system, "value": value}],
        "status": status,
        "code": {"text": "heart rate"},
        "subject": {"reference": subject},
    }


def stored(fhir: FhirClient, resource_type: str, system: str) -> list[str]:
    return match_ids(fhir.search(resource_type, {"identifier": f"{system}|"}))


# -- transactions --------------------------------------------------------------------------------


def test_a_transaction_commits_every_entry(fhir: FhirClient, system: str) -> None:
    # When a transaction creates a Patient and an Observation about it
    patient_url, observation_url = new_uuid(), new_uuid()
    reply = fhir.transaction(
        [
            post_entry(a_patient(system, "p"), patient_url),
            post_entry(an_observation(system, "o", patient_url), observation_url),
        ]
    )

    # Then each entry answers 201 with the location, ETag and time of version 1
    assert reply.status == 200, reply
    assert reply.json["type"] == "transaction-response"
    responses = [e["response"] for e in reply.json["entry"]]
    assert [r["status"][:3] for r in responses] == ["201", "201"]
    assert [location_ref(r["location"]).split("/")[0] for r in responses] == ["Patient", "Observation"]
    assert all(r["location"].endswith("/_history/1") and r["etag"] == 'W/"1"' for r in responses)


def test_a_transaction_rewrites_urn_uuid_references(fhir: FhirClient, system: str) -> None:
    # Given a transaction whose Observation refers to the Patient by its urn:uuid
    patient_url = new_uuid()
    reply = fhir.transaction(
        [
            post_entry(an_observation(system, "o", patient_url)),
            post_entry(a_patient(system, "p"), patient_url),
        ]
    )
    assert reply.status == 200, reply
    observation_ref, patient_ref = (location_ref(e["response"]["location"]) for e in reply.json["entry"])

    # When the stored Observation is read
    observation = fhir.read(*observation_ref.split("/"))

    # Then it refers to the Patient's new id
    assert observation["subject"]["reference"] == patient_ref


def test_a_transaction_with_an_invalid_last_entry_stores_nothing(fhir: FhirClient, system: str) -> None:
    # Given a transaction whose last entry is not valid R4
    patient_url = new_uuid()
    entries = [
        post_entry(a_patient(system, "p"), patient_url),
        post_entry(an_observation(system, "o1", patient_url)),
        post_entry(an_observation(system, "o2", patient_url, status="bogus")),
    ]

    # When it is posted
    reply = fhir.transaction(entries)

    # Then 400 points at that entry, and none of the entries was stored
    assert reply.status == 400, reply
    assert any(e.startswith("Bundle.entry[2]") for e in reply.expressions), reply
    assert stored(fhir, "Patient", system) == []
    assert stored(fhir, "Observation", system) == []


def test_a_transaction_with_a_failing_precondition_stores_nothing(fhir: FhirClient, system: str) -> None:
    # Given a transaction that creates a Patient and updates another with a stale ifMatch
    other = fhir.create(a_patient(system, "other"))
    entries = [
        post_entry(a_patient(system, "new")),
        {
            "resource": {**a_patient(system, "other"), "id": other["id"], "active": True},
            "request": {"method": "PUT", "url": f"Patient/{other['id']}", "ifMatch": 'W/"5"'},
        },
    ]

    # When it is posted
    reply = fhir.transaction(entries)

    # Then 412, and neither entry took effect
    assert reply.status == 412, reply
    assert stored(fhir, "Patient", system) == [other["id"]]
    assert fhir.read("Patient", other["id"]) == other


def test_a_reference_to_a_urn_uuid_of_no_entry_is_400(fhir: FhirClient, system: str) -> None:
    reply = fhir.transaction([post_entry(an_observation(system, "o", new_uuid()))])
    assert (reply.status, reply.codes) == (400, {"invalid"})
    assert stored(fhir, "Observation", system) == []


def test_a_conditional_reference_is_resolved_to_the_matching_resource(fhir: FhirClient, system: str) -> None:
    # Given a stored Patient with an identifier
    patient = fhir.create(a_patient(system, "p"))

    # When a transaction refers to it by a search on that identifier
    reply = fhir.transaction([post_entry(an_observation(system, "o", f"Patient?identifier={system}|p"))])

    # Then the stored Observation refers to that Patient
    assert reply.status == 200, reply
    observation = fhir.read(*location_ref(reply.json["entry"][0]["response"]["location"]).split("/"))
    assert observation["subject"]["reference"] == f"Patient/{patient['id']}"


def test_a_conditional_reference_without_a_match_fails_the_transaction(fhir: FhirClient, system: str) -> None:
    reply = fhir.transaction([post_entry(an_observation(system, "o", f"Patient?identifier={system}|nobody"))])
    assert 400 <= reply.status < 500, reply
    assert reply.json["resourceType"] == "OperationOutcome"
    assert stored(fhir, "Observation", system) == []


def test_a_conditional_create_entry_that_matches_keeps_the_existing_and_its_references(
    fhir: FhirClient, system: str
) -> None:
    # Given a stored Patient
    existing = fhir.create(a_patient(system, "p"))

    # When a transaction creates it if none exists, and an Observation referring to its entry
    patient_url = new_uuid()
    reply = fhir.transaction(
        [
            post_entry(a_patient(system, "p"), patient_url, ifNoneExist=f"identifier={system}|p"),
            post_entry(an_observation(system, "o", patient_url)),
        ]
    )

    # Then the Patient entry answers 200 with the existing one, which the Observation refers to
    assert reply.status == 200, reply
    patient_response, observation_response = (e["response"] for e in reply.json["entry"])
    assert (patient_response["status"][:3], location_ref(patient_response["location"])) == (
        "200",
        f"Patient/{existing['id']}",
    )
    observation = fhir.read(*location_ref(observation_response["location"]).split("/"))
    assert observation["subject"]["reference"] == f"Patient/{existing['id']}"
    assert stored(fhir, "Patient", system) == [existing["id"]]


def test_a_transaction_runs_update_delete_and_read_entries(fhir: FhirClient, uid: str, system: str) -> None:
    # Given a Patient to delete and one to read
    doomed = fhir.create(a_patient(system, "doomed"))
    kept = fhir.create(a_patient(system, "kept"))

    # When a transaction PUTs a new id, deletes one Patient and reads the other
    new_id = f"tx-{uid}"
    reply = fhir.transaction(
        [
            {
                "resource": {**a_patient(system, "put"), "id": new_id},
                "request": {"method": "PUT", "url": f"Patient/{new_id}"},
            },
            {"request": {"method": "DELETE", "url": f"Patient/{doomed['id']}"}},
            {"request": {"method": "GET", "url": f"Patient/{kept['id']}"}},
        ]
    )

    # Then each entry answers with its own status, and the changes are stored
    assert reply.status == 200, reply
    assert [e["response"]["status"][:3] for e in reply.json["entry"]] == ["201", "204", "200"]
    assert reply.json["entry"][2]["resource"] == kept
    assert fhir.read("Patient", new_id)["identifier"][0]["value"] == "put"
    assert fhir.get(f"Patient/{doomed['id']}").status == 410


def test_only_batch_and_transaction_bundles_are_taken_at_the_base(fhir: FhirClient) -> None:
    reply = fhir.post(json_body={"resourceType": "Bundle", "type": "collection"})
    assert (reply.status, reply.expressions) == (400, {"Bundle.type"})


# -- batches -------------------------------------------------------------------------------------


def test_a_batch_reports_each_entry_with_an_outcome_for_failures(
    fhir: FhirClient, uid: str, system: str
) -> None:
    # Given a stored Patient
    existing = fhir.create(a_patient(system, "existing"))

    # When a batch creates a Patient, updates the stored one with a stale ifMatch and reads a missing one
    reply = fhir.transaction(
        [
            post_entry(a_patient(system, "new")),
            {
                "resource": {**a_patient(system, "existing"), "id": existing["id"], "active": True},
                "request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"9"'},
            },
            {"request": {"method": "GET", "url": f"Patient/missing-{uid}"}},
        ],
        kind="batch",
    )

    # Then the batch answers 200 with one status per entry, and outcomes for the failures
    assert reply.status == 200, reply
    assert reply.json["type"] == "batch-response"
    responses = [e["response"] for e in reply.json["entry"]]
    assert [r["status"][:3] for r in responses] == ["201", "412", "404"]
    assert [r.get("outcome", {}).get("resourceType") for r in responses] == [
        None,
        "OperationOutcome",
        "OperationOutcome",
    ]
    # And the entry that succeeded is stored, while the failed update changed nothing
    assert sorted(stored(fhir, "Patient", system)) == sorted(
        [existing["id"], location_ref(responses[0]["location"]).split("/")[1]]
    )
    assert fhir.read("Patient", existing["id"]) == existing


def test_a_batch_entry_with_an_invalid_resource_fails_alone(fhir: FhirClient, system: str) -> None:
    # When a batch holds a valid Patient and an invalid Observation
    reply = fhir.transaction(
        [
            post_entry(a_patient(system, "fine")),
            post_entry(an_observation(system, "o", "Patient/whoever", status="bogus")),
        ],
        kind="batch",
    )

    # Then the Patient is created and only the Observation entry fails, with its outcome
    assert reply.status == 200, reply
    responses = [e["response"] for e in reply.json["entry"]]
    assert [r["status"][:3] for r in responses] == ["201", "400"]
    assert responses[1]["outcome"]["issue"][0]["code"] == "code-invalid"
    assert len(stored(fhir, "Patient", system)) == 1
