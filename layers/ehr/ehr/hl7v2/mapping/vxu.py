"""VXU^V04 (unsolicited vaccination record update) → Patient + one Immunization per RXA.

Each ORDER group (ORC, RXA, RXR, OBX…) becomes an Immunization upserted on the ORC-3 filler order
number (else on a stable key derived from the patient, the vaccine and RXA-3). The Patient comes
from ``adt.patient_entry``. See docs/hl7v2-mapping-adt.md for the field table.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from ehr.hl7v2.er7 import Message, Segment
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, Warning_
from ehr.hl7v2.mapping import datatypes as dt
from ehr.hl7v2.mapping.adt import Entries, actor_reference, key_identifier, patient_entry

ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PERFORMER_FUNCTION: Final = "http://terminology.hl7.org/CodeSystem/v2-0443"
MVX: Final = "http://terminology.hl7.org/CodeSystem/MVX"
UCUM: Final = "http://unitsofmeasure.org"
# RXA-9 administration notes (NIP001): 00 = new immunization record; 01..08 = historical sources.
NIP001: Final = "urn:oid:2.16.840.1.114222.4.5.274"
UNKNOWN_AMOUNT: Final = "999"  # CDC IG: RXA-6 999 means the amount is not known

# OBX-3 (LOINC) observations in a VXU order group that land on the Immunization itself.
FUNDING_SOURCE: Final = "30963-3"
ELIGIBILITY: Final = "64994-7"
VIS_DOCUMENT: Final = "69764-9"
VIS_VACCINE: Final = "30956-7"
VIS_PUBLISHED: Final = "29768-9"
VIS_PRESENTED: Final = "29769-7"


def map_vxu(message: Message, ctx: MappingContext) -> Mapping:
    """VXU^V04 → Patient + an Immunization per RXA (see the module docstring)."""
    warnings: list[Warning_] = []
    entries = Entries()
    patient = patient_entry(message, ctx, warnings)
    entries.add(patient)
    pid = message.first("PID")
    assert pid is not None  # patient_entry raised otherwise
    patient_key = key_identifier(pid, ctx)
    orc: Segment | None = None
    seen: set[str] = set()
    for seg in message.segments:
        if seg.name == "ORC":
            orc = seg
        elif seg.name == "RXA":
            entry = immunization_entry(
                message,
                seg,
                orc,
                patient=patient,
                patient_key=patient_key,
                ctx=ctx,
                entries=entries,
                warnings=warnings,
            )
            orc = None  # an ORC belongs to the one RXA that follows it
            if entry["fullUrl"] in seen:
                warnings.append(
                    Warning_(
                        "This RXA has the same key (ORC-3, or patient, vaccine and date) as an earlier one "
                        "in the message; it was left out.",
                        segment="RXA",
                        position=seg.position,
                    )
                )
                continue
            seen.add(entry["fullUrl"])
            entries.add(entry)
    return Mapping(bundle=entries.bundle(), warnings=warnings)


def immunization_entry(
    message: Message,
    rxa: Segment,
    orc: Segment | None,
    *,
    patient: dict[str, Any],
    patient_key: dict[str, Any],
    ctx: MappingContext,
    entries: Entries,
    warnings: list[Warning_],
) -> dict[str, Any]:
    vaccine = dt.codeable_concept(rxa.first(5), ctx)
    if vaccine is None:
        raise MappingError(
            "RXA-5 (administered code) is required and empty.",
            segment="RXA",
            position=rxa.position,
            field=5,
        )
    occurrence = dt.date_time(rxa.get(3))
    if occurrence is None:
        raise MappingError(
            "RXA-3 (date/time start of administration) is required and is empty or not a date.",
            segment="RXA",
            position=rxa.position,
            field=3,
            code="101" if not rxa.get(3) else "102",
        )
    identifiers = []
    if orc is not None:
        for field in (3, 2):  # filler first: the upsert key
            ident = dt.entity_identifier(orc.first(field), ctx)
            if ident:
                identifiers.append(ident)
    if identifiers:
        key = identifiers[0]
    else:
        coding = vaccine.get("coding", [{}])[0]
        seed = "|".join(
            (
                patient_key["system"],
                patient_key["value"],
                coding.get("system", ""),
                coding.get("code", ""),
                rxa.get(3),
            )
        )
        key = {
            "system": ctx.identifier_system(
                f"{ctx.sending_facility or ctx.sending_application}-immunization-key"
            ),
            "value": hashlib.sha256(seed.encode()).hexdigest()[:32],
        }
        identifiers.append(key)
    body: dict[str, Any] = {
        "resourceType": "Immunization",
        "identifier": identifiers,
        "status": "completed",
        "vaccineCode": vaccine,
        "patient": {"reference": patient["fullUrl"]},
        "occurrenceDateTime": occurrence,
    }
    _status(rxa, body, ctx)
    recorded = dt.date_time(rxa.get(22))
    if recorded:
        body["recorded"] = recorded
    _source(rxa, body, ctx)
    _dose(rxa, body, warnings)
    lot = rxa.get(15).strip()
    if lot:
        body["lotNumber"] = lot
    expiry = dt.date_time(rxa.get(16))
    if expiry:
        body["expirationDate"] = expiry[:10]
    manufacturer = _manufacturer(rxa, ctx)
    if manufacturer:
        body["manufacturer"] = manufacturer
    reasons = [c for rep in rxa.repetitions(19) if (c := dt.codeable_concept(rep, ctx))]
    if reasons:
        body["reasonCode"] = reasons
    _route_and_site(message, rxa, body, ctx)
    performers = _performers(rxa, orc, ctx, entries)
    if performers:
        body["performer"] = performers
    _observations(message, rxa, body, ctx)
    return {
        "fullUrl": ctx.full_url("Immunization", key["system"], key["value"]),
        "resource": body,
        "request": {"method": "PUT", "url": dt.conditional_url("Immunization", key["system"], key["value"])},
    }


def _manufacturer(rxa: Segment, ctx: MappingContext) -> dict[str, Any] | None:
    """RXA-17 (MVX) as a logical Reference: the manufacturer's code as an identifier, its name."""
    rep = rxa.first(17)
    if not (rep.get(1) or rep.get(2)):
        return None
    ref: dict[str, Any] = {}
    if rep.get(1):
        ref["identifier"] = {"system": dt.code_system(rep.get(3), ctx) or MVX, "value": rep.get(1).strip()}
    if rep.get(2):
        ref["display"] = rep.get(2)
    return ref


def _performers(
    rxa: Segment, orc: Segment | None, ctx: MappingContext, entries: Entries
) -> list[dict[str, Any]]:
    """RXA-10 administering provider (AP) and ORC-12 ordering provider (OP)."""
    out = []
    sources = [(rep, "AP", "Administering Provider") for rep in rxa.repetitions(10)]
    if orc is not None:
        sources += [(rep, "OP", "Ordering Provider") for rep in orc.repetitions(12)]
    for rep, code, display in sources:
        actor = actor_reference(rep, ctx, entries)
        if actor:
            out.append({"function": _function(code, display), "actor": actor})
    return out


def _function(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": PERFORMER_FUNCTION, "code": code, "display": display}]}


def _status(rxa: Segment, body: dict[str, Any], ctx: MappingContext) -> None:
    """RXA-20 completion status and RXA-21 action code → status, statusReason, isSubpotent."""
    completion = rxa.get(20).strip().upper()
    action = rxa.get(21).strip().upper()
    if action == "D":
        body["status"] = "entered-in-error"
        return
    if completion == "RE":
        body["status"] = "not-done"
        reason = dt.codeable_concept(rxa.first(18), ctx)
        body["statusReason"] = reason or {
            "coding": [{"system": ACT_REASON, "code": "PATOBJ", "display": "patient objection"}]
        }
    elif completion == "NA":
        body["status"] = "not-done"
        reason = dt.codeable_concept(rxa.first(18), ctx)
        if reason:
            body["statusReason"] = reason
    elif completion == "PA":
        body["status"] = "completed"
        body["isSubpotent"] = True
    # CP, or empty (the CDC IG's default), is completed


def _source(rxa: Segment, body: dict[str, Any], ctx: MappingContext) -> None:
    """RXA-9 administration notes (NIP001): 00 → primarySource true; 01..08 (historical) → false
    with the source as reportOrigin."""
    rep = rxa.first(9)
    code = rep.get(1).strip()
    if not code:
        return
    system_name = rep.get(3).strip().upper()
    if system_name and system_name != "NIP001":
        return  # free-text notes: not a source
    body["primarySource"] = code == "00"
    if code != "00":
        origin: dict[str, Any] = {"coding": [{"system": NIP001, "code": code}]}
        if rep.get(2):
            origin["coding"][0]["display"] = rep.get(2)
        body["reportOrigin"] = origin


def _dose(rxa: Segment, body: dict[str, Any], warnings: list[Warning_]) -> None:
    amount = rxa.get(6).strip()
    if not amount or amount == UNKNOWN_AMOUNT:
        return
    try:
        value = Decimal(amount)
    except InvalidOperation:
        warnings.append(
            Warning_("RXA-6 (administered amount) is not a number; left out.", "RXA", rxa.position, 6)
        )
        return
    if not value.is_finite():
        return
    quantity: dict[str, Any] = {"value": float(value) if value != value.to_integral() else int(value)}
    units = rxa.first(7)
    unit_code, unit_text, unit_system = units.get(1).strip(), units.get(2).strip(), units.get(3).strip()
    if unit_code or unit_text:
        quantity["unit"] = unit_text or unit_code
        if unit_code and unit_system.upper() in ("UCUM", "ISO+", "ANS+"):
            quantity["system"], quantity["code"] = UCUM, unit_code
    body["doseQuantity"] = quantity


def _route_and_site(message: Message, rxa: Segment, body: dict[str, Any], ctx: MappingContext) -> None:
    rxr = next(message.following(rxa, {"RXR"}, {"RXA", "ORC"}), None)
    if rxr is None:
        return
    route = dt.codeable_concept(rxr.first(1), ctx)
    if route:
        body["route"] = route
    site = dt.codeable_concept(rxr.first(2), ctx)
    if site:
        body["site"] = site


def _observations(message: Message, rxa: Segment, body: dict[str, Any], ctx: MappingContext) -> None:
    """The order group's OBX that describe the immunization itself: funding source, program
    eligibility and the vaccine information statements (VIS) given. Other OBX are not mapped."""
    education: dict[str, dict[str, Any]] = {}
    for obx in message.following(rxa, {"OBX"}, {"RXA", "ORC"}):
        code = obx.get(3).strip()
        value = obx.first(5)
        if code == FUNDING_SOURCE:
            concept = dt.codeable_concept(value, ctx)
            if concept:
                body["fundingSource"] = concept
        elif code == ELIGIBILITY:
            concept = dt.codeable_concept(value, ctx)
            if concept:
                body.setdefault("programEligibility", []).append(concept)
        elif code in (VIS_DOCUMENT, VIS_VACCINE, VIS_PUBLISHED, VIS_PRESENTED):
            item = education.setdefault(obx.get(4).strip() or "1", {})
            if code == VIS_DOCUMENT and value.get(1):
                item["documentType"] = value.get(1).strip()
            elif code == VIS_VACCINE and value.get(1):
                item["documentType"] = item.get("documentType") or value.get(2) or value.get(1)
            elif code == VIS_PUBLISHED and (when := dt.date_time(value.get(1))):
                item["publicationDate"] = when
            elif code == VIS_PRESENTED and (when := dt.date_time(value.get(1))):
                item["presentationDate"] = when
    items = [item for item in education.values() if item.get("documentType") or item.get("reference")]
    if items:
        body["education"] = items
