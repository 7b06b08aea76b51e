"""Outbound lab orders: HL7 v2.5.1 ORM^O01 (new order, cancellation) built from FHIR R4 resources.

The lab-order workflow hands over the resources as stored (plain JSON dicts) and an
``OrderEnvelope`` (who sends to whom, the control id, the clock); it gets back one ER7 message,
segments joined by CR. Which FHIR element fills which field is in ``docs/hl7v2-outbound.md``.

How it is built, and why:
- Segments are composed as text. Every value passes through ``_esc`` (single-line leaves) or
  ``_ft`` (NTE free text) before it touches a delimiter; composed text has the type ``Er7``, so
  mypy rejects a raw string placed where encoded text belongs. hl7apy's own model would not save
  that step: it reads assigned strings as ER7 and escapes nothing.
- Every built message is then checked with hl7apy against the 2.5.1 definitions before it leaves
  (``_conform``): each segment is parsed strictly (data types, lengths, dates) and validated
  (required fields, cardinality), and the whole message must place every segment in the ORM_O01
  group it was built for. hl7apy's message-level ``validate()`` cannot be used: it models the
  ``OBR|RQD|RQ1|RXO|ODS|ODT`` choice of ORDER_DETAIL as a sequence and rejects every real ORM,
  and its strict parser silently drops a segment the structure does not define. hl7apy stays
  inside this module (STYLE.md: only adapters import it).
- ORM^O01 in v2.5.1 defines neither SPM nor TQ1 (they belong to OML^O21), so a message that
  carries them does not conform to the version it declares. The specimen therefore goes where
  ORM^O01 carries it — OBR-15 (type, body site), OBR-7/OBR-8 (collection time), OBR-9 (volume) —
  and the priority goes to OBR-27 component 6 (TQ).

Errors: input the builder cannot turn into a usable order raises ``OrmBuildError`` naming the
resource and element, never a value (names, dates of birth and notes are PHI).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, NewType

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, ValidationError
from hl7apy.parser import parse_message, parse_segment
from hl7apy.validation import Validator

VERSION: Final = "2.5.1"
MESSAGE_TYPE: Final = "ORM^O01^ORM_O01"
NEW_ORDER: Final = "NW"
CANCEL_ORDER: Final = "CA"

Resource = Mapping[str, Any]
ProcessingId = Literal["P", "T", "D"]

# Text already encoded for ER7 (escaped leaves joined by delimiters). Raw text is plain ``str``.
Er7 = NewType("Er7", str)
EMPTY: Final = Er7("")

LOINC: Final = "http://loinc.org"
SNOMED: Final = "http://snomed.info/sct"
_V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
_UCUM: Final = "http://unitsofmeasure.org"
# FHIR code systems with an HL7 table 0396 name; any other system is sent as a local one.
_CODE_SYSTEM_NAMES: Final[Mapping[str, str]] = {
    LOINC: "LN",
    SNOMED: "SCT",
    "http://terminology.hl7.org/CodeSystem/v2-0487": "HL70487",
}
LOCAL_CODE_SYSTEM: Final = "L"
# Identifier systems whose HL7 assigning authority is well known: (namespace, OID, CX-5 type).
_KNOWN_AUTHORITIES: Final[Mapping[str, tuple[str, str, str]]] = {
    "http://hl7.org/fhir/sid/us-npi": ("NPI", "2.16.840.1.113883.4.6", "NPI"),
    "http://hl7.org/fhir/sid/us-ssn": ("SSA", "2.16.840.1.113883.4.1", "SS"),
}

_PRIORITY: Final[Mapping[str, str]] = {"stat": "S", "asap": "A", "urgent": "A", "routine": "R"}
_ORDER_STATUS: Final[Mapping[str, str]] = {
    "active": "IP",
    "on-hold": "HD",
    "revoked": "CA",
    "completed": "CM",
    "entered-in-error": "ER",
}
_ORDER_INTENTS: Final = frozenset(
    {"order", "original-order", "reflex-order", "filler-order", "instance-order"}
)
_SEX: Final[Mapping[str, str]] = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_NAME_TYPE: Final[Mapping[str, str]] = {
    "official": "L",
    "usual": "D",
    "nickname": "N",
    "anonymous": "S",
    "maiden": "M",
    "temp": "U",
}
_ADDRESS_TYPE: Final[Mapping[str, str]] = {"home": "H", "work": "B", "temp": "C"}
_PATIENT_CLASS: Final[Mapping[str, str]] = {
    "AMB": "O",
    "OBSENC": "O",
    "SS": "O",
    "HH": "O",
    "VR": "O",
    "FLD": "O",
    "EMER": "E",
    "IMP": "I",
    "ACUTE": "I",
    "NONAC": "I",
    "PRENC": "P",
}
_RELATIONSHIP: Final[Mapping[str, tuple[str, str]]] = {
    "self": ("SEL", "Self"),
    "spouse": ("SPO", "Spouse"),
    "child": ("CHD", "Child"),
    "parent": ("PAR", "Parent"),
    "common": ("DOM", "Life partner"),
    "other": ("OTH", "Other"),
}

_ST_MAX: Final = 199  # hl7apy's (and HL7's) ceiling for an ST value; IS is 20
_IS_MAX: Final = 20
_HD_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,19}")
_CONTROL_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,20}")
_FHIR_DATETIME: Final = re.compile(
    r"(?P<y>\d{4})(?:-(?P<mo>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_ESCAPES: Final[Mapping[str, str]] = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Where each segment this module emits sits in hl7apy's ORM_O01 (v2.5.1) structure.
_ORDER: Final = "ORM_O01_ORDER"
_DETAIL: Final = "ORM_O01_ORDER_DETAIL"
_PLACEMENT: Final[Mapping[str, tuple[str, ...]]] = {
    "MSH": (),
    "PID": ("ORM_O01_PATIENT",),
    "PV1": ("ORM_O01_PATIENT", "ORM_O01_PATIENT_VISIT"),
    "IN1": ("ORM_O01_PATIENT", "ORM_O01_INSURANCE"),
    "ORC": (_ORDER,),
    "OBR": (_ORDER, _DETAIL, "ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP"),
    "NTE": (_ORDER, _DETAIL),  # only ever the OBR's notes
}


class OrmBuildError(ValueError):
    """The inputs cannot become a usable ORM^O01. ``subject`` names what is wrong (``Patient/pat2``,
    ``OrderEnvelope``, ``ORM^O01``); ``reason`` says why without quoting any clinical value."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"{subject}: {reason}")
        self.subject = subject
        self.reason = reason


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class OrderEnvelope:
    """Who sends the order to whom, and the message's own identity (MSH).

    ``sending_facility`` is the clinic tenant (also the namespace of placer order numbers made from
    ServiceRequest ids); ``receiving_facility`` is the lab partner id. Facility and application
    ids are HL7 namespace ids: 1-20 letters, digits, space, ``.``, ``_`` or ``-``. The message
    control id (MSH-10, echoed by the lab's ACK) is 1-20 letters, digits, ``.``, ``_`` or ``-``.
    ``clock`` must return an aware datetime; MSH-7 is written in UTC. ``coding_systems`` names
    local code systems for CE-3 (FHIR system URI -> name agreed with the lab, e.g. ``99ACME``);
    other systems than LOINC and SNOMED CT are sent as ``L`` (local).
    """

    sending_facility: str
    receiving_facility: str
    message_control_id: str
    sending_application: str = "EHR"
    receiving_application: str = ""
    processing_id: ProcessingId = "P"
    clock: Callable[[], datetime] = _utc_now
    coding_systems: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("sending_facility", "receiving_facility", "sending_application"):
            if not _HD_ID.fullmatch(getattr(self, name)):
                raise OrmBuildError("OrderEnvelope", f"{name} must be an HL7 namespace id (1-20 characters)")
        if self.receiving_application and not _HD_ID.fullmatch(self.receiving_application):
            raise OrmBuildError("OrderEnvelope", "receiving_application must be an HL7 namespace id")
        if not _CONTROL_ID.fullmatch(self.message_control_id):
            raise OrmBuildError(
                "OrderEnvelope", "message_control_id must be 1-20 letters, digits, '.', '_' or '-' (MSH-10)"
            )
        if self.processing_id not in ("P", "T", "D"):
            raise OrmBuildError("OrderEnvelope", "processing_id must be P, T or D (HL7 table 0103)")


@dataclass(frozen=True, kw_only=True)
class OrderResources:
    """The FHIR resources of one lab order, as stored. The requester is a Practitioner, or a
    PractitionerRole together with its Practitioner; ``payer`` is the Coverage's Organization."""

    service_request: Resource
    patient: Resource
    practitioner: Resource | None = None
    practitioner_role: Resource | None = None
    encounter: Resource | None = None
    coverage: Resource | None = None
    payer: Resource | None = None
    specimen: Resource | None = None


@dataclass(frozen=True)
class PlacerOrderNumber:
    """ORC-2/OBR-2 (EI): the number the lab echoes back on results and acknowledgements."""

    value: str
    namespace: str = ""
    universal_id: str = ""
    universal_id_type: str = ""

    def er7(self) -> Er7:
        return _comp(
            _esc(self.value), _esc(self.namespace), _esc(self.universal_id), _esc(self.universal_id_type)
        )


# --- public API -------------------------------------------------------------------------------


def build_new_order(envelope: OrderEnvelope, order: OrderResources) -> str:
    """An ORM^O01 asking the lab to perform the ServiceRequest (ORC-1 ``NW``)."""
    sr = _checked(order)
    label = _label(sr)
    if sr.get("doNotPerform") is True:
        raise OrmBuildError(label, "doNotPerform is true; such a request is not sent to a lab")
    status = _str(sr.get("status"))
    if status != "active":
        raise OrmBuildError(
            label, f"status is {status or 'missing'!r}; only an active order is sent to the lab"
        )
    intent = _str(sr.get("intent"))
    if intent not in _ORDER_INTENTS:
        raise OrmBuildError(label, f"intent is {intent or 'missing'!r}; only an order is sent to the lab")
    return _build(envelope, order, NEW_ORDER, reason=None)


def build_cancel_order(envelope: OrderEnvelope, order: OrderResources, *, reason: str | None = None) -> str:
    """An ORM^O01 cancelling the order sent earlier (ORC-1 ``CA``, the same placer order number).

    ``reason`` (free text) goes to ORC-16. Insurance and notes are not repeated.
    """
    _checked(order)
    return _build(envelope, order, CANCEL_ORDER, reason=reason)


def placer_order_number(service_request: Resource, *, namespace: str) -> PlacerOrderNumber:
    """The placer order number of a ServiceRequest: its identifier typed ``PLAC``, else its
    ``requisition``, else its id in ``namespace`` (the clinic tenant). OID systems are kept (EI-3/4)."""
    for ident in _dicts(service_request.get("identifier")):
        if _has_code(ident.get("type"), "PLAC") and _str(ident.get("value")):
            return _entity_identifier(ident, namespace)
    requisition = service_request.get("requisition")
    if isinstance(requisition, Mapping) and _str(requisition.get("value")):
        return _entity_identifier(requisition, namespace)
    resource_id = _str(service_request.get("id"))
    if not resource_id:
        raise OrmBuildError(
            "ServiceRequest", "has no PLAC identifier, no requisition and no id to use as placer order number"
        )
    return PlacerOrderNumber(resource_id, namespace)


# --- the message ------------------------------------------------------------------------------


def _build(envelope: OrderEnvelope, order: OrderResources, control: str, *, reason: str | None) -> str:
    sr = order.service_request
    now = _now(envelope)
    placer = placer_order_number(sr, namespace=envelope.sending_facility)
    segments = [_pid(order.patient), _pv1(order.encounter)]
    if control == NEW_ORDER and order.coverage is not None:
        segments.append(_in1(order.coverage, order.payer, order.patient, envelope))
    segments.append(_orc(control, placer=placer, order=order, envelope=envelope, now=now, reason=reason))
    segments.append(_obr(placer, order, envelope))
    if control == NEW_ORDER:
        segments.extend(_ntes(sr))
    segments.insert(0, _msh(envelope, now, non_ascii=any(not s.isascii() for s in segments)))
    _conform(segments)
    return "\r".join(segments)


def _msh(envelope: OrderEnvelope, now: Er7, *, non_ascii: bool) -> str:
    fields = {
        3: _esc(envelope.sending_application),
        4: _esc(envelope.sending_facility),
        5: _esc(envelope.receiving_application),
        6: _esc(envelope.receiving_facility),
        7: now,
        9: Er7(MESSAGE_TYPE),
        10: _esc(envelope.message_control_id),
        11: _esc(envelope.processing_id),
        12: Er7(VERSION),
        # Without MSH-18 a receiver assumes ASCII; FHIR text is Unicode, sent as UTF-8.
        18: Er7("UNICODE UTF-8") if non_ascii else EMPTY,
    }
    last = max(n for n, v in fields.items() if v)
    # MSH-1 is the field separator itself and MSH-2 the encoding characters: written as they are.
    return "MSH|^~\\&|" + "|".join(fields.get(n, EMPTY) for n in range(3, last + 1))


def _pid(patient: Resource) -> str:
    label = _label(patient)
    identifiers = [
        i for i in _dicts(patient.get("identifier")) if _str(i.get("value")) and i.get("use") != "old"
    ]
    # The medical record number first: labs match results on the first PID-3 repetition.
    identifiers.sort(key=lambda i: 0 if _identifier_type(i) == "MR" else 1)
    if not identifiers:
        raise OrmBuildError(
            label, "has no identifier with a value; PID-3 needs one for the lab to match results"
        )
    names = _names(patient)
    if not names:
        raise OrmBuildError(label, "has no name with a family or given part (PID-5 is required)")
    telecom = _ranked(patient.get("telecom"))
    return _segment(
        "PID",
        {
            1: Er7("1"),
            3: _reps(_cx(i) for i in identifiers),
            5: _reps(_xpn(n) for n in names),
            7: _date(patient.get("birthDate"), label, "birthDate"),
            8: _esc(_SEX.get(_str(patient.get("gender")), "")),
            11: _reps(_xad(a) for a in _dicts(patient.get("address")) if a.get("use") != "old"),
            13: _reps(_xtn(t) for t in telecom if t.get("use") != "work"),
            14: _reps(_xtn(t) for t in telecom if t.get("use") == "work"),
        },
    )


def _pv1(encounter: Resource | None) -> str:
    patient_class = "O"
    if encounter is not None:
        coding = encounter.get("class")
        if isinstance(coding, list):  # R5 shape (a list of CodeableConcept); R4 stores one Coding
            first = next(iter(_dicts(coding)), {})
            coding = next(iter(_dicts(first.get("coding"))), first)
        code = _str(coding.get("code")) if isinstance(coding, Mapping) else ""
        patient_class = _PATIENT_CLASS.get(code, "U")
    return _segment("PV1", {1: Er7("1"), 2: _esc(patient_class)})


def _in1(coverage: Resource, payer: Resource | None, patient: Resource, envelope: OrderEnvelope) -> str:
    label = _label(coverage)
    status = _str(coverage.get("status"))
    if status in ("cancelled", "entered-in-error"):
        raise OrmBuildError(label, f"status is {status!r}; an order is not billed to it")
    classes = {_code_of(c.get("type")): c for c in _dicts(coverage.get("class"))}
    plan = classes.get("plan")
    if plan is not None and _str(plan.get("value")):
        plan_id = _comp(_esc(_str(plan.get("value"))), _esc(_str(plan.get("name")), limit=_ST_MAX))
    else:
        plan_id = _ce(coverage.get("type"), envelope)
    if not plan_id:
        raise OrmBuildError(label, "has neither a class 'plan' nor a type to fill IN1-2 (insurance plan id)")
    payors = _dicts(coverage.get("payor"))
    company: Er7 = EMPTY
    if payer is not None:
        company = next((_cx(i) for i in _dicts(payer.get("identifier")) if _str(i.get("value"))), EMPTY)
    if not company:
        logical = next((_obj(p.get("identifier")) for p in payors if _obj(p.get("identifier"))), _obj(None))
        company = _cx(logical) if _str(logical.get("value")) else EMPTY
    if not company:
        raise OrmBuildError(label, "the payer has no identifier to fill IN1-3 (insurance company id)")
    company_name = _str(payer.get("name")) if payer is not None else ""
    company_name = company_name or next((_str(p.get("display")) for p in payors if p.get("display")), "")
    group = classes.get("group") or {}
    period = _obj(coverage.get("period"))
    relationship = _code_of(coverage.get("relationship"))
    subscriber = _obj(coverage.get("subscriber"))
    patient_is_insured = relationship == "self" or _ref_id(subscriber, "Patient") == _str(patient.get("id"))
    insured_name = next((_xpn(n) for n in _names(patient)), EMPTY)
    code, display = _RELATIONSHIP.get(relationship, ("", ""))
    fields = {
        1: Er7("1"),
        2: plan_id,
        3: company,
        4: _esc(company_name, limit=_ST_MAX),
        5: _reps(_xad(a) for a in _dicts(payer.get("address"))) if payer is not None else EMPTY,
        8: _esc(_str(group.get("value"))),
        9: _esc(_str(group.get("name")), limit=_ST_MAX),
        12: _date(_date_part(period.get("start")), label, "period.start"),
        13: _date(_date_part(period.get("end")), label, "period.end"),
        17: _comp(_esc(code), _esc(display), Er7("HL70063")) if code else EMPTY,
        36: _esc(_str(coverage.get("subscriberId")) or _first_value(coverage.get("identifier"))),
    }
    if patient_is_insured:
        fields[16] = insured_name
        fields[18] = _date(patient.get("birthDate"), _label(patient), "birthDate")
        fields[19] = next((_xad(a) for a in _dicts(patient.get("address")) if a.get("use") != "old"), EMPTY)
    return _segment("IN1", fields)


def _orc(
    control: str,
    *,
    placer: PlacerOrderNumber,
    order: OrderResources,
    envelope: OrderEnvelope,
    now: Er7,
    reason: str | None,
) -> str:
    sr = order.service_request
    requisition = sr.get("requisition")
    group = (
        _entity_identifier(requisition, envelope.sending_facility).er7()
        if isinstance(requisition, Mapping) and _str(requisition.get("value"))
        else EMPTY
    )
    # The order entered the clinic's system when it was authored; a cancellation happens now.
    transaction = _dtm(sr.get("authoredOn"), _label(sr), "authoredOn") if control == NEW_ORDER else now
    callback = [
        t for t in _ranked((order.practitioner_role or {}).get("telecom")) if t.get("system") == "phone"
    ]
    callback = callback or [
        t for t in _ranked((order.practitioner or {}).get("telecom")) if t.get("system") == "phone"
    ]
    return _segment(
        "ORC",
        {
            1: Er7(control),
            2: placer.er7(),
            4: group,
            5: _esc(_ORDER_STATUS.get(_str(sr.get("status")), "")),
            9: transaction or now,
            12: _xcn(order.practitioner),
            14: _reps(_xtn(t) for t in callback[:1]),
            16: _comp(EMPTY, _esc(reason, limit=_ST_MAX)) if control == CANCEL_ORDER and reason else EMPTY,
        },
    )


def _obr(placer: PlacerOrderNumber, order: OrderResources, envelope: OrderEnvelope) -> str:
    sr = order.service_request
    label = _label(sr)
    service = _service_code(sr, envelope)
    requested = sr.get("occurrenceDateTime")
    if not requested and isinstance(sr.get("occurrencePeriod"), Mapping):
        requested = sr["occurrencePeriod"].get("start")
    observed = _dtm(requested or sr.get("authoredOn"), label, "occurrence/authoredOn")
    fields: dict[int, Er7] = {
        1: Er7("1"),
        2: placer.er7(),
        4: service,
        7: observed,
        16: _xcn(order.practitioner),
        27: _at({6: Er7(_PRIORITY.get(_str(sr.get("priority")), "R"))}),  # TQ-6 priority
    }
    if order.specimen is not None:
        fields.update(_specimen_fields(order.specimen, envelope))
    return _segment("OBR", fields)


def _specimen_fields(specimen: Resource, envelope: OrderEnvelope) -> dict[int, Er7]:
    """ORM^O01 (2.5.1) has no SPM: collection time → OBR-7/8 (for a collected specimen HL7 makes
    OBR-7 the collection time), volume → OBR-9, type and body site → OBR-15 (SPS)."""
    label = _label(specimen)
    collection = _obj(specimen.get("collection"))
    out: dict[int, Er7] = {}
    period = _obj(collection.get("collectedPeriod"))
    start = collection.get("collectedDateTime") or period.get("start")
    if start:
        out[7] = _dtm(start, label, "collection.collected")
    if period.get("end"):
        out[8] = _dtm(period.get("end"), label, "collection.collectedPeriod.end")
    quantity = collection.get("quantity")
    if isinstance(quantity, Mapping) and quantity.get("value") is not None:
        out[9] = _cq(quantity, label)
    source = _comp(
        _cwe_sub(specimen.get("type"), envelope), EMPTY, EMPTY, _cwe_sub(collection.get("bodySite"), envelope)
    )
    if source:
        out[15] = source
    return out


def _ntes(sr: Resource) -> list[str]:
    texts = [_str(n.get("text")) for n in _dicts(sr.get("note"))]
    return [
        _segment("NTE", {1: Er7(str(n)), 2: Er7("P"), 3: _ft(text)})
        for n, text in enumerate((t for t in texts if t.strip()), start=1)
    ]


# --- HL7 data types from FHIR data types ------------------------------------------------------


def _service_code(sr: Resource, envelope: OrderEnvelope) -> Er7:
    """OBR-4 (CE): the LOINC coding first, another coding as the alternate triplet."""
    code = _obj(sr.get("code"))
    codings = [c for c in _dicts(code.get("coding")) if _str(c.get("code"))]
    if not codings:
        raise OrmBuildError(
            _label(sr),
            "code has no coding with a code (LOINC or the lab's own); the lab cannot tell the test",
        )
    primary = next((c for c in codings if c.get("system") == LOINC), codings[0])
    alternate = next((c for c in codings if c is not primary), None)
    text = _str(code.get("text"))
    parts = [*_triplet(primary, envelope, fallback_text=text)]
    if alternate is not None:
        parts.extend(_triplet(alternate, envelope, fallback_text=""))
    return _comp(*parts)


def _triplet(
    coding: Mapping[str, Any], envelope: OrderEnvelope, *, fallback_text: str
) -> tuple[Er7, Er7, Er7]:
    system = _str(coding.get("system"))
    name = _CODE_SYSTEM_NAMES.get(system) or envelope.coding_systems.get(system) or LOCAL_CODE_SYSTEM
    display = _str(coding.get("display")) or fallback_text
    return _esc(_str(coding.get("code"))), _esc(display, limit=_ST_MAX), _esc(name)


def _ce(concept: Any, envelope: OrderEnvelope) -> Er7:
    """A CodeableConcept as CE components: its first coding, else its text alone."""
    if not isinstance(concept, Mapping):
        return EMPTY
    text = _str(concept.get("text"))
    coding = next((c for c in _dicts(concept.get("coding")) if _str(c.get("code"))), None)
    if coding is None:
        return _comp(EMPTY, _esc(text, limit=_ST_MAX))
    return _comp(*_triplet(coding, envelope, fallback_text=text))


def _cwe_sub(concept: Any, envelope: OrderEnvelope) -> Er7:
    """A CodeableConcept as the subcomponents of one component (CWE inside SPS)."""
    if not isinstance(concept, Mapping):
        return EMPTY
    text = _str(concept.get("text"))
    coding = next((c for c in _dicts(concept.get("coding")) if _str(c.get("code"))), None)
    if coding is None:
        return _sub(EMPTY, _esc(text, limit=_ST_MAX))
    return _sub(*_triplet(coding, envelope, fallback_text=text))


def _cx(identifier: Mapping[str, Any]) -> Er7:
    """Identifier → CX: value, assigning authority (CX-4, an HD as subcomponents), type (CX-5)."""
    value = _esc(_str(identifier.get("value")))
    return _at({1: value, 4: _authority(identifier), 5: _esc(_identifier_type(identifier))})


def _authority(identifier: Mapping[str, Any]) -> Er7:
    """HD from an identifier's system: ``urn:oid:`` → the OID typed ISO; another URI is kept
    typed URI (``urn:uuid:`` → UUID); the assigner's display is the namespace when it fits (IS, 20)."""
    system = _str(identifier.get("system"))
    assigner = _obj(identifier.get("assigner"))
    namespace = _str(assigner.get("display")).strip()
    namespace = namespace if len(namespace) <= _IS_MAX else ""
    if system in _KNOWN_AUTHORITIES:
        known_namespace, oid, _ = _KNOWN_AUTHORITIES[system]
        return _sub(_esc(namespace or known_namespace), _esc(oid), Er7("ISO"))
    if system.startswith("urn:oid:"):
        return _sub(_esc(namespace), _esc(system.removeprefix("urn:oid:")), Er7("ISO"))
    if system.startswith("urn:uuid:"):
        return _sub(_esc(namespace), _esc(system.removeprefix("urn:uuid:")), Er7("UUID"))
    if system:
        return _sub(_esc(namespace), _esc(system), Er7("URI"))
    return _esc(namespace)


def _identifier_type(identifier: Mapping[str, Any]) -> str:
    concept = _obj(identifier.get("type"))
    for coding in _dicts(concept.get("coding")):
        if coding.get("system") == _V2_0203 and _str(coding.get("code")):
            return _str(coding.get("code"))
    known = _KNOWN_AUTHORITIES.get(_str(identifier.get("system")))
    return known[2] if known else ""


def _entity_identifier(identifier: Mapping[str, Any], namespace: str) -> PlacerOrderNumber:
    """An order identifier as EI: namespace is the placer (the tenant); an OID system is kept."""
    system = _str(identifier.get("system"))
    oid = system.removeprefix("urn:oid:") if system.startswith("urn:oid:") else ""
    return PlacerOrderNumber(_str(identifier.get("value")), namespace, oid, "ISO" if oid else "")


def _xpn(name: Mapping[str, Any]) -> Er7:
    """HumanName → XPN: family, first given, further given names, suffix, prefix, name type."""
    given = [_str(g) for g in name.get("given") or [] if _str(g)]
    return _at(
        {
            1: _esc(_str(name.get("family"))),
            2: _esc(given[0] if given else ""),
            3: _esc(" ".join(given[1:])),
            4: _esc(" ".join(_str(s) for s in name.get("suffix") or [])),
            5: _esc(" ".join(_str(p) for p in name.get("prefix") or [])),
            7: _esc(_NAME_TYPE.get(_str(name.get("use")), "")),
        }
    )


def _names(resource: Resource) -> list[Mapping[str, Any]]:
    """Usable names (a family or given part, not marked old), the official one first."""
    names = [
        n
        for n in _dicts(resource.get("name"))
        if n.get("use") != "old" and (n.get("family") or n.get("given"))
    ]
    return sorted(names, key=lambda n: 0 if n.get("use") == "official" else 1)


def _xcn(practitioner: Resource | None) -> Er7:
    """Practitioner → XCN: id (NPI first, then official, usual), name, assigning authority, id type."""
    if practitioner is None:
        return EMPTY
    identifiers = [
        i for i in _dicts(practitioner.get("identifier")) if _str(i.get("value")) and i.get("use") != "old"
    ]
    rank = {"official": 1, "usual": 2}
    identifiers.sort(
        key=lambda i: 0 if i.get("system") in _KNOWN_AUTHORITIES else rank.get(_str(i.get("use")), 3)
    )
    names = _names(practitioner)
    # XCN-2..7 are XPN-1..6 shifted by one (XCN-1 is the id).
    name = _xpn(names[0]).split("^")[:6] if names else []
    parts = {n: Er7(v) for n, v in enumerate(name, start=2)}
    if identifiers:
        ident = identifiers[0]
        parts |= {
            1: _esc(_str(ident.get("value"))),
            9: _authority(ident),
            13: _esc(_identifier_type(ident)),
        }
    return _at(parts)


def _xad(address: Mapping[str, Any]) -> Er7:
    """Address → XAD: street, other lines, city, state, postal code, country, type, district."""
    lines = [_str(line) for line in address.get("line") or [] if _str(line)]
    district = _str(address.get("district"))
    return _at(
        {
            1: _esc(lines[0] if lines else "", limit=_ST_MAX),
            2: _esc(", ".join(lines[1:]), limit=_ST_MAX),
            3: _esc(_str(address.get("city"))),
            4: _esc(_str(address.get("state"))),
            5: _esc(_str(address.get("postalCode"))),
            6: _esc(_str(address.get("country"))),
            7: _esc(_ADDRESS_TYPE.get(_str(address.get("use")), "")),
            9: _esc(district if len(district) <= _IS_MAX else ""),  # county/parish (IS)
        }
    )


def _xtn(contact: Mapping[str, Any]) -> Er7:
    """ContactPoint → XTN: use (XTN-2), equipment (XTN-3), e-mail (XTN-4); a phone number goes
    unformatted to XTN-12, and a North American one also to XTN-5/6/7."""
    system, value, use = _str(contact.get("system")), _str(contact.get("value")), _str(contact.get("use"))
    if not value:
        return EMPTY
    if system == "email":
        return _at({2: Er7("NET"), 3: Er7("Internet"), 4: _esc(value)})
    if system not in ("phone", "fax", "pager", "sms"):
        return EMPTY
    use_code = "WPN" if use == "work" else "ORN" if use == "temp" else "PRN"
    equipment = {"fax": "FX", "pager": "BP"}.get(system, "CP" if use == "mobile" or system == "sms" else "PH")
    country = area = local = ""
    digits = re.sub(r"\D", "", value)
    if re.fullmatch(r"[\d\s().+-]+", value) and len(digits) in (10, 11):
        national = digits[1:] if len(digits) == 11 and digits[0] == "1" else digits
        if len(national) == 10 and national[0] in "23456789" and national[3] in "23456789":
            country, area, local = "1", national[:3], national[3:]
    return _at(
        {
            2: _esc(use_code),
            3: _esc(equipment),
            5: _esc(country),
            6: _esc(area),
            7: _esc(local),
            12: _esc(value),
        }
    )


def _cq(quantity: Mapping[str, Any], label: str) -> Er7:
    try:
        number = format(Decimal(str(quantity.get("value"))), "f")
    except InvalidOperation as exc:
        raise OrmBuildError(label, "collection.quantity.value is not a number") from exc
    unit, code = _str(quantity.get("unit")), _str(quantity.get("code"))
    system = "UCUM" if quantity.get("system") == _UCUM else ""
    return _comp(_esc(number), _sub(_esc(code or unit), _esc(unit), _esc(system)))


def _now(envelope: OrderEnvelope) -> Er7:
    moment = envelope.clock()
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise OrmBuildError("OrderEnvelope", "clock returned a naive datetime; it must carry a time zone")
    return Er7(moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000")


def _dtm(value: Any, label: str, element: str) -> Er7:
    """FHIR date/dateTime/instant → DTM, keeping its precision and offset (``Z`` → ``+0000``);
    fractions of a second are cut to the four digits DTM allows."""
    text = _str(value).strip()
    if not text:
        return EMPTY
    m = _FHIR_DATETIME.fullmatch(text)
    if not m:
        raise OrmBuildError(label, f"{element} is not a FHIR date or dateTime")
    out = "".join(m.group(k) or "" for k in ("y", "mo", "d", "h", "mi", "s"))
    if m.group("f") and m.group("s"):
        out += "." + m.group("f")[:4]
    tz = m.group("tz")
    if tz and m.group("h"):
        out += "+0000" if tz == "Z" else tz.replace(":", "")
    return Er7(out)


def _date(value: Any, label: str, element: str) -> Er7:
    """FHIR date → DT (``YYYY[MM[DD]]``)."""
    text = _str(value).strip()
    if text and not re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", text):
        raise OrmBuildError(label, f"{element} is not a FHIR date")
    return Er7(text.replace("-", ""))


def _date_part(value: Any) -> str:
    return _str(value)[:10]


# --- ER7 text -----------------------------------------------------------------------------------


def _esc(value: str | None, *, limit: int | None = None) -> Er7:
    """One leaf value made safe: ``\\ | ^ & ~`` become ``\\E\\ \\F\\ \\S\\ \\T\\ \\R\\``; line breaks
    and tabs become spaces and other control characters are dropped (a CR would end the segment).
    ``limit`` cuts descriptive text to the escaped length the data type allows."""
    if not value:
        return EMPTY
    flat = _CONTROL_CHARS.sub("", _LINE_BREAK.sub(" ", value).replace("\t", " ")).strip()
    out: list[str] = []
    length = 0
    for char in flat:
        piece = _ESCAPES.get(char, char)
        if limit is not None and length + len(piece) > limit:
            break
        out.append(piece)
        length += len(piece)
    return Er7("".join(out))


def _ft(value: str) -> Er7:
    """Formatted text (NTE-3): as ``_esc``, but a line break is kept as HL7's ``\\.br\\``."""
    lines = _LINE_BREAK.split(value.strip())
    return Er7("\\.br\\".join(_esc(line) if line.strip() else "" for line in lines))


def _sub(*parts: Er7) -> Er7:
    return Er7("&".join(parts).rstrip("&"))


def _comp(*parts: Er7) -> Er7:
    return Er7("^".join(parts).rstrip("^"))


def _at(parts: Mapping[int, Er7]) -> Er7:
    """Components by their HL7 position (``{1: id, 4: authority}``), the gaps left empty."""
    last = max((n for n, v in parts.items() if v), default=0)
    return _comp(*(parts.get(n, EMPTY) for n in range(1, last + 1)))


def _reps(items: Iterable[Er7]) -> Er7:
    return Er7("~".join(i for i in items if i))


def _segment(name: str, fields: Mapping[int, Er7]) -> str:
    last = max((n for n, v in fields.items() if v), default=0)
    return "|".join([name, *(fields.get(n, EMPTY) for n in range(1, last + 1))])


# --- conformance (hl7apy) -----------------------------------------------------------------------


def _conform(segments: list[str]) -> None:
    """Check the message against HL7 v2.5.1 with hl7apy before it leaves (see the module docstring).
    Failures name the segment and rule, never the offending value."""
    for position, text in enumerate(segments, start=1):
        name = text[:3]
        try:
            Validator.validate(parse_segment(text, version=VERSION, validation_level=VALIDATION_LEVEL.STRICT))
        except ValidationError as exc:  # names elements only ("Missing required child IN1.IN1_2")
            raise OrmBuildError(
                "ORM^O01", f"{name} (segment {position}) breaks HL7 v{VERSION}: {exc}"
            ) from exc
        except (HL7apyException, ValueError) as exc:  # these quote the value: not repeated
            raise OrmBuildError(
                "ORM^O01",
                f"{name} (segment {position}) has a value HL7 v{VERSION} does not allow "
                f"({type(exc).__name__}: too long for its data type, or not a valid date or number)",
            ) from exc
    try:
        message = parse_message(
            "\r".join(segments), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
        )
    except (HL7apyException, ValueError) as exc:
        raise OrmBuildError("ORM^O01", f"does not parse as HL7 v{VERSION} ({type(exc).__name__})") from exc
    placed = list(_placement(message))
    expected = [(_PLACEMENT[text[:3]], text[:3]) for text in segments]
    if placed != expected:
        raise OrmBuildError("ORM^O01", f"segments do not fit the ORM_O01 structure of HL7 v{VERSION}")


def _placement(element: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    for child in element.children:
        if child.classname == "Group":
            yield from _placement(child, (*path, child.name))
        elif child.classname == "Segment":
            yield path, child.name


# --- reading FHIR JSON --------------------------------------------------------------------------


def _checked(order: OrderResources) -> Resource:
    """Each resource is of the expected type and they describe one order for one patient."""
    sr = order.service_request
    _expect(sr, "ServiceRequest", "service_request")
    _expect(order.patient, "Patient", "patient")
    for resource, rtype, role in (
        (order.practitioner, "Practitioner", "practitioner"),
        (order.practitioner_role, "PractitionerRole", "practitioner_role"),
        (order.encounter, "Encounter", "encounter"),
        (order.coverage, "Coverage", "coverage"),
        (order.payer, "Organization", "payer"),
        (order.specimen, "Specimen", "specimen"),
    ):
        if resource is not None:
            _expect(resource, rtype, role)
    label = _label(sr)
    _same(sr.get("subject"), order.patient, label, "subject")
    _same(sr.get("encounter"), order.encounter, label, "encounter")
    requester = _obj(sr.get("requester"))
    requester_type = _ref_type(requester)
    if requester_type == "PractitionerRole":
        _same(requester, order.practitioner_role, label, "requester")
    elif requester_type == "Practitioner":
        _same(requester, order.practitioner, label, "requester")
    elif requester_type and (order.practitioner or order.practitioner_role):
        raise OrmBuildError(label, f"requester is a {requester_type}, not the practitioner given")
    if order.practitioner_role is not None:
        if order.practitioner is None:
            raise OrmBuildError(_label(order.practitioner_role), "was given without its Practitioner")
        _same(
            order.practitioner_role.get("practitioner"),
            order.practitioner,
            _label(order.practitioner_role),
            "practitioner",
        )
    if order.encounter is not None:
        _same(order.encounter.get("subject"), order.patient, _label(order.encounter), "subject")
    if order.coverage is not None:
        coverage_label = _label(order.coverage)
        _same(order.coverage.get("beneficiary"), order.patient, coverage_label, "beneficiary")
        if order.payer is not None:
            payors = [p for p in _dicts(order.coverage.get("payor")) if _ref_type(p) == "Organization"]
            if payors and not any(_ref_id(p, "Organization") == _str(order.payer.get("id")) for p in payors):
                raise OrmBuildError(coverage_label, f"payor does not include {_label(order.payer)}")
    elif order.payer is not None:
        raise OrmBuildError(_label(order.payer), "a payer was given without a Coverage")
    if order.specimen is not None:
        specimen_label = _label(order.specimen)
        _same(order.specimen.get("subject"), order.patient, specimen_label, "subject")
        requests = [r for r in _dicts(order.specimen.get("request")) if _ref_type(r) == "ServiceRequest"]
        if requests and not any(_ref_id(r, "ServiceRequest") == _str(sr.get("id")) for r in requests):
            raise OrmBuildError(specimen_label, f"was collected for another request, not {label}")
    return sr


def _expect(resource: Resource, rtype: str, role: str) -> None:
    if not isinstance(resource, Mapping) or resource.get("resourceType") != rtype:
        raise OrmBuildError(rtype, f"{role} must be a {rtype} resource (JSON object)")


def _same(reference: Any, resource: Resource | None, label: str, element: str) -> None:
    """A literal reference (``Type/id``, relative or absolute) must point at the resource given."""
    if resource is None or not isinstance(reference, Mapping):
        return
    rtype = _str(resource.get("resourceType"))
    ref_type = _ref_type(reference)
    if not ref_type:
        return  # a logical, urn: or contained reference: nothing to compare
    if ref_type != rtype or _ref_id(reference, rtype) != _str(resource.get("id")):
        raise OrmBuildError(
            label, f"{element} refers to {ref_type}/{_ref_id(reference, ref_type)}, not {_label(resource)}"
        )


def _ref_parts(reference: Mapping[str, Any]) -> tuple[str, str]:
    ref = _str(reference.get("reference"))
    if not ref or ref.startswith(("#", "urn:")):
        return "", ""
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-2][:1].isupper():
        return "", ""
    return parts[-2], parts[-1]


def _ref_type(reference: Any) -> str:
    return _ref_parts(reference)[0] if isinstance(reference, Mapping) else ""


def _ref_id(reference: Any, rtype: str) -> str:
    if not isinstance(reference, Mapping):
        return ""
    ref_type, ref_id = _ref_parts(reference)
    return ref_id if ref_type == rtype else ""


def _label(resource: Resource) -> str:
    return f"{_str(resource.get('resourceType')) or 'Resource'}/{_str(resource.get('id')) or '(no id)'}"


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _has_code(concept: Any, code: str) -> bool:
    return isinstance(concept, Mapping) and any(c.get("code") == code for c in _dicts(concept.get("coding")))


def _code_of(concept: Any) -> str:
    if not isinstance(concept, Mapping):
        return ""
    return next((_str(c.get("code")) for c in _dicts(concept.get("coding")) if _str(c.get("code"))), "")


def _first_value(identifiers: Any) -> str:
    return next((_str(i.get("value")) for i in _dicts(identifiers) if _str(i.get("value"))), "")


def _ranked(telecom: Any) -> list[Mapping[str, Any]]:
    """ContactPoints in rank order (rank 1 first, unranked last), without the ones marked old."""
    points = [t for t in _dicts(telecom) if t.get("use") != "old" and _str(t.get("value"))]
    return sorted(points, key=lambda t: t["rank"] if isinstance(t.get("rank"), int) else 1 << 31)
