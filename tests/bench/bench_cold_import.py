"""Cold import of each Lambda handler module against a bare Powertools handler.

Each sample is a fresh interpreter that imports one module and reports how long the import
took (interpreter start-up excluded). Samples of all modules are interleaved so that noise on
this 2-core machine hits them alike; the report gives medians and the ratio to the baseline.

    .venv/bin/python tests/bench/bench_cold_import.py [--runs 15]

Writes tests/bench/results/cold_import.json and prints a table. Target: ratio <= 3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "layers" / "ehr")]

from ehr import names  # noqa: E402
from ehr.settings import (  # noqa: E402
    AuditArchiverSettings,
    AuthorizerSettings,
    DiscoverySettings,
    FhirApiSettings,
    environment_for,
)
from infra.local.issuer import DevIssuer  # noqa: E402

TARGET_RATIO = 3.0
PROBE = (
    "import importlib, sys, time\n"
    "sys.path[:0] = sys.argv[2].split(':')\n"
    "t = time.perf_counter()\n"
    "importlib.import_module(sys.argv[1])\n"
    "print(time.perf_counter() - t)\n"
)


def environment(issuer: DevIssuer) -> dict[str, str]:
    auth = {"issuer": issuer.issuer, "audience": issuer.audience, "jwks_json": json.dumps(issuer.jwks())}
    return {
        **os.environ,
        **environment_for(AuthorizerSettings, **auth),
        **environment_for(DiscoverySettings, **auth),
        **environment_for(
            FhirApiSettings,
            records_table="bench-records",
            audit_table="bench-audit",
            cursor_secret_name="bench-cursor-key",
            **auth,
        ),
        **environment_for(AuditArchiverSettings, archive_bucket="bench-archive"),
        "AWS_DEFAULT_REGION": "eu-west-1",
        "POWERTOOLS_SERVICE_NAME": "bench",
        "PYTHONDONTWRITEBYTECODE": "0",
    }


def sample(module: str, paths: str, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module, paths],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "bench" / "results" / "cold_import.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        env = environment(DevIssuer(Path(home) / "key.pem"))
        modules = {"bare Powertools handler": ("bare_powertools_handler", str(REPO / "tests" / "bench"))}
        for function in names.FUNCTIONS:
            module = names.handler_path(function).rpartition(".")[0]
            modules[function] = (module, f"{REPO / 'functions'}:{REPO / 'layers' / 'ehr'}")
        for module, paths in modules.values():  # warm the bytecode caches once
            sample(module, paths, env)
        samples: dict[str, list[float]] = {name: [] for name in modules}
        for _ in range(args.runs):
            for name, (module, paths) in modules.items():
                samples[name].append(sample(module, paths, env))

    baseline = statistics.median(samples["bare Powertools handler"])
    results = {
        name: {
            "median_ms": round(statistics.median(values) * 1000, 1),
            "p90_ms": round(sorted(values)[int(0.9 * (len(values) - 1))] * 1000, 1),
            "ratio_to_bare": round(statistics.median(values) / baseline, 2),
        }
        for name, values in samples.items()
    }
    report = {
        "benchmark": "cold import of each handler module vs a bare Powertools handler",
        "command": "make bench  (or: .venv/bin/python tests/bench/bench_cold_import.py --runs N)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.system()},
        "runs": args.runs,
        "target_ratio": TARGET_RATIO,
        "results": results,
        "all_within_target": all(r["ratio_to_bare"] <= TARGET_RATIO for r in results.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'module':<26}{'median ms':>10}{'p90 ms':>9}{'ratio':>8}")
    for name, result in results.items():
        print(f"{name:<26}{result['median_ms']:>10}{result['p90_ms']:>9}{result['ratio_to_bare']:>8}")
    verdict = "met" if report["all_within_target"] else "NOT met"
    print(f"target ratio <= {TARGET_RATIO}: {verdict}; wrote {args.out}")


if __name__ == "__main__":
    main()
