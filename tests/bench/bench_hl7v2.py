"""ORU^R01 → FHIR conversion throughput against bare python-hl7 and hl7apy parsing (a measurement,
not a test).

    .venv/bin/python tests/bench/bench_hl7v2.py [--rounds 7] [--seconds 0.3]

Corpus: every ORU^R01 message in the shared data folder (``../shared/data/hl7v2`` and the ORU
reference pairs), plus python-hl7's sample ORU (embedded below, so the corpus is never empty). All
contenders get the same message text (segments joined by CR), in one process, interleaved round by
round (so a slow moment of the machine hits every contender alike):

- ``python-hl7``: ``hl7.parse(text)`` — the yardstick (ratio 1.0);
- ``ours``: ``er7.parse`` + ``structure.check`` (hl7apy's definitions, cached) + ``map_oru``,
  the transaction Bundle the inbound service commits
  (the headline: the FHIR API validates the Bundle itself when it commits it);
- ``ours + model``: the same plus ``fhir.resources`` R4B ``model_validate`` of every entry;
- ``hl7apy``: ``hl7apy.parser.parse_message(text)`` as usually called (groups found, no mapping).

Ratios are messages/s of a contender over python-hl7's in the same round; the median round is
reported. A 1 MB base64 ED result (an embedded PDF) is also mapped: best time and tracemalloc peak.
Results go to ``tests/bench/results/hl7v2.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import hl7
from fhir.resources.R4B import get_fhir_model_class
from hl7apy.parser import parse_message

from ehr.hl7v2 import er7, structure
from ehr.hl7v2.mapping import MappingContext
from ehr.hl7v2.mapping.oru import map_oru

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "hl7v2.json"
TARGET_RATIO = 0.25

# python-hl7's sample ORU^R01 (tests/samples.py "sample_hl7", from the HL7 v2.4 standard's example).
PYTHON_HL7_SAMPLE = "\r".join(
    (
        "MSH|^~\\&|GHH LAB|ELAB-3|GHH OE|BLDG4|200202150930||ORU^R01|CNTRL-3456|P|2.4",
        "PID|||555-44-4444||EVERYWOMAN^EVE^E^^^^L|JONES|196203520|F|||153 FERNWOOD DR.^^STATESVILLE^OH^35292"
        "||(206)3345232|(206)752-121||||AC555444444||67-A4335^OH^20030520",
        "OBR|1|845439^GHH OE|1045813^GHH LAB|1554-5^GLUCOSE|||200202150730||||||||555-55-5555^PRIMARY^"
        "PATRICIA P^^^^MD^^LEVEL SEVEN HEALTHCARE, INC.|||||||||F||||||"
        "444-44-4444^HIPPOCRATES^HOWARD H^^^^MD",
        "OBX|1|SN|1554-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN||^182|mg/dl|70_105|H|||F",
        "OBX|2|FN|1553-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN||^182|mg/dl|70_105|H|||F",
    )
)


def corpus() -> tuple[list[str], list[str]]:
    """(message texts, source names): the shared ORU^R01 samples plus python-hl7's sample."""
    texts, names = [PYTHON_HL7_SAMPLE], ["python-hl7 sample (embedded)"]
    paths = sorted((SHARED / "hl7v2").glob("*.hl7")) + sorted((SHARED / "hl7v2-to-fhir").glob("*.hl7"))
    for path in paths:
        if path.name.startswith("python-hl7__sample_hl7"):
            continue  # the embedded copy
        try:
            messages, _ = er7.split_messages(er7.decode(path.read_bytes()))
            for text in messages:
                parsed = er7.parse(text)
                if (parsed.message_type, parsed.trigger_event) == ("ORU", "R01"):
                    context = MappingContext("bench", parsed.sending_application, parsed.sending_facility)
                    map_oru(parsed, context)  # only messages that map (no MappingError) are timed
                    texts.append(text)
                    names.append(path.name)
        except (er7.Er7Error, ValueError):
            continue
    return texts, names


def ours(texts: list[str]) -> Callable[[], None]:
    def run() -> None:
        for text in texts:
            parsed = er7.parse(text)
            structure.check(parsed)  # hl7apy's definition of the message, as the endpoint checks it
            map_oru(parsed, MappingContext("bench", parsed.sending_application, parsed.sending_facility))

    return run


def ours_validated(texts: list[str]) -> Callable[[], None]:
    def run() -> None:
        for text in texts:
            parsed = er7.parse(text)
            mapping = map_oru(
                parsed, MappingContext("bench", parsed.sending_application, parsed.sending_facility)
            )
            for entry in mapping.bundle["entry"]:
                body = entry["resource"]
                get_fhir_model_class(body["resourceType"]).model_validate(body)

    return run


def python_hl7(texts: list[str]) -> Callable[[], None]:
    def run() -> None:
        for text in texts:
            hl7.parse(text)

    return run


def hl7apy_parse(texts: list[str]) -> Callable[[], None]:
    def run() -> None:
        for text in texts:
            try:
                parse_message(text)
            except Exception:  # hl7apy rejects some real messages; counted separately
                continue

    return run


def hl7apy_failures(texts: list[str]) -> int:
    failed = 0
    for text in texts:
        try:
            parse_message(text)
        except Exception:
            failed += 1
    return failed


def timed(work: Callable[[], None], seconds: float) -> float:
    """Messages-of-corpus passes per second: run ``work`` repeatedly for about ``seconds``."""
    passes, start = 0, time.perf_counter()
    while True:
        work()
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return passes / elapsed


def ed_message(size: int = 1_000_000) -> str:
    payload = base64.b64encode(os.urandom(size * 3 // 4)).decode("ascii")
    return "\r".join(
        (
            "MSH|^~\\&|LAB|FAC|EHR|CLINIC|20240301101500-0500||ORU^R01^ORU_R01|ED1|P|2.5.1",
            "PID|1||MRN1^^^HOSP^MR||Doe^Jane||19800102|F",
            "OBR|1|PL1^EHR|FI1^LAB|11502-2^Laboratory report^LN|||20240301080000-0500||||||||||||||||||F",
            f"OBX|1|ED|11502-2^Laboratory report^LN||LAB^AP^PDF^Base64^{payload}||||||F",
        )
    )


def ed_figures(runs: int) -> dict[str, Any]:
    text = ed_message()

    def once() -> None:
        parsed = er7.parse(text)
        map_oru(parsed, MappingContext("bench", parsed.sending_application, parsed.sending_facility))

    once()
    best = min(_seconds(once) for _ in range(runs))
    tracemalloc.start()
    once()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "message_bytes": len(text),
        "best_ms": round(best * 1000, 2),
        "peak_traced_mb": round(peak / 1e6, 2),
        "peak_over_message": round(peak / len(text), 2),
    }


def _seconds(work: Callable[[], None]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3, help="time per contender per round")
    args = parser.parse_args()
    texts, names = corpus()
    count = len(texts)
    contenders = {
        "python-hl7 hl7.parse": python_hl7(texts),
        "ours: er7.parse + structure.check + map_oru": ours(texts),
        "ours + fhir.resources model_validate": ours_validated(texts),
        "hl7apy parse_message": hl7apy_parse(texts),
    }
    for work in contenders.values():
        work()  # warm up: imports, hl7apy's structure tables, pydantic models
    rates: dict[str, list[float]] = {label: [] for label in contenders}
    for _ in range(args.rounds):
        for label, work in contenders.items():
            rates[label].append(timed(work, args.seconds) * count)
    base = rates["python-hl7 hl7.parse"]
    results: dict[str, Any] = {}
    print(f"{count} ORU^R01 messages ({len(set(names))} sources), {args.rounds} interleaved rounds")
    print(
        f"python {platform.python_version()} on {platform.machine()} ({platform.system()}),"
        f" {os.cpu_count()} cpus"
    )
    for label, values in rates.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        results[label] = {
            "messages_per_s_median": round(statistics.median(values)),
            "ratio_to_python_hl7_median": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
        }
        print(
            f"{label:40s} {statistics.median(values):9.0f} msg/s   ratio {statistics.median(ratios):6.3f}"
            f"  (rounds {min(ratios):.3f}..{max(ratios):.3f})"
        )
    ed = ed_figures(runs=5)
    print(
        f"1 MB ED OBX (base64 PDF): {ed['best_ms']} ms best of 5, tracemalloc peak {ed['peak_traced_mb']} MB "
        f"({ed['peak_over_message']}x the message)"
    )
    failed = hl7apy_failures(texts)
    headline = results["ours: er7.parse + structure.check + map_oru"]["ratio_to_python_hl7_median"]
    report = {
        "benchmark": "ORU^R01 -> FHIR transaction Bundle vs a bare python-hl7 parse of the same messages",
        "command": ".venv/bin/python tests/bench/bench_hl7v2.py [--rounds N] [--seconds S]",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "system": platform.system(),
            "cpus": os.cpu_count(),
        },
        "packages": {p: _version(p) for p in ("hl7", "hl7apy", "fhir.resources", "pydantic")},
        "corpus": {"messages": count, "sources": sorted(set(names)), "hl7apy_failures": failed},
        "rounds": args.rounds,
        "seconds_per_contender_per_round": args.seconds,
        "headline": "ours: er7.parse + structure.check + map_oru (the API validates the Bundle on commit)",
        "target_ratio": TARGET_RATIO,
        "headline_ratio": headline,
        "within_target": headline >= TARGET_RATIO,
        "results": results,
        "ed_1mb": ed,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"hl7apy rejected {failed} of {count} messages (their time is included). Written: {RESULTS.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
