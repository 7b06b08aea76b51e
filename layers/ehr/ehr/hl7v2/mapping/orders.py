"""ORM^O01 and OML^O21 (orders from other facilities) → ServiceRequest, with the Patient, the
Encounter, the requesting Practitioner, the specimens (SPM) and the ask-at-order-entry answers (OBX).

One ServiceRequest per order group (ORC with its OBR). The upsert key is the placer order number
(ORC-2, else OBR-2; the filler number ORC-3/OBR-3 when there is no placer number), so a later
message about the same order (change, hold, cancel) updates the same ServiceRequest:

- an order group with an OBR carries the whole order: the ServiceRequest is replaced (PUT);
- an ORC without any order detail (``ORC|CA|12345``, the usual cancel / hold / release) only
  changes the status: a conditional JSON Patch of ``/status``, so the code, requester and notes
  stored from the original order are kept (the order must exist; else the transaction fails);
- order groups whose detail is not an OBR (RXO pharmacy, RQD supply, ODS diet, ...) are not
  ServiceRequests: they are left out with a warning (and a message with nothing else is refused).

The tables (ORC-1 order control → status, ORC-5 order status → status, priorities) are in
``docs/hl7v2-mapping-orders-mdm.md``; that file and the constants below must agree.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ehr.hl7v2.er7 import Message, Repetition, Segment
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, Warning_
from ehr.hl7v2.mapping.adt import Entries, actor_reference, encounter_entry, patient_entry
from ehr.hl7v2.mapping.datatypes import codeable_concept, conditional_url, date_time, entity_identifier
from ehr.hl7v2.mapping.units import UCUM, ucum

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
SNOMED = "http://snomed.info/sct"

# ORC-5 order status (HL7 table 0038) → ServiceRequest.status. Wins over ORC-1 when present.
ORDER_STATUS: dict[str, str] = {
    "A": "active",  # some, not all, results available
    "CA": "revoked",  # order was canceled
    "CM": "completed",  # order is completed
    "DC": "revoked",  # order was discontinued
    "ER": "entered-in-error",  # error, order not found
    "HD": "on-hold",  # order is on hold
    "IP": "active",  # in process, unspecified
    "RP": "revoked",  # order has been replaced
    "SC": "active",  # in process, scheduled
}

# ORC-1 order control (HL7 table 0119) → ServiceRequest.status when ORC-5 is empty.
ORDER_CONTROL: dict[str, str] = {
    "NW": "active",  # new order
    "OK": "active",  # order accepted
    "NA": "active",  # number assigned
    "SN": "active",  # send order number
    "SC": "active",  # status changed: the new status is in ORC-5 (a warning when it is not)
    "RE": "active",  # observations to follow
    "XO": "active",  # change order request
    "XX": "active",  # order changed, unsolicited
    "XR": "active",  # changed as requested
    "RL": "active",  # release previous hold
    "OR": "active",  # released as requested
    "RO": "active",  # replacement order
    "CA": "revoked",  # cancel order request
    "OC": "revoked",  # order canceled
    "CR": "revoked",  # canceled as requested
    "DC": "revoked",  # discontinue order request
    "OD": "revoked",  # order discontinued
    "DR": "revoked",  # discontinued as requested
    "RP": "revoked",  # order replace request (this ORC is the order being replaced)
    "RU": "revoked",  # replaced unsolicited
    "RQ": "revoked",  # replaced as requested
    "HD": "on-hold",  # hold order request
    "OH": "on-hold",  # order held
    "HR": "on-hold",  # on hold as requested
}

# Priority: TQ1-9 / TQ-6 (table 0485) and OBR-5 (deprecated) → ServiceRequest.priority.
PRIORITY: dict[str, str] = {"S": "stat", "A": "asap", "R": "routine", "P": "urgent", "T": "urgent"}

# OBR-24 diagnostic service section (table 0074) codes that are imaging, not laboratory.
IMAGING_SECTIONS = frozenset({"RAD", "CT", "MR", "NMR", "NMS", "RX", "US", "VUS", "XRC", "CUS", "OUS"})
LAB_CATEGORY = {"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"}
IMAGING_CATEGORY = {"system": SNOMED, "code": "363679005", "display": "Imaging"}

# OBX-11 observation result status (table 0085) → Observation.status.
OBSERVATION_STATUS: dict[str, str] = {
    "C": "corrected",
    "D": "entered-in-error",
    "F": "final",
    "I": "registered",
    "O": "registered",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "U": "final",
    "W": "entered-in-error",
    "X": "cancelled",
}

# Order detail segments that are not an observation request: not mapped to a ServiceRequest.
OTHER_DETAIL = {
    "RXO": "pharmacy",
    "RXE": "pharmacy",
    "RQD": "supply",
    "RQ1": "supply",
    "ODS": "diet",
    "ODT": "diet",
    "BPO": "blood product",
}
# Segments after which an NTE still belongs to the order (not to an OBX or SPM).
_ORDER_NOTE_OWNERS = frozenset({"ORC", "OBR", "TQ1", "TQ2", "TCD", "PRT", "CTD", "NTE"})


# -- the transaction Bundle -------------------------------------------------------------------


class TransactionBuilder(Entries):
    """The Bundle being built (ADT's ``Entries``: one entry per fullUrl, so a resource named twice
    in a message is written once — the processor refuses two entries changing one resource)."""

    def __init__(self, ctx: MappingContext) -> None:
        super().__init__()
        self.ctx = ctx

    def upsert(self, resource: dict[str, Any], ident: dict[str, Any]) -> str:
        """A conditional update (``PUT Type?identifier=s|v``); returns the entry's fullUrl."""
        resource_type, system, value = (
            str(resource["resourceType"]),
            str(ident["system"]),
            str(ident["value"]),
        )
        return self.add(
            {
                "fullUrl": self.ctx.full_url(resource_type, system, value),
                "resource": resource,
                "request": {"method": "PUT", "url": conditional_url(resource_type, system, value)},
            }
        )

    def create_if_absent(self, entry: dict[str, Any]) -> str:
        """``entry`` (a conditional PUT) as a conditional create: POST with ``ifNoneExist``, so an
        existing resource is kept as it is."""
        resource_type, _, query = str(entry["request"]["url"]).partition("?")
        return self.add({**entry, "request": {"method": "POST", "url": resource_type, "ifNoneExist": query}})

    def patch(self, resource_type: str, ident: dict[str, Any], operations: list[dict[str, Any]]) -> str:
        """A conditional JSON Patch of an existing resource (the transaction fails if there is none)."""
        system, value = str(ident["system"]), str(ident["value"])
        data = base64.b64encode(json.dumps(operations).encode()).decode("ascii")
        return self.add(
            {
                "fullUrl": self.ctx.full_url("patch", resource_type, system, value),
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": data,
                },
                "request": {"method": "PATCH", "url": conditional_url(resource_type, system, value)},
            }
        )


# -- shared pieces: Patient, Encounter, Practitioner ------------------------------------------


def patient_reference(
    message: Message, ctx: MappingContext, builder: TransactionBuilder, warnings: list[Warning_]
) -> tuple[str, dict[str, Any]]:
    """(fullUrl, entry) of the Patient from PID, built by ADT's ``patient_entry`` (upserted on the
    MR identifier of PID-3, else its first). Raises ``MappingError`` without PID or PID-3."""
    entry = patient_entry(message, ctx, warnings)
    return builder.add(entry), entry


def encounter_reference(
    message: Message,
    ctx: MappingContext,
    builder: TransactionBuilder,
    patient: dict[str, Any],
    warnings: list[Warning_],
) -> str | None:
    """The Encounter of PV1 as ADT builds it (keyed by PV1-19), but created only when it does not
    exist yet: an order or a document never overwrites the visit ADT keeps. ``None`` without PV1
    or when the visit cannot be identified."""
    pv1 = message.first("PV1")
    if pv1 is None:
        return None
    patient_key = patient["resource"]["identifier"][0]
    for ident in patient["resource"]["identifier"]:
        if conditional_url("Patient", ident["system"], ident["value"]) == patient["request"]["url"]:
            patient_key = ident
    found: list[Warning_] = []
    entry = encounter_entry(message, pv1, patient, patient_key, ctx, builder, found)
    warnings += found
    return builder.create_if_absent(entry) if entry is not None else None


def practitioner_reference(
    rep: Repetition, ctx: MappingContext, builder: TransactionBuilder
) -> dict[str, Any] | None:
    """An XCN as a Reference: to a Practitioner upserted on XCN-1 (XCN-9 as its system), else a
    display-only reference when the XCN has a name but no id (ADT's ``actor_reference``)."""
    return actor_reference(rep, ctx, builder)


def note_text(seg: Segment, number: int = 3) -> str:
    """An FT/TX field: its repetitions as lines, escapes decoded, CR LF as a line feed."""
    lines = [seg.encoding.unescape(rep.raw) for rep in seg.repetitions(number)]
    return "\n".join(lines).replace("\r\n", "\n").replace("\r", "\n").strip()


def warn(warnings: list[Warning_], reason: str, seg: Segment | None, field_: int = 0) -> None:
    warnings.append(
        Warning_(
            reason=reason,
            segment=seg.name if seg else "",
            position=seg.position if seg else 0,
            field=field_,
        )
    )


# -- order groups ------------------------------------------------------------------------------


@dataclass
class _Order:
    orc: Segment | None
    obr: Segment | None = None
    tq1: Segment | None = None
    detail: str = ""  # a non-OBR detail segment (RXO, RQD, ...)
    notes: list[str] = field(default_factory=list)
    diagnoses: list[Segment] = field(default_factory=list)
    observations: list[Segment] = field(default_factory=list)
    specimens: list[Segment] = field(default_factory=list)
    duplicate_of: _Order | None = None

    @property
    def anchor(self) -> Segment:
        seg = self.obr or self.orc
        assert seg is not None
        return seg


def _groups(message: Message) -> list[_Order]:
    """The order groups: ORC starts one; an OBR after an OBR under the same ORC starts another
    that shares the ORC. NTE/DG1/OBX/SPM attach to the group they follow."""
    orders: list[_Order] = []
    current: _Order | None = None
    owner = ""  # the segment an NTE would annotate
    for seg in message.segments:
        name = seg.name
        if name == "ORC":
            current = _Order(orc=seg)
            orders.append(current)
        elif name == "OBR":
            if current is None or current.obr is not None or current.detail:
                current = _Order(orc=current.orc if current else None, obr=seg)
                orders.append(current)
            else:
                current.obr = seg
        elif current is None:
            continue  # PID, PV1, patient-level NTE, ...: not part of an order
        elif name == "NTE":
            if owner in _ORDER_NOTE_OWNERS and (text := note_text(seg)):
                current.notes.append(text)
            continue  # an NTE keeps the owner of the NTE before it
        elif name in OTHER_DETAIL:
            current.detail = current.detail or name
        elif name == "TQ1":
            current.tq1 = current.tq1 or seg
        elif name == "DG1":
            current.diagnoses.append(seg)
        elif name == "SPM":
            current.specimens.append(seg)
        elif name == "OBX":
            if owner in ("SPM", "SPM-OBX", "SAC"):
                name = "SPM-OBX"  # an observation about the specimen, not an order answer
            else:
                current.observations.append(seg)
        owner = name
    return orders


def _order_identifiers(
    order: _Order, message: Message, ctx: MappingContext
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(placer, filler) identifiers: ORC-2/3 first, then OBR-2/3 (EI; no authority → the sender)."""
    placer = filler = None
    for seg in (order.orc, order.obr):
        if seg is None:
            continue
        placer = placer or order_number(seg.first(2), ctx, "placer")
        filler = filler or order_number(seg.first(3), ctx, "filler")
    if placer:
        placer["type"] = {"coding": [{"system": V2_0203, "code": "PLAC"}]}
    if filler:
        filler["type"] = {"coding": [{"system": V2_0203, "code": "FILL"}]}
    return placer, filler


def order_number(rep: Repetition, ctx: MappingContext, role: str) -> dict[str, Any] | None:
    ident = entity_identifier(rep, ctx)
    if ident is None:
        return None
    if not (rep.get(2) or rep.get(3)):  # no assigning authority: the sender's numbering
        ident["system"] = ctx.identifier_system(f"{ctx.sending_facility or ctx.sending_application} {role}")
    return ident


def _status(order: _Order, warnings: list[Warning_]) -> str:
    orc = order.orc
    if orc is None:
        warn(warnings, "OBR has no ORC before it; the order status is unknown.", order.obr)
        return "unknown"
    order_status = orc.get(5).upper()
    if order_status in ORDER_STATUS:
        return ORDER_STATUS[order_status]
    if order_status:
        warn(
            warnings,
            f"ORC-5 (order status) {order_status!r} is not a value of HL7 table 0038; "
            "the status follows ORC-1 (order control).",
            orc,
            5,
        )
    control = orc.get(1).upper()
    if not control:
        raise MappingError(
            "ORC-1 (order control) is required and empty.", segment="ORC", position=orc.position, field=1
        )
    if control not in ORDER_CONTROL:
        raise MappingError(
            f"ORC-1 (order control) {control!r} is not an order control this interface accepts "
            f"({', '.join(sorted(ORDER_CONTROL))}).",
            segment="ORC",
            position=orc.position,
            field=1,
            code="103",
        )
    if control == "SC" and not order_status:
        warn(warnings, "ORC-1 is SC (status changed) but ORC-5 gives no status; kept as active.", orc, 5)
    return ORDER_CONTROL[control]


def _priority(order: _Order) -> str | None:
    candidates = [
        order.tq1.get(9) if order.tq1 else "",
        order.obr.get(27, 6) if order.obr else "",
        order.orc.get(7, 6) if order.orc else "",
        order.obr.get(5) if order.obr else "",
    ]
    for code in candidates:
        if code and code.upper() in PRIORITY:
            return PRIORITY[code.upper()]
    return None


def _occurrence(order: _Order) -> dict[str, Any]:
    """TQ1-7/8, else the TQ start/end of OBR-27 or ORC-7, else OBR-7/8 (observation date/time)."""
    pairs = []
    if order.tq1:
        pairs.append((order.tq1.get(7), order.tq1.get(8)))
    for seg, n in ((order.obr, 27), (order.orc, 7)):
        if seg is not None:
            pairs.append((seg.get(n, 4), seg.get(n, 5)))
    if order.obr:
        pairs.append((order.obr.get(7), order.obr.get(8)))
    for start_text, end_text in pairs:
        start, end = date_time(start_text), date_time(end_text)
        if start and end:
            return {"occurrencePeriod": {"start": start, "end": end}}
        if start:
            return {"occurrenceDateTime": start}
    return {}


def _category(obr: Segment) -> list[dict[str, Any]]:
    section = obr.get(24).upper()
    codings: list[dict[str, Any]] = [dict(IMAGING_CATEGORY if section in IMAGING_SECTIONS else LAB_CATEGORY)]
    if section:
        codings.append({"system": V2_0074, "code": section})
    return [{"coding": codings}]


def _reasons(order: _Order, ctx: MappingContext) -> list[dict[str, Any]]:
    reasons: list[dict[str, Any]] = []
    reps = [rep for seg in order.diagnoses for rep in seg.repetitions(3)]
    if order.obr is not None:
        reps += order.obr.repetitions(31)
    for rep in reps:
        concept = codeable_concept(rep, ctx)
        if concept and concept not in reasons:
            reasons.append(concept)
    return reasons


# -- AOE observations and specimens ----------------------------------------------------------


def _observation(
    obx: Segment, ctx: MappingContext, subject: str, warnings: list[Warning_]
) -> dict[str, Any] | None:
    code = codeable_concept(obx.first(3), ctx)
    if code is None:
        warn(warnings, "OBX-3 (observation identifier) is empty; the answer is left out.", obx, 3)
        return None
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": OBSERVATION_STATUS.get(obx.get(11).upper(), "unknown"),
        "code": code,
        "subject": {"reference": subject},
    }
    value = _obx_value(obx, ctx, warnings)
    if value:
        body.update(value)
    effective = date_time(obx.get(14))
    if effective:
        body["effectiveDateTime"] = effective
    return body


def _obx_value(obx: Segment, ctx: MappingContext, warnings: list[Warning_]) -> dict[str, Any]:
    kind = obx.get(2).upper()
    reps = obx.repetitions(5)
    if not reps:
        return {}
    first = reps[0]
    if kind == "NM":
        text = first.get(1).strip()
        if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", text):
            quantity: dict[str, Any] = {"value": float(text) if "." in text else int(text)}
            unit_code, unit_text = obx.get(6), obx.get(6, 2) or obx.get(6)
            if unit_text:
                quantity["unit"] = unit_text
            ucum_code = ucum(unit_code, obx.get(6, 3)) if unit_code else None
            if ucum_code:
                quantity.update(system=UCUM, code=ucum_code)
            return {"valueQuantity": quantity}
        warn(warnings, "OBX-5 is not a number although OBX-2 is NM; kept as text.", obx, 5)
        return {"valueString": text}
    if kind in ("CE", "CWE", "CNE", "CF"):
        concept = codeable_concept(first, ctx)
        return {"valueCodeableConcept": concept} if concept else {}
    if kind in ("DT", "TS", "DTM"):
        moment = date_time(first.get(1))
        if moment:
            return {"valueDateTime": moment}
    text = note_text(obx, 5)
    return {"valueString": text} if text else {}


def _specimen(
    spm: Segment, ctx: MappingContext, subject: str, request: str, warnings: list[Warning_]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """SPM → (Specimen, its key identifier); the key is SPM-2 (filler id, else placer id)."""
    ids: list[dict[str, Any]] = []
    for component, code in ((1, "PGN"), (2, "FGN")):
        value = spm.get(2, component, 1)
        if not value:
            continue
        system = _specimen_system(spm, component, ctx)
        ids.append(
            {"system": system, "value": value, "type": {"coding": [{"system": V2_0203, "code": code}]}}
        )
    if not ids:
        warn(warnings, "SPM-2 (specimen identifier) is empty; the specimen is left out.", spm, 2)
        return None
    body: dict[str, Any] = {
        "resourceType": "Specimen",
        "identifier": ids,
        "subject": {"reference": subject},
        "request": [{"reference": request}],
    }
    kind = codeable_concept(spm.first(4), ctx)
    if kind:
        body["type"] = kind
    collection: dict[str, Any] = {}
    method = codeable_concept(spm.first(7), ctx)
    if method:
        collection["method"] = method
    site = codeable_concept(spm.first(8), ctx)
    if site:
        collection["bodySite"] = site
    amount = spm.get(12)
    if re.fullmatch(r"\d+(\.\d+)?", amount):
        quantity: dict[str, Any] = {"value": float(amount) if "." in amount else int(amount)}
        unit = spm.get(12, 2, 1) or spm.get(12, 2, 2)
        if unit:
            quantity["unit"] = unit
        collection["quantity"] = quantity
    start, end = date_time(spm.get(17, 1)), date_time(spm.get(17, 2))
    if start and end:
        collection["collectedPeriod"] = {"start": start, "end": end}
    elif start:
        collection["collectedDateTime"] = start
    if collection:
        body["collection"] = collection
    received = date_time(spm.get(18))
    if received and "T" in received:
        body["receivedTime"] = received
    notes = note_text(spm, 14)
    if notes:
        body["note"] = [{"text": notes}]
    key = ids[-1]  # the filler's number when there is one: the lab's accession
    return body, key


def _specimen_system(spm: Segment, component: int, ctx: MappingContext) -> str:
    namespace, universal, kind = (spm.get(2, component, n) for n in (2, 3, 4))
    if universal and (kind.upper() == "ISO" or re.fullmatch(r"\d+(\.\d+)+", universal)):
        return f"urn:oid:{universal}"
    return ctx.identifier_system(namespace or universal or f"{ctx.sending_facility} specimen")


# -- the mapper --------------------------------------------------------------------------------


def map_order(message: Message, ctx: MappingContext) -> Mapping:
    """ORM^O01 / OML^O21 → a transaction of ServiceRequests (see the module docstring)."""
    warnings: list[Warning_] = []
    builder = TransactionBuilder(ctx)
    orders = _groups(message)
    if not orders:
        raise MappingError("The message has no ORC or OBR segment (no order).", segment="ORC", code="100")
    keyed: dict[str, _Order] = {}
    mapped: list[tuple[_Order, dict[str, Any], dict[str, Any] | None]] = []
    for order in orders:
        if order.detail and order.obr is None:
            warn(
                warnings,
                f"ORC with a {OTHER_DETAIL[order.detail]} order ({order.detail}) is not mapped; "
                "this interface takes observation requests (OBR).",
                order.orc,
            )
            continue
        placer, filler = _order_identifiers(order, message, ctx)
        key = placer or filler
        if key is None:
            seg = order.anchor
            raise MappingError(
                f"{seg.name}-2 (placer order number) is required and empty "
                f"(nor is there a filler order number in {seg.name}-3).",
                segment=seg.name,
                position=seg.position,
                field=2,
            )
        key_text = f"{key['system']}|{key['value']}"
        if key_text in keyed:
            warn(
                warnings,
                "This OBR repeats the order number of an earlier order in the message; "
                "it is mapped as part of that order.",
                order.anchor,
                2,
            )
            first = keyed[key_text]
            first.notes += order.notes
            first.diagnoses += order.diagnoses
            first.observations += order.observations
            first.specimens += order.specimens
            continue
        keyed[key_text] = order
        mapped.append((order, key, filler if key is placer else None))
    if not mapped:
        raise MappingError(
            "The message has no observation request (OBR) this interface maps to an order.",
            segment="ORC",
            position=orders[0].anchor.position,
            code="200",
        )
    patient, encounter = "", None
    if any(m[0].obr is not None for m in mapped):
        patient, patient_entry_ = patient_reference(message, ctx, builder, warnings)
        encounter = encounter_reference(message, ctx, builder, patient_entry_, warnings)
    for order, key, filler in mapped:
        status = _status(order, warnings)
        if order.obr is None:  # status-only ORC: keep what the original order said
            builder.patch("ServiceRequest", key, [{"op": "replace", "path": "/status", "value": status}])
            continue
        _service_request(
            order,
            key,
            filler,
            status=status,
            ctx=ctx,
            builder=builder,
            patient=patient,
            encounter=encounter,
            warnings=warnings,
        )
    return Mapping(bundle=builder.bundle(), warnings=warnings)


def _service_request(
    order: _Order,
    key: dict[str, Any],
    filler: dict[str, Any] | None,
    *,
    status: str,
    ctx: MappingContext,
    builder: TransactionBuilder,
    patient: str,
    encounter: str | None,
    warnings: list[Warning_],
) -> None:
    obr = order.obr
    assert obr is not None
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [key, *([filler] if filler else [])],
        "status": status,
        "intent": "order",
        "category": _category(obr),
        "subject": {"reference": patient},
    }
    code = codeable_concept(obr.first(4), ctx)
    if code:
        body["code"] = code
    else:
        warn(warnings, "OBR-4 (universal service identifier) is empty; the order has no code.", obr, 4)
    priority = _priority(order)
    if priority:
        body["priority"] = priority
    body.update(_occurrence(order))
    authored = date_time(order.orc.get(9)) if order.orc else None
    if authored:
        body["authoredOn"] = authored
    if encounter:
        body["encounter"] = {"reference": encounter}
    requester = None
    for seg, n in ((order.orc, 12), (obr, 16)):
        if seg is not None and requester is None:
            requester = practitioner_reference(seg.first(n), ctx, builder)
    if requester:
        body["requester"] = requester
    reasons = _reasons(order, ctx)
    if reasons:
        body["reasonCode"] = reasons
    if order.notes:
        body["note"] = [{"text": text} for text in order.notes]
    full_url = ctx.full_url("ServiceRequest", str(key["system"]), str(key["value"]))
    specimens = []
    for spm in order.specimens:
        found = _specimen(spm, ctx, patient, full_url, warnings)
        if found:
            specimens.append({"reference": builder.upsert(*found)})
    if specimens:
        body["specimen"] = specimens
    answers = []
    for n, obx in enumerate(order.observations, start=1):
        observation = _observation(obx, ctx, patient, warnings)
        if observation is None:
            continue
        ident = {"system": key["system"], "value": f"{key['value']}-aoe-{n}"}
        observation["identifier"] = [ident]
        observation["basedOn"] = [{"reference": full_url}]
        answers.append({"reference": builder.upsert(observation, ident)})
    if answers:
        body["supportingInfo"] = answers
    builder.upsert(body, key)
