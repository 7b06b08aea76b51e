"""The lab-order loop over HTTP: `ehr local` with its lab simulator, one branch per scenario.

A clinic places an order through the FHIR API (the real `ehr local`, the real ASL on emulated
Step Functions, the real handlers); the simulated lab receives the ORM on its webhook and answers
through the platform's HL7 endpoint as the order's note says. Each test reads what a clinic would:
the ServiceRequest, its Task, the DiagnosticReport and Observations, escalation Tasks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.e2e.conftest import LocalServer, start_local_server, stop_local_server

pytestmark = pytest.mark.e2e
TIMEOUT_SECONDS = 12  # the order's wait for results (--lab-result-timeout) in this server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    local = start_local_server(
        tmp_path_factory.mktemp("ehr-lab-home"),
        args=("--lab-delay", "0.3", "--lab-result-timeout", str(TIMEOUT_SECONDS)),
    )
    yield local
    stop_local_server(local)


class Clinic:
    def __init__(self, server: LocalServer) -> None:
        self.base = f"{server.base}/tenants/clinic-a/fhir"
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + server.token(
            "--tenant", "clinic-a", "--scope", "user/*.cruds"
        )

    def get(self, path: str, **params: str) -> Any:
        reply = self.http.get(f"{self.base}/{path}", params=params, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        reply = self.http.post(
            f"{self.base}/{resource['resourceType']}",
            json=resource,
            headers={"Content-Type": "application/fhir+json", "Prefer": "return=representation"},
            timeout=30,
        )
        assert reply.status_code == 201, reply.text
        return dict(reply.json())

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.get(resource_type, **params).get("entry", [])]

    def order(self, scenario: str, loinc: str = "2345-7") -> tuple[str, str]:
        mrn = uuid.uuid4().hex[:10]
        patient = self.create(
            {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:test:mrn", "value": mrn}],
                "name": [{"family": "Workflowtest", "given": ["Demo"]}],
                "birthDate": "1970-01-01",
                "gender": "female",
            }
        )
        doctor = self.create(
            {
                "resourceType": "Practitioner",
                "identifier": [{"system": "urn:test:npi", "value": mrn}],
                "name": [{"family": "Orderer"}],
            }
        )
        lab = self.search("Organization", identifier="urn:ehr:partner|acme-lab")[0]
        order = self.create(
            {
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                "subject": {"reference": f"Patient/{patient['id']}"},
                "requester": {"reference": f"Practitioner/{doctor['id']}"},
                "performer": [{"reference": f"Organization/{lab['id']}"}],
                "note": [{"text": f"simulate={scenario}"}],
            }
        )
        return str(order["id"]), mrn

    def task(self, sr: str) -> dict[str, Any]:
        found = self.search("Task", identifier=f"urn:ehr:lab-order|{sr}")
        return found[0] if found else {}

    def reports(self, sr: str) -> list[dict[str, Any]]:
        return self.search("DiagnosticReport", **{"based-on": f"ServiceRequest/{sr}"})

    def observations(self, sr: str) -> list[dict[str, Any]]:
        return self.search("Observation", **{"based-on": f"ServiceRequest/{sr}"})


def eventually(check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"not reached in {timeout} s (last: {last!r})")


@pytest.fixture(scope="module")
def clinic(server: LocalServer) -> Clinic:
    return Clinic(server)


def test_normal_results_complete_the_order(clinic: Clinic) -> None:
    sr, _ = clinic.order("normal")
    task = eventually(lambda: (t := clinic.task(sr)).get("status") == "completed" and t)
    report = clinic.reports(sr)
    assert len(report) == 1 and report[0]["status"] == "final"
    assert task["output"][0]["valueReference"]["reference"] == f"DiagnosticReport/{report[0]['id']}"
    assert clinic.get(f"ServiceRequest/{sr}")["status"] == "completed"
    observations = clinic.observations(sr)
    assert len(observations) == 1
    assert observations[0]["interpretation"][0]["coding"][0]["code"] == "N"
    assert observations[0]["subject"] == clinic.get(f"ServiceRequest/{sr}")["subject"]


def test_abnormal_results_are_flagged(clinic: Clinic) -> None:
    sr, _ = clinic.order("abnormal")
    eventually(lambda: clinic.task(sr).get("status") == "completed")
    codes = {o["interpretation"][0]["coding"][0]["code"] for o in clinic.observations(sr)}
    assert codes & {"H", "L"}
    assert clinic.search("Task", identifier=f"urn:ehr:critical-result|{clinic.reports(sr)[0]['id']}") == []


def test_a_critical_result_is_escalated_to_the_requester(clinic: Clinic) -> None:
    sr, _ = clinic.order("critical")
    eventually(lambda: clinic.task(sr).get("status") == "completed")
    report = clinic.reports(sr)[0]
    escalation = eventually(
        lambda: clinic.search("Task", identifier=f"urn:ehr:critical-result|{report['id']}")
    )
    assert len(escalation) == 1
    assert escalation[0]["priority"] == "stat"
    assert escalation[0]["owner"] == clinic.get(f"ServiceRequest/{sr}")["requester"]
    assert {o["interpretation"][0]["coding"][0]["code"] for o in clinic.observations(sr)} & {"HH", "LL"}


def test_preliminary_then_final_results_update_the_same_resources(clinic: Clinic) -> None:
    sr, _ = clinic.order("preliminary-final")
    eventually(lambda: [r for r in clinic.reports(sr) if r["status"] in ("preliminary", "partial")])
    assert clinic.task(sr)["status"] == "in-progress"  # still waiting for the final
    eventually(lambda: clinic.task(sr).get("status") == "completed")
    reports = clinic.reports(sr)
    assert len(reports) == 1
    assert reports[0]["status"] == "final"
    assert int(reports[0]["meta"]["versionId"]) >= 2
    assert all(o["status"] == "final" for o in clinic.observations(sr))


def test_a_correction_makes_new_versions_never_duplicates(clinic: Clinic) -> None:
    sr, _ = clinic.order("corrected")
    eventually(lambda: [r for r in clinic.reports(sr) if r["status"] == "corrected"])
    reports = clinic.reports(sr)
    observations = clinic.observations(sr)
    assert len(reports) == 1
    assert len(observations) == 1
    assert observations[0]["status"] == "corrected"
    assert int(observations[0]["meta"]["versionId"]) >= 2
    assert eventually(lambda: clinic.task(sr).get("status") == "completed")


def test_a_rejected_order_is_revoked_with_the_labs_reason(clinic: Clinic) -> None:
    sr, _ = clinic.order("reject")
    task = eventually(lambda: (t := clinic.task(sr)).get("status") == "rejected" and t)
    assert task["statusReason"]["text"]
    order = clinic.get(f"ServiceRequest/{sr}")
    assert order["status"] == "revoked"
    assert task["statusReason"]["text"] in order["note"][-1]["text"]
    assert clinic.reports(sr) == []


def test_a_silent_lab_puts_the_order_on_hold_after_the_timeout(clinic: Clinic) -> None:
    sr, _ = clinic.order("silent")
    eventually(lambda: clinic.task(sr).get("status") == "in-progress")
    eventually(lambda: clinic.task(sr).get("status") == "on-hold", timeout=TIMEOUT_SECONDS + 60)
    assert clinic.get(f"ServiceRequest/{sr}")["status"] == "on-hold"


def test_cancelling_a_waiting_order_cancels_it_at_the_lab(clinic: Clinic) -> None:
    sr, _ = clinic.order("silent")
    eventually(lambda: clinic.task(sr).get("status") == "in-progress")
    order = clinic.get(f"ServiceRequest/{sr}")
    order["status"] = "revoked"
    order.pop("meta", None)
    reply = clinic.http.put(
        f"{clinic.base}/ServiceRequest/{sr}",
        json=order,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    task = eventually(lambda: (t := clinic.task(sr)).get("status") == "cancelled" and t)
    assert task["businessStatus"]["text"] == "Cancelled by the clinic"


def test_a_retried_create_starts_one_workflow(clinic: Clinic) -> None:
    # Given an order created with If-None-Exist, then the same request again (a client retry)
    sr, _ = clinic.order("normal")
    order = clinic.get(f"ServiceRequest/{sr}")
    placer = {"system": "urn:test:placer", "value": uuid.uuid4().hex}
    retry = {k: v for k, v in order.items() if k not in ("id", "meta")} | {"identifier": [placer]}
    headers = {
        "Content-Type": "application/fhir+json",
        "If-None-Exist": f"identifier={placer['system']}|{placer['value']}",
    }
    first = clinic.http.post(f"{clinic.base}/ServiceRequest", json=retry, headers=headers, timeout=30)
    again = clinic.http.post(f"{clinic.base}/ServiceRequest", json=retry, headers=headers, timeout=30)
    assert (first.status_code, again.status_code) == (201, 200)
    retried = first.headers["Location"].split("/")[-3]
    # Then that order runs one workflow: one Task, one report, one set of results
    eventually(lambda: clinic.task(retried).get("status") == "completed")
    assert len(clinic.search("Task", identifier=f"urn:ehr:lab-order|{retried}")) == 1
    assert len(clinic.reports(retried)) == 1
    assert len(clinic.observations(retried)) == 1
