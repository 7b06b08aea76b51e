"""HL7 v2 data types → FHIR data types, shared by every mapper.

Each function takes a ``Repetition`` (one repetition of a field) and returns a JSON-ready dict,
or ``None`` when the value is empty, so mappers can write ``[x for r in reps if (x := fn(r))]``.
"""

from __future__ import annotations

import calendar
import re
from typing import Any
from urllib.parse import quote

from ehr.hl7v2.er7 import Repetition, Segment
from ehr.hl7v2.mapping import MappingContext, MappingError

# HL7 table 0396 coding-system names → FHIR system URIs (the ones clinics and labs send).
CODE_SYSTEMS: dict[str, str] = {
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNOMEDCT": "http://snomed.info/sct",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "RXN": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "MVX": "http://terminology.hl7.org/CodeSystem/MVX",
    "I10": "http://hl7.org/fhir/sid/icd-10-cm",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "C4": "http://www.ama-assn.org/go/cpt",
    "UCUM": "http://unitsofmeasure.org",
    "NPI": "http://hl7.org/fhir/sid/us-npi",
    "HL70001": "http://terminology.hl7.org/CodeSystem/v2-0001",
    "HL70004": "http://terminology.hl7.org/CodeSystem/v2-0004",
    "HL70078": "http://terminology.hl7.org/CodeSystem/v2-0078",
    "HL70085": "http://terminology.hl7.org/CodeSystem/v2-0085",
    "HL70123": "http://terminology.hl7.org/CodeSystem/v2-0123",
    "HL70136": "http://terminology.hl7.org/CodeSystem/v2-0136",
    "HL70203": "http://terminology.hl7.org/CodeSystem/v2-0203",
    "HL70487": "http://terminology.hl7.org/CodeSystem/v2-0487",
    "NCIT": "http://ncithesaurus-stage.nci.nih.gov",
}
_HL7_TABLE = re.compile(r"HL7(\d{4})")

_DTM = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<f>\d{1,4}))?(?P<tz>[+-]\d{4})?$"
)


def code_system(name: str, ctx: MappingContext) -> str | None:
    """The FHIR system for an HL7 coding-system name; local names keep a local system."""
    name = name.strip()
    if not name:
        return None
    key = name.upper().replace("-", "").replace(" ", "")
    known = CODE_SYSTEMS.get(key)
    if known:
        return known
    table = _HL7_TABLE.fullmatch(key)
    if table:  # any HL7-defined table (HL7nnnn) is published as a v2-nnnn code system
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    if name.lower().startswith(("http://", "https://", "urn:")):
        return name
    if re.fullmatch(r"\d+(\.\d+)+", name):
        return f"urn:oid:{name}"
    return ctx.code_system(name)


def coding(code: str, display: str, system_name: str, ctx: MappingContext) -> dict[str, Any] | None:
    code, display = " ".join(code.split()), display.strip()  # a FHIR code has no stray whitespace
    if not code and not display:
        return None
    out: dict[str, Any] = {}
    system = code_system(system_name, ctx) if code else None
    if system:
        out["system"] = system
    if code:
        out["code"] = code
    if display:
        out["display"] = display
    return out


def codeable_concept(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    """CE/CWE/CNE (also CWE's alternate triplet and original text) → CodeableConcept."""
    codings = [
        c
        for c in (
            coding(rep.get(1), rep.get(2), rep.get(3), ctx),
            coding(rep.get(4), rep.get(5), rep.get(6), ctx),
        )
        if c
    ]
    text = rep.get(9) or rep.get(2) or rep.get(5)
    if not codings and not text:
        return None
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = codings
    if text:
        out["text"] = text
    return out


def date_time(value: str) -> str | None:
    """TS/DTM/DT (``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``) → FHIR date or dateTime,
    keeping the precision sent. A time without a zone gets none (FHIR requires a zone with a
    time, so such a value is cut back to the date) — ``None`` when the value is not a date."""
    value = value.strip()
    if not value:
        return None
    m = _DTM.match(value)
    if not m:
        return None
    y, mo, d, h, mi, s, f, tz = (m.group(k) for k in ("y", "mo", "d", "h", "mi", "s", "f", "tz"))
    if int(y) == 0 or (mo and not 1 <= int(mo) <= 12) or (d and not 1 <= int(d) <= 31):
        return None  # year 0000 (a common "unknown" filler) is not a FHIR date
    if d and mo and int(d) > calendar.monthrange(int(y), int(mo))[1]:
        return None  # not on the calendar (2023-02-30)
    date = y + (f"-{mo}" if mo else "") + (f"-{d}" if mo and d else "")
    if not (h and d):
        return date
    if not tz:
        return date
    if int(h) > 23 or (mi and int(mi) > 59) or (s and int(s) > 60):
        return None
    clock = f"{h}:{mi or '00'}:{s or '00'}" + (f".{f}" if f and s else "")
    return f"{date}T{clock}{tz[:3]}:{tz[3:]}"


def instant(value: str) -> str | None:
    """Like ``date_time`` but only when the value carries a full time and zone (FHIR instant)."""
    out = date_time(value)
    return out if out and "T" in out else None


def identifier(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    """CX (and EI/HD-bearing ids) → Identifier; assigning authority → system (OIDs as urn:oid)."""
    value = rep.get(1).strip()
    if not value:
        return None
    out: dict[str, Any] = {"system": authority_system(rep, 4, ctx), "value": value}
    type_code = rep.get(5).strip()
    if type_code:
        out["type"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": type_code}]
        }
    return out


def authority_system(rep: Repetition, component: int, ctx: MappingContext) -> str:
    """The system for an HD in ``component`` (CX-4) with its subcomponents: OID if ISO, else the namespace."""
    namespace = rep.get(component, 1)
    universal = rep.get(component, 2)
    universal_type = rep.get(component, 3).upper()
    if universal and (universal_type == "ISO" or re.fullmatch(r"\d+(\.\d+)+", universal)):
        return f"urn:oid:{universal}"
    if universal and universal.lower().startswith(("http://", "https://", "urn:")):
        return universal
    return ctx.identifier_system(namespace or universal or "")


def entity_identifier(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    """EI (entity identifier: placer/filler order numbers) → Identifier; EI-2..4 is the authority."""
    value = rep.get(1)
    if not value:
        return None
    universal, universal_type, namespace = rep.get(3), rep.get(4).upper(), rep.get(2)
    if universal and (universal_type == "ISO" or re.fullmatch(r"\d+(\.\d+)+", universal)):
        system = f"urn:oid:{universal}"
    else:
        system = ctx.identifier_system(namespace or universal or "")
    return {"system": system, "value": value}


def human_name(rep: Repetition) -> dict[str, Any] | None:
    """XPN (family^given^middle^suffix^prefix^degree^type) → HumanName."""
    family, given, middle = rep.get(1), rep.get(2), rep.get(3)
    suffix, prefix, name_type = rep.get(4), rep.get(5), rep.get(7)
    if not (family or given or middle):
        return None
    out: dict[str, Any] = {}
    if family:
        out["family"] = family
    givens = [g for g in (given, middle) if g]
    if givens:
        out["given"] = givens
    if prefix:
        out["prefix"] = [prefix]
    if suffix:
        out["suffix"] = [suffix]
    use = {"L": "official", "D": "usual", "M": "maiden", "A": "anonymous", "N": "nickname", "C": "old"}
    if name_type.upper() in use:
        out["use"] = use[name_type.upper()]
    return out


def address(rep: Repetition) -> dict[str, Any] | None:
    """XAD (street^other^city^state^zip^country^type) → Address."""
    lines = [x for x in (rep.get(1), rep.get(2)) if x]
    city, state, postal, country, kind = rep.get(3), rep.get(4), rep.get(5), rep.get(6), rep.get(7)
    district = rep.get(9)
    if not (lines or city or state or postal or country):
        return None
    out: dict[str, Any] = {}
    if lines:
        out["line"] = lines
    for key, value in (
        ("city", city),
        ("district", district),
        ("state", state),
        ("postalCode", postal),
        ("country", country),
    ):
        if value:
            out[key] = value
    kinds: dict[str, tuple[str | None, str | None]] = {
        "H": ("home", None),
        "B": ("work", None),
        "O": ("work", None),
        "C": ("temp", None),
    }
    kinds |= {"M": (None, "postal"), "BA": (None, "postal"), "P": (None, "physical")}
    use, type_ = kinds.get(kind.upper(), (None, None))
    if use:
        out["use"] = use
    if type_:
        out["type"] = type_
    return out


def contact_point(rep: Repetition) -> dict[str, Any] | None:
    """XTN → ContactPoint (phone built from area/local/extension when XTN-1 is empty)."""
    use_code, equipment = rep.get(2).upper(), rep.get(3).upper()
    email = rep.get(4)
    number = rep.get(1)
    if not number and (rep.get(6) or rep.get(7)):
        number = " ".join(x for x in (rep.get(5), rep.get(6), rep.get(7)) if x)
        if rep.get(8):
            number += f" x{rep.get(8)}"
    if equipment == "INTERNET" or use_code == "NET" or (email and not number):
        return {"system": "email", "value": email or number} if (email or number) else None
    if not number:
        return None
    system = {"FX": "fax", "BP": "pager", "CP": "phone", "PH": "phone"}.get(equipment, "phone")
    out: dict[str, Any] = {"system": system, "value": number}
    use = {"PRN": "home", "ORN": "home", "WPN": "work", "VHN": "home", "ASN": "temp", "EMR": "temp"}.get(
        use_code
    )
    if equipment == "CP":
        use = "mobile"
    if use:
        out["use"] = use
    return out


def gender(code: str) -> str | None:
    """PID-8 administrative sex (table 0001) → FHIR gender."""
    return {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "other"}.get(
        code.strip().upper()[:1] if code else ""
    )


def practitioner(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    """XCN (id^family^given^middle^suffix^prefix^degree^source table^authority) → a Practitioner
    resource body (no id): identifier from XCN-1 with XCN-9 as authority, name from the rest."""
    ident, family = rep.get(1).strip(), rep.get(2)
    if not ident and not family:
        return None
    body: dict[str, Any] = {"resourceType": "Practitioner"}
    if ident:
        system = authority_system(rep, 9, ctx) if (rep.get(9) or rep.get(9, 2)) else None
        if rep.get(13).upper() == "NPI" or rep.get(9).upper() == "NPI":
            system = "http://hl7.org/fhir/sid/us-npi"
        body["identifier"] = [{"system": system or ctx.identifier_system("practitioner"), "value": ident}]
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    givens = [g for g in (rep.get(3), rep.get(4)) if g]
    if givens:
        name["given"] = givens
    if rep.get(6):
        name["prefix"] = [rep.get(6)]
    if rep.get(5):
        name["suffix"] = [rep.get(5)]
    if name:
        body["name"] = [name]
    return body


def conditional_url(resource_type: str, system: str, value: str) -> str:
    """``Type?identifier=system|value`` for a conditional upsert, with the FHIR search escapes
    (``\\ , | $``) and percent-encoding a server's query parser undoes."""

    def escaped(text: str) -> str:
        for char in ("\\", ",", "|", "$"):
            text = text.replace(char, "\\" + char)
        return quote(text, safe=":/.-_~@")

    return f"{resource_type}?identifier={escaped(system)}|{escaped(value)}"


def require(segment: Segment | None, name: str, field: int = 0, what: str = "") -> Segment:
    """The segment, or a MappingError naming what is missing."""
    if segment is None:
        raise MappingError(f"The message has no {name} segment{f' ({what})' if what else ''}.", segment=name)
    if field and not segment.raw(field):
        raise MappingError(
            f"{name}-{field}{f' ({what})' if what else ''} is required and empty.",
            segment=name,
            position=segment.position,
            field=field,
        )
    return segment
