"""ORU^R01 (unsolicited observation results) → DiagnosticReport + Observations + Specimen.

One transaction Bundle of conditional upserts per message (see ``ehr.hl7v2.mapping``). Each order
observation group (``[ORC] OBR {NTE} {OBX {NTE}} {SPM {OBX}}``) becomes:

- a DiagnosticReport identified by its filler order number (OBR-3, else ORC-3; type ``FILL``), with
  the placer order number (OBR-2, else ORC-2) as a second identifier of type ``PLAC`` so the lab
  workflow can correlate it with its order; ``basedOn`` is left to that workflow;
- one Observation per OBX, identified by filler number + OBX-3 code + OBX-4 sub-id, so P → F → C
  revisions of a result are new versions of the same resource; consecutive text OBX lines with the
  same OBX-3 and OBX-4 (a report split over many TX/FT lines) are one Observation, lines joined;
- a Specimen from SPM (identified by SPM-2), else from OBR-15/OBR-7 when present;
- an ED OBX (an embedded PDF/image) becomes a ``DiagnosticReport.presentedForm`` attachment
  (base64 inline; R4 Observation has no attachment value);
- the Patient (PID), the ordering provider (OBR-16/ORC-12 → Practitioner) and the performing
  organisation (OBX-23 → Organization, when it carries an identifier).

NTE after an OBX → ``Observation.note``; NTE after the OBR (R4 DiagnosticReport has no note) →
``DiagnosticReport.conclusion``. docs/hl7v2-mapping-oru.md has the tables. No values are logged.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ehr.documents.service import SHA256_EXTENSION
from ehr.hl7v2.er7 import Message, Repetition, Segment
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, Warning_, adt
from ehr.hl7v2.mapping import datatypes as dt
from ehr.hl7v2.mapping.units import UCUM, ucum

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

# OBX-11 (HL7 table 0085) → Observation.status
OBSERVATION_STATUS: dict[str, str] = {
    "F": "final",
    "U": "final",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "C": "corrected",
    "A": "amended",
    "B": "amended",
    "I": "registered",
    "O": "registered",
    "X": "cancelled",
    "N": "cancelled",
    "D": "entered-in-error",
    "W": "entered-in-error",
}

# OBR-25 (HL7 table 0123) → DiagnosticReport.status
REPORT_STATUS: dict[str, str] = {
    "O": "registered",
    "I": "registered",
    "S": "registered",
    "A": "partial",
    "R": "partial",
    "N": "partial",
    "P": "preliminary",
    "F": "final",
    "C": "corrected",
    "M": "corrected",
    "X": "cancelled",
    "Y": "unknown",
    "Z": "unknown",
}

# A result without OBX-11 takes its report's status, as an Observation status.
_REPORT_TO_OBSERVATION: dict[str, str] = {
    "registered": "registered",
    "partial": "preliminary",
    "preliminary": "preliminary",
    "final": "final",
    "corrected": "corrected",
    "amended": "amended",
    "appended": "amended",
    "cancelled": "cancelled",
    "entered-in-error": "entered-in-error",
    "unknown": "unknown",
}

# OBX-8 abnormal flags (HL7 table 0078) that are also v3 ObservationInterpretation codes.
INTERPRETATIONS: dict[str, str] = {
    "<": "Off scale low",
    ">": "Off scale high",
    "A": "Abnormal",
    "AA": "Critical abnormal",
    "AC": "Anti-complementary substances present",
    "B": "Better",
    "D": "Significant change down",
    "DET": "Detected",
    "E": "Equivocal",
    "EX": "outside threshold",
    "H": "High",
    "HH": "Critical high",
    "HU": "Significantly high",
    "I": "Intermediate",
    "IND": "Indeterminate",
    "L": "Low",
    "LL": "Critical low",
    "LU": "Significantly low",
    "MS": "moderately susceptible",
    "N": "Normal",
    "ND": "Not detected",
    "NEG": "Negative",
    "NR": "Non-reactive",
    "NS": "Non-susceptible",
    "POS": "Positive",
    "QCF": "Quality control failure",
    "R": "Resistant",
    "RR": "Reactive",
    "S": "Susceptible",
    "SDD": "Susceptible-dose dependent",
    "TOX": "Cytotoxic substance present",
    "U": "Significant change up",
    "VS": "very susceptible",
    "W": "Worse",
    "WR": "Weakly reactive",
}
_V2_0078_NAMES = frozenset({"", "HL70078", "HL7 0078", "0078", "V2-0078", "HL7-0078"})

# OBR-24 diagnostic service sections (table 0074) that are imaging rather than laboratory.
_IMAGING_SECTIONS = frozenset(
    {"RAD", "CT", "CTH", "CUS", "NMR", "NMS", "OUS", "RUS", "VUS", "XRC", "MR", "US", "RX", "NRS", "EC"}
)

# ED/RP data subtypes (table 0291) → MIME type.
_MIME: dict[str, str] = {
    "PDF": "application/pdf",
    "JPEG": "image/jpeg",
    "JPG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "TIF": "image/tiff",
    "BMP": "image/bmp",
    "RTF": "application/rtf",
    "HTML": "text/html",
    "XML": "application/xml",
    "DICOM": "application/dicom",
    "PLAIN": "text/plain",
    "TEXT": "text/plain",
    "POSTSCRIPT": "application/postscript",
    "WAV": "audio/wav",
    "BASIC": "audio/basic",
    "OCTET-STREAM": "application/octet-stream",
}
_MIME_TOP = frozenset({"application", "image", "text", "audio", "video", "multipart", "model"})

_TEXT_TYPES = frozenset({"ST", "TX", "FT"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF", "IS", "ID"})
_DATE_TYPES = frozenset({"DT", "TS", "DTM"})
_COMPARATORS = frozenset({"<", ">", "<=", ">="})
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_NM = re.compile(rf"^\s*(<=|>=|<|>|=)?\s*({_NUMBER})\s*$")
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*(?:-|\u2013|_|to|\.\.)\s*({_NUMBER})\s*$", re.IGNORECASE)
_BOUND = re.compile(rf"^\s*(<=|>=|<|>|≤|≥)\s*({_NUMBER})\s*$")
_ZONE = re.compile(r"[+-]\d{4}$")
_SPACE = re.compile(r"\s")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_ZONELESS_TIME = re.compile(r"^\d{10,14}(?:\.\d{1,4})?$")

_GROUP_STARTS = frozenset({"PID", "PD1", "PV1", "PV2", "NK1", "ORC", "OBR", "SFT", "MSH"})


@dataclass
class _Result:
    """One Observation: an OBX (or several consecutive text OBX lines) and the NTEs after it."""

    segments: list[Segment]
    notes: list[Segment] = field(default_factory=list)

    @property
    def obx(self) -> Segment:
        return self.segments[0]


@dataclass
class _Order:
    """One order observation group."""

    obr: Segment
    orc: Segment | None
    patient: str  # the Patient fullUrl
    results: list[_Result] = field(default_factory=list)
    notes: list[Segment] = field(default_factory=list)
    specimens: list[Segment] = field(default_factory=list)


class _Builder:
    """The transaction being built: conditional upserts keyed by their URL (one entry per URL)."""

    def __init__(self, ctx: MappingContext, zone: str) -> None:
        self.ctx = ctx
        self.zone = zone  # MSH-7's time zone: the sender's, for times sent without one
        self.entries: dict[str, dict[str, Any]] = {}
        self.warnings: list[Warning_] = []

    def upsert(self, resource_type: str, key: dict[str, Any], body: dict[str, Any]) -> str:
        """Add ``body`` as a conditional PUT on ``key`` (an Identifier); the fullUrl to reference.
        A second resource with the same key in the message is the same resource: the first wins."""
        url = dt.conditional_url(resource_type, key.get("system", ""), key["value"])
        entry = self.entries.get(url)
        if entry is None:
            entry = {
                "fullUrl": self.ctx.full_url(resource_type, key.get("system", ""), key["value"]),
                "resource": body,
                "request": {"method": "PUT", "url": url},
            }
            self.entries[url] = entry
        full_url: str = entry["fullUrl"]
        return full_url

    def add(self, entry: dict[str, Any]) -> str:
        """An entry built by another mapper's helper; one entry per conditional URL."""
        kept = self.entries.setdefault(entry["request"]["url"], entry)
        return str(kept["fullUrl"])

    def warn(self, reason: str, seg: Segment | None = None, fld: int = 0, code: str = "0") -> None:
        self.warnings.append(
            Warning_(
                reason,
                segment=seg.name if seg else "",
                position=seg.position if seg else 0,
                field=fld,
                code=code,
            )
        )

    def bundle(self) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "transaction", "entry": list(self.entries.values())}


def map_oru(message: Message, ctx: MappingContext) -> Mapping:
    """The transaction Bundle for one ORU^R01 message."""
    zone_match = _ZONE.search(message.msh.get(7))
    b = _Builder(ctx, zone_match.group(0) if zone_match else "")
    orders = _orders(message, ctx, b)
    if not orders:
        raise MappingError(
            "The ORU message has no OBR segment (an order observation group is required).",
            segment="OBR",
            code="100",
        )
    keys = _report_keys(message, orders, ctx, b)
    for order, key in zip(orders, keys, strict=True):
        _map_order(order, key, ctx, b)
    return Mapping(bundle=b.bundle(), warnings=b.warnings)


# -- grouping -------------------------------------------------------------------------------------


def _orders(message: Message, ctx: MappingContext, b: _Builder) -> list[_Order]:
    """Walk the segments once: PATIENT_RESULT / ORDER_OBSERVATION / OBSERVATION groups."""
    orders: list[_Order] = []
    patient = ""
    orc: Segment | None = None
    order: _Order | None = None
    owner: _Order | _Result | None = None
    for seg in message.segments:
        name = seg.name
        if name == "OBX":
            if order is None:
                raise MappingError(
                    "An OBX comes before any OBR; results must follow their OBR.",
                    segment="OBX",
                    position=seg.position,
                    code="100",
                )
            previous = order.results[-1] if order.results else None
            if previous is not None and owner is previous and _continues(previous, seg):
                previous.segments.append(seg)
            else:
                previous = _Result([seg])
                order.results.append(previous)
            owner = previous
        elif name == "NTE":
            if owner is not None:
                owner.notes.append(seg)
        elif name == "OBR":
            if not patient:
                raise MappingError(
                    "The message has no PID segment before its OBR (the patient is required).",
                    segment="PID",
                    code="100",
                )
            order = _Order(seg, orc, patient)
            orders.append(order)
            orc, owner = None, order
        elif name == "SPM":
            if order is None:
                raise MappingError(
                    "An SPM comes before any OBR.", segment="SPM", position=seg.position, code="100"
                )
            order.specimens.append(seg)
            owner = None
        elif name == "PID":
            patient = _patient(message, seg, ctx, b)
            order, orc, owner = None, None, None
        elif name == "ORC":
            orc, owner = seg, None
        elif name in _GROUP_STARTS:
            owner = None
    return orders


def _continues(previous: _Result, seg: Segment) -> bool:
    """A text OBX that continues the previous one (same OBX-3 and OBX-4, text types)."""
    first = previous.obx
    return (
        seg.get(2).upper() in _TEXT_TYPES
        and first.get(2).upper() in _TEXT_TYPES
        and seg.raw(3) == first.raw(3)
        and seg.raw(4) == first.raw(4)
    )


# -- identities -----------------------------------------------------------------------------------


@dataclass
class _Key:
    """A report's identifiers: the one its upsert is keyed on, and the FILL/PLAC ones it carries."""

    key: dict[str, Any]
    identifiers: list[dict[str, Any]]


def _report_keys(message: Message, orders: list[_Order], ctx: MappingContext, b: _Builder) -> list[_Key]:
    keys: list[_Key] = []
    for order in orders:
        obr, orc = order.obr, order.orc
        filler = _first_ei(ctx, (obr, 3), (orc, 3))
        placer = _first_ei(ctx, (obr, 2), (orc, 2))
        identifiers = []
        if filler:
            identifiers.append({**_typed(filler, "FILL")})
        if placer:
            identifiers.append({**_typed(placer, "PLAC")})
        if filler:
            key = {"system": filler["system"], "value": filler["value"]}
        elif placer:
            key = {"system": placer["system"], "value": placer["value"]}
            b.warn(
                "OBR-3 (filler order number) is empty; the report is identified by its placer number.",
                obr,
                3,
            )
        else:
            if not message.control_id:
                raise MappingError(
                    "OBR-3 (filler order number) is required to identify the report.",
                    segment="OBR",
                    position=obr.position,
                    field=3,
                )
            key = {
                "system": ctx.identifier_system(f"{ctx.sending_application}-message"),
                "value": f"{message.control_id}/{obr.get(1) or obr.position}",
            }
            b.warn(
                "OBR-2/OBR-3 (order numbers) are empty; a correction of this report cannot update it.",
                obr,
                3,
            )
        keys.append(_Key(key, identifiers))
    # A sender that reuses one order number for several OBRs: each report gets its own key.
    seen: dict[tuple[str, str], int] = {}
    for k in keys:
        pair = (k.key["system"], k.key["value"])
        seen[pair] = seen.get(pair, 0) + 1
    used: set[tuple[str, str]] = set()
    for order, k in zip(orders, keys, strict=True):
        pair = (k.key["system"], k.key["value"])
        if seen[pair] > 1:
            value = f"{k.key['value']}/{_code_key(order.obr.first(4))}"
            if (pair[0], value) in used:
                value = f"{value}/{order.obr.get(1) or order.obr.position}"
            k.key = {"use": "secondary", "system": pair[0], "value": value}
            k.identifiers.append(k.key)
            b.warn(
                "Several OBRs share one order number; each report is identified by it and its OBR-4.",
                order.obr,
                3,
            )
        used.add((k.key["system"], k.key["value"]))
    return keys


def _first_ei(ctx: MappingContext, *places: tuple[Segment | None, int]) -> dict[str, Any] | None:
    for seg, number in places:
        if seg is not None and seg.raw(number):
            found = dt.entity_identifier(seg.first(number), ctx)
            if found:
                return found
    return None


def _typed(ident: dict[str, Any], code: str) -> dict[str, Any]:
    return {**ident, "type": {"coding": [{"system": V2_0203, "code": code}]}}


def _code(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    """OBR-4/OBX-3 → CodeableConcept; a code sent without a coding system is the sender's local
    code, so it gets the sender's local system (a test code is only meaningful with one)."""
    concept = dt.codeable_concept(rep, ctx)
    for coding in (concept or {}).get("coding", []):
        if "code" in coding and "system" not in coding:
            coding["system"] = ctx.code_system("")
    return concept


def _code_key(rep: Repetition) -> str:
    return rep.get(1) or rep.get(4) or rep.get(2) or rep.get(9)


# -- patient, practitioner, organisation ----------------------------------------------------------


def _patient(message: Message, pid: Segment, ctx: MappingContext, b: _Builder) -> str:
    """The Patient of a PID, built as the ADT mapper builds it (one Patient per PID)."""
    return b.add(adt.patient_entry(message, ctx, b.warnings, pid=pid))


def _practitioner(rep: Repetition, ctx: MappingContext, b: _Builder) -> str | None:
    entry = adt.practitioner_entry(rep, ctx)
    return b.add(entry) if entry is not None else None


def _organization(obx: Segment, ctx: MappingContext, b: _Builder) -> dict[str, Any] | None:
    """OBX-23 (XON performing organisation) → a reference: an Organization upserted by its
    identifier (XON-10, else XON-3), or a display-only reference when it has none."""
    rep = obx.first(23)
    name, value = rep.get(1), rep.get(10) or rep.get(3)
    if not value:
        return {"display": name} if name else None
    system = dt.authority_system(rep, 6, ctx) if (rep.get(6) or rep.get(6, 2)) else None
    ident = {"system": system or ctx.identifier_system("organization"), "value": value}
    body: dict[str, Any] = {"resourceType": "Organization", "identifier": [ident]}
    if name:
        body["name"] = name
    address = dt.address(obx.first(24))
    if address:
        body["address"] = [address]
    return {"reference": b.upsert("Organization", ident, body)}


# -- one order ------------------------------------------------------------------------------------


def _report(order: _Order, key: _Key, ctx: MappingContext, b: _Builder) -> dict[str, Any]:
    """The DiagnosticReport's own elements (OBR): identifiers, status, category, code, times."""
    obr = order.obr
    code = _code(obr.first(4), ctx)
    if code is None:
        raise MappingError(
            "OBR-4 (universal service identifier) is required: it is what the report is about.",
            segment="OBR",
            position=obr.position,
            field=4,
        )
    status_code = obr.get(25).upper()
    status = REPORT_STATUS.get(status_code)
    if status is None:
        status = "unknown"
        b.warn(
            "OBR-25 (result status) is empty or not in table 0123; the report status is unknown.",
            obr,
            25,
            "103" if status_code else "0",
        )
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": key.identifiers or [key.key],
        "status": status,
        "category": [{"coding": [{"system": V2_0074, "code": obr.get(24).upper() or "LAB"}]}],
        "code": code,
        "subject": {"reference": order.patient},
    }
    effective, end = _when(obr.get(7), b.zone), _when(obr.get(8), b.zone)
    if effective and end and end >= effective:
        report["effectivePeriod"] = {"start": effective, "end": end}
    elif effective:
        report["effectiveDateTime"] = effective
    issued = dt.instant(_with_zone(obr.get(22), b.zone))
    if issued:
        report["issued"] = issued
    return report


def _map_order(order: _Order, key: _Key, ctx: MappingContext, b: _Builder) -> None:
    obr, orc = order.obr, order.orc
    subject = {"reference": order.patient}
    report = _report(order, key, ctx, b)
    # Ordering provider: upserted so the order workflow finds it (R4 DiagnosticReport has no requester).
    for seg, number in ((obr, 16), (orc, 12)):
        if seg is not None and seg.raw(number) and _practitioner(seg.first(number), ctx, b):
            break
    specimens = _specimens(order, key, ctx, b, subject)
    effective = report.get("effectiveDateTime") or report.get("effectivePeriod", {}).get("start")
    issued = report.get("issued")
    section = obr.get(24).upper()
    category = "imaging" if section in _IMAGING_SECTIONS else "laboratory"
    results: list[dict[str, str]] = []
    performers: list[dict[str, Any]] = []
    forms: list[dict[str, Any]] = []
    used: set[str] = set()
    default_status = _REPORT_TO_OBSERVATION[report["status"]]
    for result in order.results:
        obx = result.obx
        value_type = obx.get(2).upper()
        if value_type == "ED" or (value_type == "RP" and _url_pointer(obx)):
            form = _attachment(obx, value_type, b)
            if form:
                forms.append(form)
            continue
        performer = _organization(obx, ctx, b)
        if performer and performer not in performers:
            performers.append(performer)
        obs_key = _observation_key(result, order, key, used, b)
        body = _observation(result, order, ctx, b, (category, default_status, subject))
        body["identifier"] = [obs_key]
        if performer:
            body["performer"] = [performer]
        if effective and "effectiveDateTime" not in body:
            body["effectiveDateTime"] = effective
        if issued:
            body["issued"] = issued
        if specimens:
            body["specimen"] = {"reference": specimens[0]}
        results.append({"reference": b.upsert("Observation", obs_key, body)})

    if performers:
        report["performer"] = performers
    if specimens:
        report["specimen"] = [{"reference": s} for s in specimens]
    if results:
        report["result"] = results
    conclusion = "\n".join(t for n in order.notes if (t := _text(n, 3)))
    if conclusion:
        report["conclusion"] = conclusion
    report_url = b.ctx.full_url("DiagnosticReport", key.key.get("system", ""), key.key["value"])
    if forms:
        report["presentedForm"] = [
            _document(form, n, key=key, report_url=report_url, subject=subject, b=b)
            if "data" in form
            else form
            for n, form in enumerate(forms, start=1)
        ]
    b.upsert("DiagnosticReport", key.key, report)


def _document(
    form: dict[str, Any], n: int, *, key: _Key, report_url: str, subject: dict[str, str], b: _Builder
) -> dict[str, Any]:
    """An embedded file (ED) is filed as a DocumentReference whose bytes the document store keeps
    (S3, KMS) and verifies; ``presentedForm`` points at its content (``Binary/{id}``), so a 1 MB PDF
    never sits inside the DiagnosticReport item. The id is derived from the report and the form's
    place, so a resend or a correction addresses the same document (same bytes: unchanged)."""
    raw = base64.b64decode(form["data"])
    sha1 = base64.b64encode(hashlib.sha1(raw).digest()).decode("ascii")  # noqa: S324 - FHIR R4 Attachment.hash
    sha256 = base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii")
    document_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{b.ctx.tenant}|{key.key['value']}|presentedForm|{n}"))
    attachment = {
        "contentType": form["contentType"],
        "data": form["data"],
        "size": len(raw),
        "hash": sha1,
        "extension": [{"url": SHA256_EXTENSION, "valueBase64Binary": sha256}],
    }
    if form.get("title"):
        attachment["title"] = form["title"]
    document = {
        "resourceType": "DocumentReference",
        "id": document_id,
        "status": "current",
        "subject": subject,
        "description": form.get("title") or "Report form sent by the lab (HL7 v2 OBX ED)",
        "content": [{"attachment": attachment}],
        "context": {"related": [{"reference": report_url}]},
    }
    b.add(
        {
            "fullUrl": f"urn:uuid:{document_id}",
            "resource": document,
            "request": {"method": "PUT", "url": f"DocumentReference/{document_id}"},
        }
    )
    out = {k: v for k, v in attachment.items() if k not in ("data", "extension")}
    out["url"] = f"Binary/{document_id}"
    return out


def _observation_key(
    result: _Result, order: _Order, key: _Key, used: set[str], b: _Builder
) -> dict[str, Any]:
    obx = result.obx
    code = _code_key(obx.first(3)) or _code_key(order.obr.first(4))
    value = f"{key.key['value']}/{code}"
    sub = obx.raw(4).strip("^")
    if sub:
        value += f"/{sub}"
    if value in used:
        value += f"#{obx.get(1) or obx.position}"
        b.warn(
            "Two OBX in one OBR have the same OBX-3 and OBX-4; told apart by OBX-1, which a correction "
            "may not keep.",
            obx,
            4,
        )
    used.add(value)
    return {"system": key.key["system"], "value": value}


# -- one observation ------------------------------------------------------------------------------


def _observation(
    result: _Result,
    order: _Order,
    ctx: MappingContext,
    b: _Builder,
    report: tuple[str, str, dict[str, str]],
) -> dict[str, Any]:
    """One Observation; ``report`` is (category, the report's status as an Observation status, subject)."""
    category, default_status, subject = report
    obx, zone = result.obx, b.zone
    body: dict[str, Any] = {"resourceType": "Observation"}
    status_code = obx.get(11).upper()
    status = OBSERVATION_STATUS.get(status_code)
    if status is None:
        if status_code:
            b.warn("OBX-11 (result status) is not in table 0085.", obx, 11, "103")
        status = default_status
    body["status"] = status
    body["category"] = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}]
    code = _code(obx.first(3), ctx) or _code(order.obr.first(4), ctx)
    if code is None:
        raise MappingError(
            "OBX-3 (observation identifier) is required.", segment="OBX", position=obx.position, field=3
        )
    body["code"] = code
    body["subject"] = subject
    effective = _when(obx.get(14), zone)
    if effective:
        body["effectiveDateTime"] = effective
    _value(result, body, ctx, b)
    if status_code == "N" and not any(k.startswith("value") for k in body):
        body["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "not-asked"}]}
    interpretation = _interpretations(obx, ctx)
    if interpretation:
        body["interpretation"] = interpretation
    reference_range = _reference_range(obx.get(7), body.get("valueQuantity"))
    if reference_range:
        body["referenceRange"] = [reference_range]
    method = dt.codeable_concept(obx.first(17), ctx)
    if method:
        body["method"] = method
    notes = [{"text": t} for n in result.notes if (t := _text(n, 3))]
    if notes:
        body["note"] = notes
    return body


def _value(result: _Result, body: dict[str, Any], ctx: MappingContext, b: _Builder) -> None:
    """OBX-5 by OBX-2 value type into ``body`` (value[x]); oddities are warnings."""
    obx, zone = result.obx, b.zone
    value_type = obx.get(2).upper()
    if not obx.raw(5) and len(result.segments) == 1:
        return
    if value_type in _TEXT_TYPES or not value_type:
        if not value_type:
            b.warn("OBX-2 (value type) is empty; the value is kept as text.", obx, 2)
        text = "\n".join(_text(s, 5) for s in result.segments).strip("\n")
        if text:
            body["valueString"] = text
        return
    rep = obx.first(5)
    if len(obx.repetitions(5)) > 1 and value_type not in _TEXT_TYPES:
        b.warn("OBX-5 repeats; only the first value is kept.", obx, 5)
    if value_type == "NM":
        quantity = _quantity(rep.get(1), obx, allow_comparator=True)
        if quantity is not None:
            body["valueQuantity"] = quantity
            return
        b.warn("OBX-5 is not a number although OBX-2 is NM; the value is kept as text.", obx, 5, "102")
        body["valueString"] = _text(obx, 5)
    elif value_type == "SN":
        _structured_numeric(rep, obx, body, b)
    elif value_type in _CODED_TYPES:
        concept = dt.codeable_concept(rep, ctx)
        if concept:
            body["valueCodeableConcept"] = concept
    elif value_type in _DATE_TYPES:
        when = _when(rep.get(1), zone)
        if when:
            body["valueDateTime"] = when
        else:
            b.warn("OBX-5 is not a valid date/time; the value is kept as text.", obx, 5, "102")
            body["valueString"] = _text(obx, 5)
    elif value_type == "TM":
        match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", rep.get(1).strip())
        if match and int(match.group(1)) < 24:
            body["valueTime"] = f"{match.group(1)}:{match.group(2) or '00'}:{match.group(3) or '00'}"
        else:
            body["valueString"] = _text(obx, 5)
    else:
        b.warn(f"OBX-2 value type {value_type} is kept as text.", obx, 2)
        body["valueString"] = _text(obx, 5)


def _structured_numeric(rep: Repetition, obx: Segment, body: dict[str, Any], b: _Builder) -> None:
    """SN (comparator ^ num1 ^ separator/suffix ^ num2) → Quantity, Range or Ratio."""
    comparator, first, separator, second = (rep.get(i).strip() for i in (1, 2, 3, 4))
    if comparator and comparator not in _COMPARATORS and comparator not in {"=", '"', "-"}:
        b.warn(f"OBX-5 SN comparator {comparator!r} has no FHIR equivalent; kept as text.", obx, 5)
        body["valueString"] = " ".join(x for x in (comparator, first, separator, second) if x)
        return
    if not separator and not second:
        quantity = _quantity(first, obx)
        if quantity is not None:
            if comparator in _COMPARATORS:
                quantity = {"value": quantity["value"], "comparator": comparator} | {
                    k: v for k, v in quantity.items() if k != "value"
                }
            body["valueQuantity"] = quantity
            return
    elif separator == "-" and second:
        low, high = _quantity(first, obx), _quantity(second, obx)
        if low is not None and high is not None and low["value"] <= high["value"]:
            body["valueRange"] = {"low": low, "high": high}
            return
    elif separator in {":", "/"} and second:
        numerator, denominator = _quantity(first, obx), _quantity(second, obx)
        if numerator is not None and denominator is not None:
            body["valueRatio"] = {"numerator": numerator, "denominator": denominator}
            return
    text = "".join(x for x in (first, separator, second) if x)
    if not text:
        return
    b.warn("OBX-5 SN value is not a number, range or ratio; kept as text.", obx, 5, "102")
    body["valueString"] = (comparator if comparator in _COMPARATORS else "") + text


def _quantity(text: str, obx: Segment, *, allow_comparator: bool = False) -> dict[str, Any] | None:
    """A number (with OBX-6 as its unit) → Quantity; ``None`` when ``text`` is not a number."""
    match = _NM.match(text)
    if not match or (match.group(1) and not allow_comparator):
        return None
    try:
        number = Decimal(match.group(2))
    except InvalidOperation:
        return None
    out: dict[str, Any] = {"value": number}
    if match.group(1) in _COMPARATORS:
        out["comparator"] = match.group(1)
    out |= _unit(obx)
    return out


def _unit(obx: Segment) -> dict[str, str]:
    """OBX-6 → Quantity unit/system/code: UCUM when recognisable, else the unit text alone."""
    rep = obx.first(6)
    code, text, system = rep.get(1), rep.get(2), rep.get(3)
    alt_code, alt_system = rep.get(4), rep.get(6)
    if not (code or text or alt_code):
        return {}
    candidates: list[tuple[str, str]] = []
    if alt_code and alt_system.upper() == "UCUM":
        candidates.append((alt_code, alt_system))
    if not system or system.upper() in {"UCUM", "ANS+", "ANSI+", "ISO+"}:
        candidates += [(code, system), (text, "")]
    else:  # the code belongs to another system: only its text can be recognised
        candidates += [(text, ""), (code, "") if code != "1" else ("", "")]
    display = text or code or alt_code
    for candidate, name in candidates:
        found = ucum(candidate, name)
        if found:
            return {"unit": display, "system": UCUM, "code": found}
    return {"unit": display}


def _reference_range(text: str, quantity: dict[str, Any] | None) -> dict[str, Any] | None:
    """OBX-7 → referenceRange: ``70-105`` → low/high, ``<5`` → high, ``>10`` → low; always the text."""
    text = text.strip()
    if not text:
        return None
    unit = {k: v for k, v in (quantity or {}).items() if k in {"unit", "system", "code"}}
    out: dict[str, Any] = {}
    match = _RANGE.match(text)
    if match:
        low, high = Decimal(match.group(1)), Decimal(match.group(2))
        if low <= high:
            out["low"] = {"value": low, **unit}
            out["high"] = {"value": high, **unit}
    else:
        bound = _BOUND.match(text)
        if bound:
            side = "high" if bound.group(1) in {"<", "<=", "≤"} else "low"
            out[side] = {"value": Decimal(bound.group(2)), **unit}
    out["text"] = text
    return out


def _interpretations(obx: Segment, ctx: MappingContext) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rep in obx.repetitions(8):
        code, system = rep.get(1).strip(), rep.get(3)
        if code.upper() in INTERPRETATIONS and system.upper() in _V2_0078_NAMES:
            code = code.upper()
            out.append(
                {"coding": [{"system": INTERPRETATION, "code": code, "display": INTERPRETATIONS[code]}]}
            )
        elif concept := dt.codeable_concept(rep, ctx):
            out.append(concept)
    return out


# -- specimens and attachments --------------------------------------------------------------------


def _specimens(
    order: _Order, key: _Key, ctx: MappingContext, b: _Builder, subject: dict[str, str]
) -> list[str]:
    zone = b.zone
    out: list[str] = []
    for spm in order.specimens:
        full_url = _spm(spm, key, ctx, b, subject)
        if full_url not in out:
            out.append(full_url)
    if out:
        return out
    obr = order.obr
    source = obr.first(15)
    collected = _when(obr.get(7), zone)
    if not source and (not collected or obr.get(24).upper() in _IMAGING_SECTIONS):
        return out  # an imaging study's OBR-7 is when it was done, not a specimen collection
    body: dict[str, Any] = {"resourceType": "Specimen", "identifier": [key.key], "subject": subject}
    kind = dt.coding(source.get(1, 1), source.get(1, 2), source.get(1, 3), ctx)
    if kind:
        body["type"] = {"coding": [kind]}
    elif source.get(1):
        body["type"] = {"text": source.get(1)}
    collection: dict[str, Any] = {}
    end = _when(obr.get(8), zone)
    if collected and end and end >= collected:
        collection["collectedPeriod"] = {"start": collected, "end": end}
    elif collected:
        collection["collectedDateTime"] = collected
    site = dt.coding(source.get(4, 1), source.get(4, 2), source.get(4, 3), ctx)
    if site:
        collection["bodySite"] = {"coding": [site]}
    if collection:
        body["collection"] = collection
    out.append(b.upsert("Specimen", key.key, body))
    return out


def _spm(spm: Segment, key: _Key, ctx: MappingContext, b: _Builder, subject: dict[str, str]) -> str:
    """SPM → Specimen, upserted by SPM-2 (filler-assigned, else placer-assigned id)."""
    zone = b.zone
    ids = spm.first(2)
    identifiers: list[dict[str, Any]] = []
    for component, type_code in ((1, "PGN"), (2, "FGN")):
        value = ids.get(component, 1)
        if value:
            system = _sub_authority(ids, component, ctx)
            identifiers.append({**_typed({"system": system, "value": value}, type_code)})
    upsert_key: dict[str, Any]
    if identifiers:
        chosen = identifiers[-1]
        upsert_key = {"system": chosen["system"], "value": chosen["value"]}
    else:
        upsert_key = key.key
        identifiers.append(key.key)
    body: dict[str, Any] = {"resourceType": "Specimen", "identifier": identifiers, "subject": subject}
    kind = dt.codeable_concept(spm.first(4), ctx)
    if kind:
        body["type"] = kind
    received = _when(spm.get(18), zone)
    if received:
        body["receivedTime"] = received
    collection: dict[str, Any] = {}
    start, end = _when(spm.get(17, 1), zone), _when(spm.get(17, 2), zone)
    if start and end and end >= start:
        collection["collectedPeriod"] = {"start": start, "end": end}
    elif start:
        collection["collectedDateTime"] = start
    method = dt.codeable_concept(spm.first(7), ctx)
    if method:
        collection["method"] = method
    site = dt.codeable_concept(spm.first(8), ctx)
    if site:
        collection["bodySite"] = site
    amount = spm.first(12)
    if amount.get(1):
        try:
            quantity: dict[str, Any] = {"value": Decimal(amount.get(1).strip())}
            unit = amount.get(2, 1) or amount.get(2)
            if unit:
                quantity["unit"] = unit
                code = ucum(unit, amount.get(2, 3))
                if code:
                    quantity |= {"system": UCUM, "code": code}
            collection["quantity"] = quantity
        except InvalidOperation:
            b.warn("SPM-12 (specimen collection amount) is not a number.", spm, 12, "102")
    if collection:
        body["collection"] = collection
    return b.upsert("Specimen", upsert_key, body)


def _sub_authority(rep: Repetition, component: int, ctx: MappingContext) -> str:
    """The system of an EI held in subcomponents (EIP of SPM-2: id&namespace&universal&type)."""
    namespace, universal, kind = rep.get(component, 2), rep.get(component, 3), rep.get(component, 4)
    if universal and (kind.upper() == "ISO" or re.fullmatch(r"\d+(\.\d+)+", universal)):
        return f"urn:oid:{universal}"
    return ctx.identifier_system(namespace or universal or "")


def _url_pointer(obx: Segment) -> bool:
    return obx.get(5).lower().startswith(("http://", "https://"))


def _attachment(obx: Segment, value_type: str, b: _Builder) -> dict[str, Any] | None:
    """ED (source ^ type ^ subtype ^ encoding ^ data) → an inline base64 Attachment; RP with a URL
    pointer → an Attachment by URL."""
    rep = obx.first(5)
    title = obx.get(3, 2) or obx.get(3, 9) or obx.get(3)
    if value_type == "RP":
        out: dict[str, Any] = {"contentType": _mime(rep.get(3), rep.get(4)), "url": rep.get(1)}
        return out | ({"title": title} if title else {})
    kind, subtype, encoding = rep.get(2), rep.get(3), rep.get(4).upper()
    payload = rep.components[4] if len(rep.components) > 4 else ""
    if "\\" in payload:
        payload = obx.encoding.unescape(payload)
    if not payload:
        b.warn("OBX-5 (encapsulated data) is empty.", obx, 5)
        return None
    try:
        if encoding in {"BASE64", "B64"}:
            data = "".join(payload.split()) if _SPACE.search(payload) else payload
            if len(data) % 4 or not _BASE64.fullmatch(data):
                raise ValueError("not base64")  # checked without decoding a copy of the payload
        elif encoding == "HEX":
            data = base64.b64encode(bytes.fromhex(payload)).decode("ascii")
        elif encoding in {"A", "ASCII", ""}:
            data = base64.b64encode(payload.encode("utf-8")).decode("ascii")
        else:
            raise MappingError(
                f"OBX-5.4 encoding {encoding!r} is not A, Hex or Base64.",
                segment="OBX",
                position=obx.position,
                field=5,
                component=4,
                code="103",
            )
    except ValueError as error:
        if isinstance(error, MappingError):
            raise
        raise MappingError(
            f"OBX-5 encapsulated data is not valid {encoding or 'text'}.",
            segment="OBX",
            position=obx.position,
            field=5,
            component=5,
            code="102",
        ) from None
    out = {"contentType": _mime(kind, subtype), "data": data}
    return out | ({"title": title} if title else {})


def _mime(kind: str, subtype: str) -> str:
    if "/" in subtype:
        return subtype.strip().lower()
    if kind.strip().lower() in _MIME_TOP and subtype.strip():
        return f"{kind.strip().lower()}/{subtype.strip().lower()}"
    return _MIME.get(subtype.strip().upper()) or _MIME.get(kind.strip().upper(), "application/octet-stream")


# -- text and time --------------------------------------------------------------------------------


def _text(seg: Segment, number: int) -> str:
    """A text field (ST/TX/FT, NTE-3) decoded; repetitions are lines, formatting escapes (``\\.br\\``,
    ``\\.sp\\``) line breaks."""
    raw = seg.raw(number)
    if not raw or raw == '""':
        return ""
    enc = seg.encoding
    lines = raw.split(enc.repetition) if enc.repetition in raw else [raw]
    return "\n".join(enc.unescape(line) for line in lines).replace("\r\n", "\n").replace("\r", "\n")


def _with_zone(value: str, zone: str) -> str:
    """HL7: a time without a zone is in the sender's zone, which MSH-7 gives when it has one."""
    value = value.strip()
    if zone and _ZONELESS_TIME.match(value):
        return value + zone
    return value


def _when(value: str, zone: str) -> str | None:
    return dt.date_time(_with_zone(value, zone)) if value else None
