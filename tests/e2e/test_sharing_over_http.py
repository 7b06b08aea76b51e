"""Records follow the patient across facilities, over HTTP against `ehr local`.

Clinic A and clinic B each register the same person (the change feed indexes both in the master
patient index); B subscribes to its patient's Observations with a rest-hook on a real loopback
receiver. With A's Consent for B, an Observation filed at A reaches B's webhook within seconds
(signed with B's key) and shows in B's $everything labelled with its source; after A revokes the
consent, B gets nothing more — no webhook, no record.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from ehr.sharing.consent import sharing_consent
from infra.local.webhook_receiver import WebhookReceiver
from tests.e2e.conftest import LocalServer

pytestmark = pytest.mark.e2e
A, B = "clinic-a", "clinic-b"
SOURCE = "urn:ehr:source-tenant"
DELIVERY_SECONDS = 20


class Facility:
    def __init__(self, server: LocalServer, tenant: str) -> None:
        self.tenant = tenant
        self.base = f"{server.base}/tenants/{tenant}/fhir"
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + server.token(
            "--tenant", tenant, "--scope", "user/*.cruds"
        )

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        reply = self.http.post(
            f"{self.base}/{resource['resourceType']}",
            json=resource,
            headers={"Content-Type": "application/fhir+json"},
            timeout=30,
        )
        assert reply.status_code == 201, reply.text
        return dict(reply.json())

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        reply = self.http.put(
            f"{self.base}/{resource['resourceType']}/{resource['id']}",
            json=resource,
            headers={"Content-Type": "application/fhir+json"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def get(self, path: str, **params: str) -> dict[str, Any]:
        reply = self.http.get(f"{self.base}/{path}", params=params, timeout=30)
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def match(self, patient: dict[str, Any]) -> dict[str, Any]:
        reply = self.http.post(
            f"{self.base}/Patient/$match",
            json={"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient}]},
            headers={"Content-Type": "application/fhir+json"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def everything_sources(self, patient_id: str) -> set[tuple[str, str, str]]:
        bundle = self.get(f"Patient/{patient_id}/$everything")
        found = set()
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            tags = [t["code"] for t in resource.get("meta", {}).get("tag", []) if t["system"] == SOURCE]
            found.add((tags[0] if tags else "own", resource["resourceType"], resource.get("id", "")))
        return found


def person(ssn: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}],
        "name": [{"family": "Lindqvist", "given": ["Maja"]}],
        "gender": "female",
        "birthDate": "1991-07-30",
    }


def observation(patient_id: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {"value": value, "unit": "mg/dL"},
    }


def wait_until(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    pytest.fail(f"{what} did not happen within {seconds} s")


def test_consented_records_and_notifications_follow_the_patient_and_stop_on_revocation(
    local_server: LocalServer,
) -> None:
    a, b = Facility(local_server, A), Facility(local_server, B)
    key = (Path(local_server.env["EHR_HOME"]) / "subscriptions" / f"{B}.key").read_text().strip().encode()
    ssn = f"9{uuid.uuid4().int % 10**8:08d}"
    pa = a.create(person(ssn))
    pb = b.create(person(ssn))

    # The change feed indexes both records; B's $match then knows a match exists elsewhere,
    # without saying where or who.
    def other_facility_match() -> list[dict[str, Any]]:
        return [e for e in b.match(person(ssn)).get("entry", []) if "id" not in e["resource"]]

    [hidden] = wait_until(other_facility_match, DELIVERY_SECONDS, "indexing both records")
    assert pa["id"] not in str(hidden) and A not in str(hidden)

    with WebhookReceiver(key) as hook:
        subscription = b.create(
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "results from other facilities",
                "criteria": f"Observation?patient={pb['id']}",
                "channel": {"type": "rest-hook", "endpoint": hook.url, "payload": "application/fhir+json"},
            }
        )
        assert subscription["status"] == "active"

        organization = a.get("Organization", identifier=f"urn:ehr:tenant|{B}")["entry"][0]["resource"]
        granted = a.create(sharing_consent(pa["id"], organization["id"]))
        shared_obs = a.create(observation(pa["id"], 5.4))

        [delivery] = wait_until(lambda: hook.accepted, DELIVERY_SECONDS, "the delivery to B's webhook")
        assert hook.verify(delivery)
        assert f"Observation/{shared_obs['id']}" in delivery.body.decode()
        assert "5.4" not in delivery.body.decode()  # id-only: no clinical content in the webhook
        assert (A, "Observation", shared_obs["id"]) in b.everything_sources(pb["id"])

        # Revoked: the next record at A reaches B nowhere. B's own change, made afterwards,
        # still arrives — so the silence is the consent's doing, not a stalled feed.
        a.update({**granted, "status": "inactive"})
        hidden_obs = a.create(observation(pa["id"], 6.1))
        own_obs = b.create(observation(pb["id"], 4.9))
        deliveries = wait_until(
            lambda: len(hook.accepted) >= 2 and hook.accepted, DELIVERY_SECONDS, "B's own delivery"
        )
        time.sleep(2)
        bodies = [d.body.decode() for d in hook.accepted]
        assert any(f"Observation/{own_obs['id']}" in text for text in bodies)
        assert not any(f"Observation/{hidden_obs['id']}" in text for text in bodies)
        assert len(deliveries) >= 2
        assert not [s for s in b.everything_sources(pb["id"]) if s[0] == A]

    # Both trails hold the cross-facility read: A's names B as the requesting facility.
    admin_a = requests.Session()
    admin_a.headers["Authorization"] = "Bearer " + local_server.token(
        "--tenant", A, "--scope", "user/AuditEvent.rs"
    )
    reply = admin_a.get(f"{a.base}/AuditEvent", params={"patient": pa["id"]}, timeout=30)
    assert reply.status_code == 200, reply.text
    events = [e["resource"] for e in reply.json().get("entry", [])]
    cross = [
        e
        for e in events
        if any(agent.get("who", {}).get("identifier", {}).get("value") == B for agent in e.get("agent", []))
    ]
    assert cross and cross[0]["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"


def test_a_patient_registered_by_hl7_adt_is_indexed_for_match(local_server: LocalServer) -> None:
    """ADT^A04 at clinic A (HL7 over HTTPS) → the records stream → the patient index: clinic B's
    $match then knows a match exists elsewhere, and nothing more."""
    b = Facility(local_server, B)
    ssn = f"8{uuid.uuid4().int % 10**8:08d}"
    control = uuid.uuid4().hex[:20]
    message = "\r".join(
        [
            f"MSH|^~\\&|REGADT|CLINICA|EHR|EHR|20261121120000||ADT^A04^ADT_A01|{control}|P|2.5.1",
            "EVN|A04|20261121120000",
            f"PID|1||MRN{ssn}^^^CLINICA^MR~{ssn}^^^SSA^SS||Okonkwo^Adaeze||19850214|F|||"
            "12 Elm St^^Springfield^MA^01101||^^PH^^^413^5550101",
            "PV1|1|O",
        ]
    )
    reply = requests.post(
        f"{local_server.base}/tenants/{A}/hl7v2",
        data=message.encode(),
        headers={
            "Content-Type": "x-application/hl7-v2+er7",
            "Authorization": "Bearer " + local_server.token("--tenant", A, "--scope", "system/*.cruds"),
        },
        timeout=30,
    )
    assert reply.status_code == 200 and "MSA|AA" in reply.text, reply.text
    probe = {
        "resourceType": "Patient",
        "name": [{"family": "Okonkwo", "given": ["Adaeze"]}],
        "birthDate": "1985-02-14",
        "gender": "female",
        "address": [{"postalCode": "01101"}],
        "telecom": [{"system": "phone", "value": "413-555-0101"}],
    }

    def elsewhere() -> list[dict[str, Any]]:
        return [e for e in b.match(probe).get("entry", []) if "id" not in e["resource"]]

    [hidden] = wait_until(elsewhere, DELIVERY_SECONDS, "indexing the ADT patient")
    assert hidden["search"]["extension"][0]["valueCode"] in ("certain", "probable")
    assert "Okonkwo" not in str(hidden) and A not in str(hidden)
