"""Validation throughput over the shared Synthea bundles (a measurement, not a test).

    .venv/bin/python tests/bench/bench_validation.py [--runs 5]

Prints resources per second for: each transaction Bundle through ``validate_bundle`` (what
``POST [base]`` pays), each entry resource through ``validate_resource`` (what ``POST [type]``
pays), and the two halves of the latter: the definitions-driven walk and the R4B pydantic model.
Parsing (``parse_json``) is measured separately. Best of ``--runs`` timings is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ehr.fhir.validation import parse_json, validate_bundle, validate_resource
from ehr.fhir.validation.issues import Issues
from ehr.fhir.validation.model import model_issues
from ehr.fhir.validation.structure import Walker

SYNTHEA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea"


def _best(runs: int, work: Callable[[], None]) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    files = sorted(SYNTHEA.glob("*.json"))
    if not files:
        print(f"No Synthea bundles under {SYNTHEA}", file=sys.stderr)
        return 2
    raw = [f.read_bytes() for f in files]
    bundles: list[dict[str, Any]] = [parse_json(b) for b in raw]
    resources = [e["resource"] for b in bundles for e in b["entry"]]
    count = len(resources)
    megabytes = sum(len(b) for b in raw) / 1e6

    def parse() -> None:
        for body in raw:
            parse_json(body)

    def bundles_() -> None:
        for bundle in bundles:
            validate_bundle(bundle)

    def each() -> None:
        for resource in resources:
            validate_resource(resource)

    def walk() -> None:
        for resource in resources:
            Walker(Issues()).resource(resource, resource["resourceType"], resource["resourceType"])

    def model() -> None:
        for resource in resources:
            list(model_issues(resource, resource["resourceType"], resource["resourceType"], set()))

    each()  # warm up: definitions loaded, structures built
    print(f"{count} resources in {len(files)} Synthea bundles ({megabytes:.1f} MB); best of {args.runs}")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.system()})")
    rows = [
        ("parse_json (bytes -> JSON)", parse),
        ("validate_bundle (whole transactions)", bundles_),
        ("validate_resource (each entry)", each),
        ("  walk: R4 definitions, bindings, invariants", walk),
        ("  R4B pydantic model on a copy", model),
    ]
    results = {}
    for label, work in rows:
        seconds = _best(args.runs, work)
        results[label] = seconds
        print(f"{label:48s} {count / seconds:8.0f} resources/s  ({seconds * 1000:7.1f} ms)")
    per_resource = statistics.fmean([results[rows[2][0]] / count * 1e6])
    print(f"mean per resource (validate_resource): {per_resource:.0f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
