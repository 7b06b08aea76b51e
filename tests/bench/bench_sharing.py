"""Cross-facility sharing through local mode: notification latency, and what sharing adds to reads.

Boots the platform in-process (moto, the real handlers, the records-stream poller, EventBridge
rules dispatched to the real sharing_notifier) and registers ``--persons`` people at clinic-a and
clinic-b (same SSN, so the patient index links them), each with a Subscription at clinic-b on its
own patient's Observations and a Consent at clinic-a for clinic-b. Then, measured side by side in
the same run:

- notification latency: an Observation created at clinic-a → the signed delivery at clinic-b's
  receiver (the cross-facility path), against an Observation created at clinic-b → the same
  receiver (the own-tenant path): both go through the stream poller, the bus and the notifier;
- ``$everything`` of clinic-b's patient with the consent active (its own and clinic-a's records)
  against the same call after the consent is revoked (its own records only);
- ``Patient/$match`` against a plain ``Patient?identifier=`` search.

    .venv/bin/python tests/bench/bench_sharing.py [--persons 20] [--rounds 5]

Writes tests/bench/results/sharing.json. Local-mode figures: the stream is polled every 0.3 s,
so latencies show the emulation's cadence, not AWS's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as platform_module
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "ehr")]

from ehr.sharing.consent import sharing_consent  # noqa: E402
from infra.local.issuer import DevIssuer  # noqa: E402
from infra.local.platform import LocalPlatform  # noqa: E402
from infra.local.webhook_receiver import WebhookReceiver  # noqa: E402

RESULTS = ROOT / "tests" / "bench" / "results" / "sharing.json"
FAMILIES = ("Nguyen", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Silva", "Kowalski", "Haddad")
GIVEN = ("Ana", "Chidi", "Maja", "Louis", "Yui", "Rafael", "Zofia", "Omar", "Ines")
A, B = "clinic-a", "clinic-b"


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(values),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ehr-bench-"))
    os.environ["EHR_HOME"] = str(home)
    issuer = DevIssuer(home / "issuer.pem")
    local = LocalPlatform(issuer=issuer, seed=True, lab_simulator=False)
    gateway = local.boot()
    tokens = {t: issuer.mint(tenant=t, scope="user/*.cruds") for t in (A, B)}

    def call(tenant: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        result = gateway.handle(
            method,
            f"/tenants/{tenant}/fhir/{path}",
            {
                "Authorization": f"Bearer {tokens[tenant]}",
                "Content-Type": "application/fhir+json",
                "Host": "x",
            },
            payload,
        )
        return result.status, json.loads(result.body) if result.body[:1] == b"{" else None

    def create(tenant: str, resource: dict[str, Any]) -> dict[str, Any]:
        status, body = call(tenant, "POST", resource["resourceType"], resource)
        assert status == 201, body
        return dict(body)

    key = (home / "subscriptions" / f"{B}.key").read_text().strip().encode()
    receiver = WebhookReceiver(key)
    receiver.start()
    _, orgs = call(A, "GET", f"Organization?identifier=urn:ehr:tenant|{B}")
    org_b = orgs["entry"][0]["resource"]["id"]

    people = []
    for n in range(args.persons):
        ssn = f"7{uuid.uuid4().int % 10**8:08d}"
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}],
            "name": [{"family": FAMILIES[n % len(FAMILIES)], "given": [GIVEN[n % len(GIVEN)]]}],
            "birthDate": f"19{50 + n % 40:02d}-{1 + n % 12:02d}-{1 + n % 28:02d}",
            "gender": ("female", "male")[n % 2],
        }
        pa, pb = create(A, patient), create(B, patient)
        create(
            B,
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "bench",
                "criteria": f"Observation?patient={pb['id']}",
                "channel": {
                    "type": "rest-hook",
                    "endpoint": receiver.url,
                    "payload": "application/fhir+json",
                },
            },
        )
        consent = create(A, sharing_consent(pa["id"], org_b))
        people.append((patient, pa, pb, consent))
    time.sleep(3)  # the stream poller indexes the patients before the first measurement

    def observation(patient_id: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "valueQuantity": {"value": 90, "unit": "mg/dL"},
        }

    def delivered_after(tenant: str, patient_id: str) -> float:
        before = len(receiver.accepted)
        started = time.perf_counter()
        created = create(tenant, observation(patient_id))
        deadline = started + 30
        while time.perf_counter() < deadline:
            if any(f"Observation/{created['id']}" in d.body.decode() for d in receiver.accepted[before:]):
                return time.perf_counter() - started
            time.sleep(0.01)
        raise TimeoutError(f"no delivery for {tenant}/Observation/{created['id']}")

    cross, own = [], []
    for _, pa, pb, _ in people:  # interleaved: both paths see the same machine load
        cross.append(delivered_after(A, pa["id"]))
        own.append(delivered_after(B, pb["id"]))

    def timed(tenant: str, method: str, path: str, body: Any = None) -> float:
        started = time.perf_counter()
        status, reply = call(tenant, method, path, body)
        assert status == 200, reply
        return time.perf_counter() - started

    shared_reads, matches, searches = [], [], []
    for _ in range(args.rounds):
        for patient, _, pb, _ in people:
            shared_reads.append(timed(B, "GET", f"Patient/{pb['id']}/$everything"))
            parameters = {
                "resourceType": "Parameters",
                "parameter": [{"name": "resource", "resource": patient}],
            }
            matches.append(timed(B, "POST", "Patient/$match", parameters))
            ssn = patient["identifier"][0]["value"]
            searches.append(timed(B, "GET", f"Patient?identifier=http://hl7.org/fhir/sid/us-ssn|{ssn}"))
    for _, _, _, consent in people:
        status, body = call(A, "PUT", f"Consent/{consent['id']}", {**consent, "status": "inactive"})
        assert status == 200, body
    own_reads = [
        timed(B, "GET", f"Patient/{pb['id']}/$everything")
        for _ in range(args.rounds)
        for _, _, pb, _ in people
    ]
    receiver.stop()
    local.stop()

    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform_module.python_version(), "cpus": os.cpu_count()},
        "command": "python tests/bench/bench_sharing.py " + " ".join(sys.argv[1:]),
        "persons": args.persons,
        "notification_latency": {
            "cross_facility": summary(cross),
            "own_tenant": summary(own),
            "ratio_cross_to_own_median": round(statistics.median(cross) / statistics.median(own), 2),
        },
        "everything": {
            "with_consent_own_and_shared": summary(shared_reads),
            "after_revocation_own_only": summary(own_reads),
            "ratio_median": round(statistics.median(shared_reads) / statistics.median(own_reads), 2),
        },
        "match_vs_identifier_search": {
            "match": summary(matches),
            "search": summary(searches),
            "ratio_median": round(statistics.median(matches) / statistics.median(searches), 2),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
