"""Lab-order loop through local mode: orders per second, and the latency each step adds.

Boots the platform in-process (moto, the real handlers, the real ASL on moto's Step Functions),
registers a lab whose webhook answers AA at once and posts the final ORU back through the HL7
endpoint from another thread (no simulated delay), then places ``--orders`` lab orders through
the FHIR API, ``--concurrency`` at a time. For each order it measures create → Task completed;
from each execution's history, how long each state took (StateEntered → StateExited). As the
yardstick measured side by side in the same run, it times plain ``POST Patient`` calls.

    .venv/bin/python tests/bench/bench_lab_loop.py [--orders 40] [--concurrency 4]

Writes tests/bench/results/lab_loop.json. Local-mode figures: they show where the time goes
(moto's Step Functions interpreter, the stream poll interval), not what AWS would do.
"""

from __future__ import annotations

import argparse
import json
import platform as platform_module
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "ehr")]

import boto3  # noqa: E402

from ehr.hl7v2 import er7  # noqa: E402
from infra.local.issuer import DevIssuer  # noqa: E402
from infra.local.platform import LocalPlatform, seed_lab_partner  # noqa: E402

RESULTS = ROOT / "tests" / "bench" / "results" / "lab_loop.json"
CLINIC = "clinic-a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    issuer = DevIssuer(Path(tempfile.mkdtemp(prefix="ehr-bench-")) / "issuer.pem")
    local = LocalPlatform(issuer=issuer, seed=True, lab_simulator=False)
    gateway = local.boot()
    assert local.resources is not None
    clinic = issuer.mint(tenant=CLINIC, scope="user/*.cruds")
    lab_token = issuer.mint(tenant="acme-lab", scope="system/*.cruds", client_id="acme-lab-system")

    def call(
        token: str, method: str, path: str, body: Any, content_type: str = "application/fhir+json"
    ) -> Any:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        result = gateway.handle(
            method,
            path,
            {"Authorization": f"Bearer {token}", "Content-Type": content_type, "Host": "localhost"},
            payload,
        )
        return result.status, json.loads(result.body) if result.body[:1] == b"{" else result.body

    def answer(orm: er7.Message) -> None:
        placer = orm.first("OBR").get(2)
        mrn = orm.first("PID").get(3)
        oru = "\r".join(
            [
                f"MSH|^~\\&|ACMELAB|acme-lab|EHR|{CLINIC}|20260101||ORU^R01^ORU_R01|{uuid.uuid4().hex[:18]}|P|2.5.1",
                f"PID|1||{mrn}^^^LAB^MR||BENCH^LAB",
                f"OBR|1|{placer}^{CLINIC}|F{placer[:10]}^ACME|2345-7^Glucose^LN|||20260101||||||||||||||||||F",
                "OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|70-99|N|||F",
            ]
        ).encode()
        call(lab_token, "POST", "/tenants/acme-lab/hl7v2", oru, "x-application/hl7-v2+er7")

    class Lab(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            orm = er7.parse(body.decode())
            ack = f"MSH|^~\\&|ACMELAB|acme-lab|EHR|x|2026||ACK^O01^ACK|1|P|2.5.1\rMSA|AA|{orm.control_id}"
            ack_bytes = ack.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(ack_bytes)))
            self.end_headers()
            self.wfile.write(ack_bytes)
            if orm.first("ORC").get(1) == "NW":
                threading.Thread(target=answer, args=(orm,), daemon=True).start()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Lab)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seed_lab_partner(local.resources, f"http://127.0.0.1:{server.server_address[1]}/orders", b"bench-secret")
    _, found = call(
        clinic, "GET", f"/tenants/{CLINIC}/fhir/Organization?identifier=urn:ehr:partner|acme-lab", b""
    )
    lab_org = found["entry"][0]["resource"]["id"]

    def one_order(_: int) -> tuple[float, float]:
        started = time.perf_counter()
        _, patient = call(
            clinic,
            "POST",
            f"/tenants/{CLINIC}/fhir/Patient",
            {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:bench", "value": uuid.uuid4().hex}],
                "name": [{"family": "Bench", "given": ["Lab"]}],
                "birthDate": "1980-01-01",
                "gender": "other",
            },
        )
        patient_ms = (time.perf_counter() - started) * 1000
        _, doctor = call(
            clinic,
            "POST",
            f"/tenants/{CLINIC}/fhir/Practitioner",
            {"resourceType": "Practitioner", "name": [{"family": "B"}]},
        )
        order = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": f"Patient/{patient['id']}"},
            "requester": {"reference": f"Practitioner/{doctor['id']}"},
            "performer": [{"reference": f"Organization/{lab_org}"}],
        }
        placed = time.perf_counter()
        _, sr = call(clinic, "POST", f"/tenants/{CLINIC}/fhir/ServiceRequest", order)
        while time.perf_counter() - placed < 60:
            _, tasks = call(
                clinic, "GET", f"/tenants/{CLINIC}/fhir/Task?identifier=urn:ehr:lab-order|{sr['id']}", b""
            )
            entries = tasks.get("entry") or []
            if entries and entries[0]["resource"]["status"] == "completed":
                return (time.perf_counter() - placed) * 1000, patient_ms
            time.sleep(0.05)
        raise RuntimeError(f"order did not complete in 60 s: {diagnose(sr['id'])}")

    def diagnose(sr_id: str) -> str:
        from ehr.store.lab_orders import DynamoLabOrders

        assert local.resources is not None
        record = DynamoLabOrders(local.resources.records_table).get(CLINIC, sr_id)
        _, tasks = call(
            clinic, "GET", f"/tenants/{CLINIC}/fhir/Task?identifier=urn:ehr:lab-order|{sr_id}", b""
        )
        sfn = boto3.client("stepfunctions")
        runs = sfn.list_executions(stateMachineArn=local.resources.lab_order_state_machine_arn)["executions"]
        last = [
            (e["type"], (e.get("stateEnteredEventDetails") or {}).get("name"))
            for r in runs
            for e in sfn.get_execution_history(executionArn=r["executionArn"])["events"][-4:]
        ]
        status = [
            (e["resource"].get("status"), e["resource"].get("statusReason")) for e in tasks.get("entry", [])
        ]
        return f"order record {record}; task {status}; executions {[r['status'] for r in runs]}; last {last}"

    one_order(0)  # warm up: imports, first execution
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        timings = list(pool.map(one_order, range(args.orders)))
    elapsed = time.perf_counter() - started
    loop_ms = [t[0] for t in timings]
    create_ms = [t[1] for t in timings]

    sfn = boto3.client("stepfunctions")
    steps: dict[str, list[float]] = defaultdict(list)
    executions = sfn.list_executions(stateMachineArn=local.resources.lab_order_state_machine_arn)[
        "executions"
    ]
    for execution in executions:
        entered: dict[str, datetime] = {}
        for event in sfn.get_execution_history(executionArn=execution["executionArn"])["events"]:
            details = event.get("stateEnteredEventDetails") or event.get("stateExitedEventDetails")
            if not details:
                continue
            name = details["name"]
            if event["type"].endswith("StateEntered"):
                entered[name] = event["timestamp"]
            elif name in entered:
                steps[name].append((event["timestamp"] - entered.pop(name)).total_seconds() * 1000)
    server.shutdown()
    local.stop()

    report = {
        "benchmark": "lab-order loop through local mode (FHIR create -> ... -> Task completed)",
        "command": ".venv/bin/python tests/bench/bench_lab_loop.py --orders N --concurrency C",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform_module.python_version(), "cpus": __import__("os").cpu_count()},
        "orders": args.orders,
        "concurrency": args.concurrency,
        "orders_per_second": round(args.orders / elapsed, 2),
        "loop_ms": {
            "median": round(statistics.median(loop_ms)),
            "p90": round(sorted(loop_ms)[int(0.9 * len(loop_ms)) - 1]),
        },
        "yardstick_post_patient_ms_median": round(statistics.median(create_ms), 1),
        "loop_over_one_create": round(statistics.median(loop_ms) / statistics.median(create_ms), 1),
        "state_ms_median": {
            name: round(statistics.median(values), 1) for name, values in sorted(steps.items())
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
