"""Compare our HL7 v2 → FHIR mapping with reference converters, field by field, semantically.

A *reference pair* is ``NAME.hl7`` + ``NAME.expected.json`` (a Bundle another converter produced:
Microsoft FHIR-Converter or CDC ReportStream). For every resource type in the expected Bundle that
``FIELDS`` knows, each expected resource is paired with the one of ours of that type that agrees on
the most fields, and each field is classified:

- ``agree``: the same normalised values;
- ``differ``: both have values, not the same;
- ``missing-in-ours``: the reference has a value, we have none (or no resource to pair with);
- ``missing-in-reference``: we have a value the reference lacks (not counted against us).

Values are normalised before comparing: identifiers and codings as ``system|value`` where a
system that is not a shared, global one (``urn:oid:``, ``http://hl7.org/...``, LOINC, SNOMED…) is
read as ``local`` (each converter invents its own local URIs); dateTimes with a zone as UTC
instants; numbers as decimals; text stripped and case-folded; phone numbers as digits.

Agreement of a pair = agree / (agree + differ + missing-in-ours).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ehr.hl7v2 import er7
from ehr.hl7v2.mapping import MappingContext, MappingError, UnsupportedMessageError, map_message

AGREE, DIFFER, MISSING_OURS, MISSING_REF = "agree", "differ", "missing-in-ours", "missing-in-reference"
OUTCOMES = (AGREE, DIFFER, MISSING_OURS, MISSING_REF)

GLOBAL_SYSTEMS = (
    "urn:oid:",
    "urn:ietf:",
    "http://hl7.org/fhir/sid/",
    "http://terminology.hl7.org/",
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://unitsofmeasure.org",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://www.ama-assn.org/go/cpt",
    "http://ncithesaurus-stage.nci.nih.gov",
)


# -- values -------------------------------------------------------------------------------------


def walk(value: Any, path: str) -> Iterator[Any]:
    """Every value at a dotted ``path`` (lists are flattened at each step, as FHIRPath does)."""
    items = value if isinstance(value, list) else [value]
    if not path:
        yield from (i for i in items if i not in (None, "", [], {}))
        return
    head, _, rest = path.partition(".")
    for item in items:
        if isinstance(item, dict) and head in item:
            yield from walk(item[head], rest)


def system(value: Any) -> str:
    uri = str(value or "").strip()
    return uri.rstrip("/") if uri.startswith(GLOBAL_SYSTEMS) else "local"  # none given is local too


def text(value: Any) -> str:
    return " ".join(str(value).split()).casefold()


def number(value: Any) -> str:
    try:
        return str(Decimal(str(value)).normalize())
    except InvalidOperation:
        return text(value)


def when(value: Any) -> str:
    """A date/dateTime: with a zone, the UTC instant (seconds); without, as written."""
    raw = str(value).strip()
    if "T" in raw and re.search(r"(Z|[+-]\d\d:\d\d)$", raw):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return raw
        return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return raw


def phone(value: Any) -> str:
    raw = str(value).strip()
    if "@" in raw:
        return raw.casefold()
    digits = re.sub(r"\D", "", raw)
    return digits or text(raw)


def identifiers(resource: dict[str, Any], path: str = "identifier") -> set[str]:
    return {
        f"{system(i.get('system'))}|{str(i['value']).strip()}"
        for i in walk(resource, path)
        if isinstance(i, dict) and str(i.get("value", "")).strip()
    }


def codes(resource: dict[str, Any], path: str) -> set[str]:
    """The codings of a CodeableConcept (or Coding) at ``path`` as ``system|code``."""
    out = set()
    for concept in walk(resource, path):
        if not isinstance(concept, dict):
            continue
        codings = concept.get("coding", [concept] if "code" in concept else [])
        out |= {f"{system(c.get('system'))}|{str(c['code']).strip()}" for c in codings if c.get("code")}
    return out


def plain(path: str, norm: Callable[[Any], str] = text) -> Callable[[dict[str, Any]], set[str]]:
    return lambda resource: {
        n for v in walk(resource, path) if not isinstance(v, (dict, list)) and (n := norm(v))
    }


def observation_value(resource: dict[str, Any]) -> set[str]:
    """value[x]: Quantity as ``number unit``, CodeableConcept as its codes, else the text."""
    out: set[str] = set()
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, dict) and "value" in quantity:
        unit = quantity.get("code") or quantity.get("unit") or ""
        out.add(f"{number(quantity['value'])} {text(unit)}".strip())
    out |= codes(resource, "valueCodeableConcept")
    for key in ("valueString", "valueBoolean", "valueInteger"):
        if key in resource:
            out.add(text(resource[key]))
    for key in ("valueDateTime", "valueTime", "valuePeriod.start"):
        out |= {when(v) for v in walk(resource, key)}
    for key in ("valueRange.low.value", "valueRange.high.value", "valueRatio.numerator.value"):
        out |= {number(v) for v in walk(resource, key)}
    return out


def occurrence(resource: dict[str, Any]) -> set[str]:
    return {when(v) for v in walk(resource, "occurrenceDateTime")} | set(plain("occurrenceString")(resource))


Extractor = Callable[[dict[str, Any]], set[str]]

# The comparable fields per resource type (documented in docs/hl7v2-mapping-adt.md).
FIELDS: dict[str, dict[str, Extractor]] = {
    "Patient": {
        "identifier (system|value)": identifiers,
        "name.family": plain("name.family"),
        "name.given": plain("name.given"),
        "birthDate": plain("birthDate", when),
        "gender": plain("gender"),
        "address.line": plain("address.line"),
        "address.city": plain("address.city"),
        "address.postalCode": plain("address.postalCode"),
        "telecom.value": plain("telecom.value", phone),
    },
    "Encounter": {
        "class.code": lambda r: codes(r, "class"),
        "status": plain("status"),
        "period.start": plain("period.start", when),
        "identifier.value": plain("identifier.value"),
    },
    "Observation": {
        "code.coding": lambda r: codes(r, "code"),
        "value[x]": observation_value,
        "status": plain("status"),
        "interpretation.coding.code": lambda r: {c.split("|", 1)[1] for c in codes(r, "interpretation")},
        "referenceRange.low.value": plain("referenceRange.low.value", number),
        "referenceRange.high.value": plain("referenceRange.high.value", number),
    },
    "DiagnosticReport": {
        "code.coding": lambda r: codes(r, "code"),
        "status": plain("status"),
        "identifier.value": plain("identifier.value"),
    },
    "ServiceRequest": {
        "code.coding": lambda r: codes(r, "code"),
        "identifier.value": plain("identifier.value"),
        "status": plain("status"),
        "intent": plain("intent"),
    },
    "Specimen": {"type.coding": lambda r: codes(r, "type")},
    "DocumentReference": {
        "type.coding": lambda r: codes(r, "type"),
        "status": plain("status"),
        "content.attachment.contentType": plain("content.attachment.contentType"),
    },
    "Immunization": {
        "vaccineCode.coding": lambda r: codes(r, "vaccineCode"),
        "occurrence[x]": occurrence,
        "lotNumber": plain("lotNumber"),
        "status": plain("status"),
    },
    "Practitioner": {
        "identifier.value": plain("identifier.value"),
        "name.family": plain("name.family"),
        "name.given": plain("name.given"),
    },
}


# -- comparison ---------------------------------------------------------------------------------


@dataclass
class FieldResult:
    resource_type: str
    field: str
    outcome: str
    reference: list[str]
    ours: list[str]


@dataclass
class PairResult:
    name: str
    family: str
    status: str  # "mapped", "unsupported", "rejected" (MappingError), "crashed"
    detail: str = ""
    fields: list[FieldResult] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)  # expected types FIELDS does not list
    bundle: dict[str, Any] | None = None
    message: tuple[str, str] = ("", "")  # MSH-9 (type, trigger event)

    def count(self, outcome: str) -> int:
        return sum(1 for f in self.fields if f.outcome == outcome)

    @property
    def scored(self) -> int:
        return self.count(AGREE) + self.count(DIFFER) + self.count(MISSING_OURS)

    @property
    def agreement(self) -> float | None:
        return self.count(AGREE) / self.scored if self.scored else None


def classify(reference: set[str], ours: set[str]) -> str | None:
    if not reference and not ours:
        return None
    if not ours:
        return MISSING_OURS
    if not reference:
        return MISSING_REF
    return AGREE if reference == ours else DIFFER


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle.get("entry") or []
        if isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == resource_type
    ]


def compare_type(
    resource_type: str, expected: list[dict[str, Any]], ours: list[dict[str, Any]]
) -> list[FieldResult]:
    """Pair each expected resource with the unused one of ours agreeing on most fields, then classify."""
    fields = FIELDS[resource_type]
    views_ours = [{name: fn(r) for name, fn in fields.items()} for r in ours]
    unused = list(range(len(ours)))
    out: list[FieldResult] = []
    for resource in expected:
        ref = {name: fn(resource) for name, fn in fields.items()}
        best, best_score = None, -1
        for i in unused:
            score = sum(1 for name in fields if ref[name] and ref[name] == views_ours[i][name])
            if score > best_score:
                best, best_score = i, score
        mine: dict[str, set[str]] = {name: set() for name in fields}
        if best is not None:
            unused.remove(best)
            mine = views_ours[best]
        for name in fields:
            outcome = classify(ref[name], mine[name])
            if outcome:
                out.append(FieldResult(resource_type, name, outcome, sorted(ref[name]), sorted(mine[name])))
    for i in unused:  # ours with no counterpart in the reference
        for name in fields:
            if views_ours[i][name]:
                out.append(FieldResult(resource_type, name, MISSING_REF, [], sorted(views_ours[i][name])))
    return out


def compare(expected: dict[str, Any], ours: dict[str, Any]) -> tuple[list[FieldResult], list[str]]:
    types = sorted({e["resource"]["resourceType"] for e in expected.get("entry") or [] if "resource" in e})
    results: list[FieldResult] = []
    for resource_type in types:
        if resource_type in FIELDS:
            results += compare_type(
                resource_type, resources(expected, resource_type), resources(ours, resource_type)
            )
    return results, [t for t in types if t not in FIELDS]


# -- pairs --------------------------------------------------------------------------------------


def pair_files(folder: Path) -> list[tuple[Path, Path]]:
    """``(hl7, expected)`` for every pair in ``folder`` and ``folder/field-level``."""
    out = []
    for directory in (folder, folder / "field-level"):
        if directory.is_dir():
            for expected in sorted(directory.glob("*.expected.json")):
                hl7 = expected.with_name(expected.name.replace(".expected.json", ".hl7"))
                if hl7.exists():
                    out.append((hl7, expected))
    return out


def family_of(hl7: Path, message_type: str) -> str:
    source = "reportstream" if hl7.name.startswith("cdc-reportstream") else "fhir-converter"
    level = "/field-level" if hl7.parent.name == "field-level" else ""
    return f"{message_type or '?'} ({source}{level})"


def run_pair(hl7: Path, expected_path: Path) -> PairResult:
    """Parse, map and compare one pair; never raises (a crash is reported as such)."""
    name = hl7.name.removesuffix(".hl7")
    try:
        messages, _ = er7.split_messages(er7.decode(hl7.read_bytes()))
        message = er7.parse(messages[0])
    except Exception as exc:
        return PairResult(name, family_of(hl7, ""), "crashed", f"parse: {type(exc).__name__}: {exc}")
    family = family_of(hl7, message.message_type)
    key = (message.message_type, message.trigger_event)
    ctx = MappingContext(
        tenant="reference",
        sending_application=message.sending_application,
        sending_facility=message.sending_facility,
        received=datetime(2024, 1, 1, tzinfo=UTC),
    )
    try:
        mapping = map_message(message, ctx)
    except UnsupportedMessageError as exc:
        return PairResult(name, family, "unsupported", exc.reason, message=key)
    except MappingError as exc:
        where = f"{exc.segment}-{exc.field}" if exc.field else exc.segment
        return PairResult(name, family, "rejected", f"{where} ({exc.code}): {exc.reason}", message=key)
    except Exception as exc:
        return PairResult(name, family, "crashed", f"map: {type(exc).__name__}: {exc}", message=key)
    expected = json.loads(expected_path.read_text(encoding="utf-8-sig"))
    fields, not_compared = compare(expected, mapping.bundle)
    return PairResult(name, family, "mapped", "", fields, not_compared, mapping.bundle, key)


def run_all(folder: Path) -> list[PairResult]:
    return [run_pair(hl7, expected) for hl7, expected in pair_files(folder)]


# -- report -------------------------------------------------------------------------------------


def family_agreement(results: Iterable[PairResult]) -> dict[str, tuple[int, int]]:
    """family -> (agree, scored) over its mapped pairs."""
    out: dict[str, tuple[int, int]] = {}
    for r in results:
        if r.status == "mapped":
            agree, scored = out.get(r.family, (0, 0))
            out[r.family] = (agree + r.count(AGREE), scored + r.scored)
    return out


def _pct(agree: int, scored: int) -> str:
    return f"{100 * agree / scored:.0f}%" if scored else "n/a"


def _cell(values: list[str], limit: int = 60) -> str:
    joined = "; ".join(values)
    joined = joined if len(joined) <= limit else joined[: limit - 1] + "…"
    return joined.replace("|", "\\|")


def summary(results: list[PairResult]) -> str:
    lines = [
        "| pair | family | status | agree | differ | missing-in-ours | missing-in-reference | agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.status == "mapped":
            counts = " | ".join(str(r.count(o)) for o in OUTCOMES)
            agreement = _pct(r.count(AGREE), r.scored)
        else:
            counts, agreement = " | ".join("-" for _ in OUTCOMES), r.detail[:80].replace("|", "\\|")
        lines.append(f"| {r.name} | {r.family} | {r.status} | {counts} | {agreement} |")
    lines += ["", "| family | agreement (agree / scored fields) |", "|---|---|"]
    for family, (agree, scored) in sorted(family_agreement(results).items()):
        lines.append(f"| {family} | {_pct(agree, scored)} ({agree}/{scored}) |")
    return "\n".join(lines)


def report(results: list[PairResult]) -> str:
    """The summary and, per mapped pair, every field compared with both sides' values."""
    parts = ["# HL7 v2 → FHIR: agreement with the reference converters", "", summary(results)]
    for r in results:
        if r.status != "mapped":
            continue
        parts += ["", f"## {r.name}", ""]
        if r.not_compared:
            parts.append(f"Types in the reference not compared: {', '.join(r.not_compared)}.")
            parts.append("")
        parts += ["| type | field | outcome | reference | ours |", "|---|---|---|---|---|"]
        parts += [
            f"| {f.resource_type} | {f.field} | {f.outcome} | {_cell(f.reference)} | {_cell(f.ours)} |"
            for f in r.fields
        ]
    return "\n".join(parts) + "\n"
