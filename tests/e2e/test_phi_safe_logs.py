"""PHI-safe telemetry over real HTTP: `ehr local` at DEBUG, a realistic clinical workload, and not
one patient name, birth date or identifier in what the server wrote to stdout and stderr.

STYLE.md ("PHI-safe telemetry"): log identifiers (tenant, resource type and id, correlation id),
never resource bodies, names or dates of birth. Query strings carry PHI (``Patient?family=…``),
and so do request bodies, conditional headers and the error messages that echo them; all of
them pass through the server here. Error bodies go to the client and may echo what the client
sent, but never a stack trace or the server's internals.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests

from tests.e2e.conftest import LocalServer, start_local_server, stop_local_server

pytestmark = pytest.mark.e2e

SYNTHEA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "synthea"
SYNTHEA_RECORD = "synthea__Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5.99"
INTERNALS = ("Traceback", 'File "', '.py"', "ehr.", "pynamodb", "botocore", "boto3", "moto", "fhirpathpy")


@dataclass
class DebugServer:
    """`ehr local` (the e2e suite's own start-up) with every function logging at DEBUG."""

    local: LocalServer
    home: Path

    @property
    def base(self) -> str:
        return self.local.base

    def token(self, *args: str) -> str:
        return self.local.token(*args)

    def stop(self) -> None:
        stop_local_server(self.local)

    def output(self) -> str:
        """Everything it wrote: the banner and stdout, and stderr (request log and function logs)."""
        banner = getattr(self.local, "banner", "")
        stdout = (
            (self.home / "stdout.log").read_text(errors="replace")
            if (self.home / "stdout.log").exists()
            else ""
        )
        return banner + stdout + "\n" + self.local.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebugServer]:
    home = tmp_path_factory.mktemp("ehr-home-phi")
    running = DebugServer(start_local_server(home, extra_env={"POWERTOOLS_LOG_LEVEL": "DEBUG"}), home)
    yield running
    running.stop()


# -- the workload ----------------------------------------------------------------------------------


@dataclass
class Workload:
    """What the clients sent (the PHI to look for) and every answer they got."""

    phi: set[str] = field(default_factory=set)
    answers: list[tuple[str, requests.Response]] = field(default_factory=list)


def cast(tag: str) -> list[dict[str, Any]]:
    """Three obviously fake patients, unique to this run."""
    people = [
        ("Quillfeather", ["Ottoline", "Marisol"], "1957-11-23"),
        ("Brightwater", ["Evander"], "1990-02-14"),
        ("Hollowmere", ["Wilhelmina", "June"], "2011-07-30"),
    ]
    return [
        {
            "resourceType": "Patient",
            "identifier": [
                {"system": MRN_SYSTEM, "value": f"PHI-MRN-{tag}-{n}"},
                {"system": "http://hl7.org/fhir/sid/us-ssn", "value": f"900-{tag[:2]}-{4000 + n}"},
            ],
            "name": [{"family": f"{family}{tag}", "given": [f"{g}{tag}" for g in given]}],
            "gender": "unknown",
            "birthDate": birth,
            "telecom": [{"system": "phone", "value": f"+1 555 01{n}{tag[:4]}"}],
            "address": [{"line": [f"{n}7 Larkspur Row {tag}"], "city": "Faketown", "postalCode": "99999"}],
        }
        for n, (family, given, birth) in enumerate(people)
    ]


def phi_of(patient: dict[str, Any]) -> set[str]:
    values = {patient.get("birthDate", "")}
    for name in patient.get("name", []):
        values |= {name.get("family", ""), *name.get("given", [])}
    values |= {i["value"] for i in patient.get("identifier", [])}
    values |= {t["value"] for t in patient.get("telecom", [])}
    values |= {line for a in patient.get("address", []) for line in a.get("line", [])}
    return {v for v in values if len(v) >= 5}


def run_workload(server: DebugServer) -> Workload:
    work = Workload()
    tag = uuid.uuid4().hex[:8]
    a_base = f"{server.base}/tenants/clinic-a/fhir"
    a_token = server.token("--tenant", "clinic-a", "--scope", "user/*.cruds")
    b_token = server.token("--tenant", "clinic-b", "--scope", "user/*.cruds")
    http = requests.Session()
    http.headers.update({"Authorization": f"Bearer {a_token}", "Accept": "application/fhir+json"})

    def call(label: str, method: str, url: str, **kwargs: Any) -> requests.Response:
        response = http.request(method, url, timeout=120, **kwargs)
        work.answers.append((label, response))
        return response

    fhir_json = {"Content-Type": "application/fhir+json"}
    patients = cast(tag)
    for patient in patients:
        work.phi |= phi_of(patient)
    # Registering patients, one of them conditionally on its MRN
    ids = []
    for patient in patients[:2]:
        response = call("create", "POST", f"{a_base}/Patient", json=patient, headers=fhir_json)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    mrn = patients[2]["identifier"][0]
    response = call(
        "conditional create",
        "POST",
        f"{a_base}/Patient",
        json=patients[2],
        headers={**fhir_json, "If-None-Exist": f"identifier={mrn['system']}|{mrn['value']}"},
    )
    assert response.status_code == 201, response.text
    ids.append(response.json()["id"])
    call(
        "conditional create (match)",
        "POST",
        f"{a_base}/Patient",
        json=patients[2],
        headers={**fhir_json, "If-None-Exist": f"identifier={mrn['system']}|{mrn['value']}"},
    )
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
        "subject": {"reference": f"Patient/{ids[0]}", "display": patients[0]["name"][0]["family"]},
        "effectiveDateTime": "2024-05-01T09:30:00Z",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    response = call(
        "create observation", "POST", f"{a_base}/Observation", json=observation, headers=fhir_json
    )
    assert response.status_code == 201, response.text

    # Searching by PHI in the query string (GET) and in a form body (POST _search)
    first = patients[0]
    family, given = first["name"][0]["family"], first["name"][0]["given"]
    searches = [
        f"Patient?family={quote(family)}",
        f"Patient?name={quote(given[0])}&birthdate={first['birthDate']}",
        f"Patient?given={quote(given[1])}",
        f"Patient?name:exact={quote(family)}",
        f"Patient?name:contains={quote(family[3:12])}",
        "Patient?birthdate=ge1957-11-01&birthdate=le1957-11-30",
        f"Patient?identifier={quote(MRN_SYSTEM + '|' + first['identifier'][0]['value'], safe='')}",
        f"Patient?identifier={quote(first['identifier'][1]['value'])}",
        f"Patient?telecom={quote(first['telecom'][0]['value'])}",
        f"Patient?address={quote(first['address'][0]['line'][0])}",
        f"Observation?subject:Patient.name={quote(family)}&_include=Observation:subject",
        f"Observation?patient.identifier={quote(first['identifier'][0]['value'])}",
        f"Patient?family={quote(family)}&_revinclude=Observation:subject&_count=1",
    ]
    for query in searches:
        response = call("search", "GET", f"{a_base}/{query}")
        assert response.status_code == 200, (query, response.text)
    form = {"family": family, "birthdate": first["birthDate"]}
    call("search (POST)", "POST", f"{a_base}/Patient/_search", data=form)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient?family={quote(p['name'][0]['family'])}"}}
            for p in patients
        ],
    }
    call("batch search", "POST", a_base, json=batch, headers=fhir_json)

    # Reading, versions, history, $everything
    for patient_id in ids:
        call("read", "GET", f"{a_base}/Patient/{patient_id}")
        call("vread", "GET", f"{a_base}/Patient/{patient_id}/_history/1")
    call("$everything", "GET", f"{a_base}/Patient/{ids[0]}/$everything")

    # Updating (a new given name), patching (a corrected birth date), deleting
    renamed = {**patients[1], "id": ids[1]}
    renamed["name"] = [{"family": patients[1]["name"][0]["family"], "given": [f"Perpetua{tag}"]}]
    work.phi |= phi_of(renamed)
    call(
        "update",
        "PUT",
        f"{a_base}/Patient/{ids[1]}",
        json=renamed,
        headers={**fhir_json, "If-Match": 'W/"1"'},
    )
    patch = [{"op": "replace", "path": "/birthDate", "value": "1957-11-24"}]
    work.phi.add("1957-11-24")
    call(
        "patch",
        "PATCH",
        f"{a_base}/Patient/{ids[0]}",
        data=json.dumps(patch),
        headers={"Content-Type": "application/json-patch+json"},
    )
    call("history", "GET", f"{a_base}/Patient/{ids[0]}/_history")
    call("type history", "GET", f"{a_base}/Patient/_history?_count=5")
    identifier = patients[2]["identifier"][1]
    conditional = {**patients[2], "gender": "other"}
    call(
        "conditional update",
        "PUT",
        f"{a_base}/Patient?identifier={quote(identifier['system'] + '|' + identifier['value'], safe='')}",
        json=conditional,
        headers=fhir_json,
    )
    call("delete", "DELETE", f"{a_base}/Patient/{ids[2]}")
    call("read deleted", "GET", f"{a_base}/Patient/{ids[2]}")
    call(
        "conditional delete",
        "DELETE",
        f"{a_base}/Patient?identifier={quote(MRN_SYSTEM + '|PHI-MRN-' + tag + '-9', safe='')}",
    )

    # Errors that carry PHI: invalid resources, malformed JSON, failed conditions and patches
    invalid_patient = {
        "resourceType": "Patient",
        "name": [{"family": f"Invalidfamily{tag}", "given": [f"Invalidgiven{tag}"]}],
        "birthDate": f"19-bogus-{tag}",
    }
    work.phi |= {f"Invalidfamily{tag}", f"Invalidgiven{tag}", f"19-bogus-{tag}"}
    call("invalid resource", "POST", f"{a_base}/Patient", json=invalid_patient, headers=fhir_json)
    unknown_element = {"resourceType": "Patient", "nickname": f"Secretnickname{tag}"}
    work.phi.add(f"Secretnickname{tag}")
    call("unknown element", "POST", f"{a_base}/Patient", json=unknown_element, headers=fhir_json)
    work.phi.add(f"Brokenjsonname{tag}")
    call(
        "malformed JSON",
        "POST",
        f"{a_base}/Patient",
        data=f'{{"resourceType":"Patient","name":[{{"family":"Brokenjsonname{tag}"'.encode(),
        headers=fhir_json,
    )
    call(
        "type mismatch",
        "PUT",
        f"{a_base}/Observation/{ids[0]}",
        json={**patients[0], "id": ids[0]},
        headers=fhir_json,
    )
    call(
        "failed patch",
        "PATCH",
        f"{a_base}/Patient/{ids[0]}",
        data=json.dumps([{"op": "test", "path": "/birthDate", "value": first["birthDate"]}]),
        headers={"Content-Type": "application/json-patch+json"},
    )
    call(
        "stale If-Match",
        "PUT",
        f"{a_base}/Patient/{ids[0]}",
        json={**first, "id": ids[0]},
        headers={**fhir_json, "If-Match": 'W/"1"'},
    )
    work.phi.add(f"PHI-MRN-{tag}-404")
    reference = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    **observation,
                    "subject": {"reference": f"Patient?identifier=PHI-MRN-{tag}-404"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    call("unresolvable conditional reference", "POST", a_base, json=reference, headers=fhir_json)
    call("bad date in search", "GET", f"{a_base}/Patient?birthdate=1957-13-45&family={quote(family)}")
    call(
        "strict unknown parameter",
        "GET",
        f"{a_base}/Patient?nickname={quote(family)}",
        headers={"Prefer": "handling=strict"},
    )
    call("unknown type", "GET", f"{a_base}/Person2?name={quote(family)}")
    call("unknown id", "GET", f"{a_base}/Patient/{uuid.uuid4()}")
    call("wrong media type", "PATCH", f"{a_base}/Patient/{ids[0]}", json=patch)
    # Refused callers with PHI in the request: another tenant's token, no token, a broken token
    other = {"Authorization": f"Bearer {b_token}"}
    call("other tenant search", "GET", f"{a_base}/Patient?family={quote(family)}", headers=other)
    call("other tenant create", "POST", f"{a_base}/Patient", json=patients[0], headers={**fhir_json, **other})
    call("no token", "GET", f"{a_base}/Patient?family={quote(family)}", headers={"Authorization": ""})
    call(
        "broken token",
        "GET",
        f"{a_base}/Patient?name={quote(given[0])}",
        headers={"Authorization": "Bearer not.a.token"},
    )

    # A real record last: every write after it would pay for its size in the emulated table
    record = json.loads((SYNTHEA / SYNTHEA_RECORD).read_text())
    synthea_patient = record["entry"][0]["resource"]
    work.phi |= phi_of(synthea_patient)
    response = call("transaction (Synthea)", "POST", a_base, data=json.dumps(record), headers=fhir_json)
    assert response.status_code == 200, response.text[:1000]
    synthea_family = synthea_patient["name"][0]["family"]
    call("search (Synthea)", "GET", f"{a_base}/Patient?family={quote(synthea_family)}&birthdate=1984-07-02")
    ssn = next(i["value"] for i in synthea_patient["identifier"] if "ssn" in i.get("system", ""))
    call("search (Synthea SSN)", "GET", f"{a_base}/Patient?identifier={quote(ssn)}&_revinclude=*")
    return work


@pytest.fixture(scope="module")
def workload(server: DebugServer) -> tuple[Workload, str]:
    """Run the workload, stop the server (flushing everything it would write), return its output."""
    work = run_workload(server)
    server.stop()
    return work, server.output()


# -- the tests -------------------------------------------------------------------------------------


def forms_of(value: str) -> set[str]:
    """How a value could show up in a log: as sent, URL-encoded, case-folded (as search indexes it)."""
    return {value, quote(value, safe=""), quote_plus(value), value.lower(), value.upper()}


def test_the_server_logged_at_debug_while_serving_the_workload(workload: tuple[Workload, str]) -> None:
    # Given the workload ran against `ehr local` with POWERTOOLS_LOG_LEVEL=DEBUG
    work, output = workload
    # Then the functions really wrote debug records for it (the check below is not vacuous)
    assert len(work.answers) > 50
    debug_lines = [line for line in output.splitlines() if '"level":"DEBUG"' in line.replace(" ", "")]
    assert debug_lines, output[-3000:]


def test_no_patient_name_birth_date_or_identifier_reaches_the_logs(
    workload: tuple[Workload, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given every PHI value the clients sent, When the server's stdout and stderr are searched
    work, output = workload
    haystack = output + "\n" + output.lower()
    hits = {
        value: [
            line[:240]
            for line in output.splitlines()
            if any(f in line or f in line.lower() for f in forms_of(value))
        ][:2]
        for value in sorted(work.phi)
        if any(form in haystack for form in forms_of(value))
    }
    with capsys.disabled():
        print(
            f"\nphi-safe logs: {len(work.answers)} requests, {len(work.phi)} PHI values, "
            f"{len(output.splitlines())} log lines searched, {len(hits)} hits"
        )
    # Then none of them is there
    assert len(work.phi) > 30
    assert not hits, json.dumps(hits, indent=1)


def test_error_answers_never_carry_a_stack_trace_or_internals(workload: tuple[Workload, str]) -> None:
    # Given every error the workload provoked (4xx, and any 5xx)
    work, _ = workload
    errors = [(label, r) for label, r in work.answers if r.status_code >= 400]
    assert len(errors) >= 15
    # Then each is an OperationOutcome without a trace or the server's module names
    leaky = {
        f"{label} {r.status_code}": [marker for marker in INTERNALS if marker in r.text]
        for label, r in errors
        if any(marker in r.text for marker in INTERNALS)
    }
    assert not leaky, leaky
    not_outcomes = [label for label, r in errors if r.json().get("resourceType") != "OperationOutcome"]
    assert not not_outcomes


def test_no_request_of_the_workload_failed_on_the_server(workload: tuple[Workload, str]) -> None:
    work, _ = workload
    failed = {label: (r.status_code, r.text[:300]) for label, r in work.answers if r.status_code >= 500}
    assert not failed, failed
