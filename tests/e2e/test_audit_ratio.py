"""Every request to a tenant's routes over real HTTP against `ehr local` leaves exactly one AuditEvent:
reads, searches, writes, deletes, operations, Bundles, refusals by the function (400, 403, 404, 410)
and refusals at the gateway's authorizer (401). Each response names API Gateway's request id
(``x-amzn-RequestId``); each AuditEvent names the request it records (``urn:ehr:request-id``)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import requests

REQUEST_ID_SYSTEM = "urn:ehr:request-id"
FHIR = "application/fhir+json"


def test_requests_and_audit_events_are_one_to_one(local_server) -> None:
    assert local_server.process.poll() is None, "the ehr local server was stopped before this test"
    base = f"{local_server.base}/tenants/clinic-a/fhir"
    since = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    clinic_a = requests.Session()
    clinic_a.headers["Authorization"] = "Bearer " + local_server.token(
        "--tenant", "clinic-a", "--scope", "user/*.cruds"
    )
    clinic_a.headers["Content-Type"] = FHIR
    clinic_b = local_server.token("--tenant", "clinic-b", "--scope", "user/*.cruds")
    system = f"urn:test:{uuid.uuid4().hex}"
    sent: list[tuple[str, int, str]] = []  # (what, status, request id)

    def record(what: str, response: requests.Response) -> requests.Response:
        sent.append((what, response.status_code, response.headers["x-amzn-RequestId"]))
        return response

    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": "1"}],
        "name": [{"family": "Ratio", "given": ["Audit"]}],
        "birthDate": "1970-01-01",
    }
    created = record("create", clinic_a.post(f"{base}/Patient", data=json.dumps(patient))).json()
    pid = created["id"]
    record("read", clinic_a.get(f"{base}/Patient/{pid}"))
    record("vread", clinic_a.get(f"{base}/Patient/{pid}/_history/1"))
    record("update", clinic_a.put(f"{base}/Patient/{pid}", data=json.dumps({**created, "gender": "female"})))
    record(
        "patch",
        clinic_a.patch(
            f"{base}/Patient/{pid}",
            data=json.dumps([{"op": "replace", "path": "/gender", "value": "other"}]),
            headers={"Content-Type": "application/json-patch+json"},
        ),
    )
    record("search", clinic_a.get(f"{base}/Patient", params={"identifier": f"{system}|1"}))
    record(
        "search by POST",
        clinic_a.post(
            f"{base}/Patient/_search",
            data=f"identifier={system}|1",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
    )
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {"value": 170, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"},
    }
    obs = record("create observation", clinic_a.post(f"{base}/Observation", data=json.dumps(observation)))
    oid = obs.json()["id"]
    record(
        "conditional create",
        clinic_a.post(
            f"{base}/Patient", data=json.dumps(patient), headers={"If-None-Exist": f"identifier={system}|1"}
        ),
    )
    record("$everything", clinic_a.get(f"{base}/Patient/{pid}/$everything"))
    record("instance history", clinic_a.get(f"{base}/Patient/{pid}/_history"))
    record("type history", clinic_a.get(f"{base}/Observation/_history", params={"_count": "5"}))
    record("capabilities", clinic_a.get(f"{base}/metadata"))
    bundle_entry = {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {**observation, "status": "preliminary"},
        "request": {"method": "POST", "url": "Observation"},
    }
    for kind in ("transaction", "batch"):
        record(
            kind,
            clinic_a.post(
                base, data=json.dumps({"resourceType": "Bundle", "type": kind, "entry": [bundle_entry]})
            ),
        )
    record("delete", clinic_a.delete(f"{base}/Observation/{oid}"))
    record("read deleted", clinic_a.get(f"{base}/Observation/{oid}"))
    record("read missing", clinic_a.get(f"{base}/Patient/{uuid.uuid4()}"))
    record("invalid", clinic_a.post(f"{base}/Observation", data=json.dumps({"resourceType": "Observation"})))
    record("not JSON", clinic_a.post(f"{base}/Patient", data="{"))
    # Another facility's valid token on clinic-a's URL: refused by the function (403)
    record(
        "foreign token",
        requests.get(f"{base}/Patient/{pid}", headers={"Authorization": f"Bearer {clinic_b}"}),
    )
    # Refused at the gateway: no token, not a bearer token, a token that is no JWT (401)
    record("no token", requests.get(f"{base}/Patient/{pid}"))
    record("basic auth", requests.get(f"{base}/Patient/{pid}", headers={"Authorization": "Basic dTpw"}))
    record(
        "forged token", requests.get(f"{base}/Patient/{pid}", headers={"Authorization": "Bearer e30.e30.x"})
    )

    statuses = {what: status for what, status, _ in sent}
    assert statuses == {
        "create": 201,
        "read": 200,
        "vread": 200,
        "update": 200,
        "patch": 200,
        "search": 200,
        "search by POST": 200,
        "create observation": 201,
        "conditional create": 200,
        "$everything": 200,
        "instance history": 200,
        "type history": 200,
        "capabilities": 200,
        "transaction": 200,
        "batch": 200,
        "delete": 204,
        "read deleted": 410,
        "read missing": 404,
        "invalid": 400,
        "not JSON": 400,
        "foreign token": 403,
        "no token": 401,
        "basic auth": 401,
        "forged token": 401,
    }

    # clinic-a's administrator reads the trail of the window (that read is audited too).
    auditor = requests.Session()
    auditor.headers["Authorization"] = "Bearer " + local_server.token(
        "--tenant", "clinic-a", "--scope", "user/AuditEvent.rs"
    )
    recorded: Counter[str] = Counter()
    url: str | None = f"{base}/AuditEvent?date=ge{since}&_count=100"
    while url:
        page = auditor.get(url)
        assert page.status_code == 200, page.text
        bundle = page.json()
        for entry in bundle.get("entry", []):
            for entity in entry["resource"].get("entity", []):
                identifier = entity.get("what", {}).get("identifier", {})
                if identifier.get("system") == REQUEST_ID_SYSTEM:
                    recorded[identifier["value"]] += 1
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)

    per_request = {what: recorded[request_id] for what, _, request_id in sent}
    ratio = sum(per_request.values()) / len(sent)
    print(f"\naudit ratio: {len(sent)} requests, {sum(per_request.values())} AuditEvents, ratio {ratio:.3f}")
    assert per_request == dict.fromkeys(per_request, 1)
    assert f"{ratio:.3f}" == "1.000"
