"""ADT (admit/discharge/transfer) → Patient, Encounter, Location, Practitioner; A40 merges.

- A01 admit, A03 discharge, A04 register, A08 update: the PID becomes a Patient and the PV1 an
  Encounter (with its Location and Practitioners). A31 (update person information) carries only
  demographics: its PV1, if any, is ignored.
- A40 merge: each PID (the surviving patient) with its MRG (the prior, merged identifiers).

Every resource is upserted on a business identifier (conditional ``PUT Type?identifier=...``), so a
replay writes new versions, never duplicates. ``patient_entry`` is public: every mapper whose
message carries a PID builds its Patient with it. See docs/hl7v2-mapping-adt.md for the field
tables and the decisions (explicit nulls, keys, statuses, merges).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Final

from ehr.hl7v2.er7 import Message, Repetition, Segment
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, Warning_
from ehr.hl7v2.mapping import datatypes as dt

V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
NULL_FLAVOR: Final = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
MARITAL: Final = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
BCP47: Final = "urn:ietf:bcp:47"
US_SSN: Final = "http://hl7.org/fhir/sid/us-ssn"
BIRTH_TIME: Final = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
PHYSICAL_TYPE: Final = "http://terminology.hl7.org/CodeSystem/location-physical-type"

# PV1-2 patient class (HL7 table 0004) → Encounter.class (v3 ActCode).
PATIENT_CLASS: Final[dict[str, tuple[str, str]]] = {
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),  # recurring patient: a series of outpatient visits
    "B": ("IMP", "inpatient encounter"),  # obstetrics: admitted
    "C": ("AMB", "ambulatory"),  # commercial account
}

# PID-16 marital status (HL7 table 0002) → v3 MaritalStatus.
MARITAL_STATUS: Final[dict[str, tuple[str, str]]] = {
    "A": ("L", "Legally Separated"),  # v2 A = separated
    "E": ("L", "Legally Separated"),
    "D": ("D", "Divorced"),
    "M": ("M", "Married"),
    "S": ("S", "Never Married"),
    "W": ("W", "Widowed"),
    "C": ("C", "Common Law"),
    "G": ("T", "Domestic partner"),  # living together
    "P": ("T", "Domestic partner"),
    "R": ("T", "Domestic partner"),  # registered domestic partner
    "N": ("A", "Annulled"),
    "I": ("I", "Interlocutory"),
    "B": ("U", "unmarried"),
}

# ISO 639-2 (three-letter, HL7 table 0296) → BCP 47 primary language subtag, for common languages.
LANGUAGES: Final[dict[str, str]] = {
    "ENG": "en", "SPA": "es", "FRA": "fr", "FRE": "fr", "DEU": "de", "GER": "de", "ITA": "it",
    "POR": "pt", "ARA": "ar", "ZHO": "zh", "CHI": "zh", "JPN": "ja", "KOR": "ko", "VIE": "vi",
    "RUS": "ru", "POL": "pl", "HIN": "hi", "TGL": "tl", "NLD": "nl", "DUT": "nl", "ELL": "el",
    "GRE": "el", "HEB": "he", "TUR": "tr", "PER": "fa", "FAS": "fa", "URD": "ur", "BEN": "bn",
    "PAN": "pa", "SOM": "so", "HAT": "ht", "UKR": "uk", "SWE": "sv", "NOR": "no", "DAN": "da",
    "FIN": "fi", "HUN": "hu", "CES": "cs", "CZE": "cs", "RON": "ro", "RUM": "ro", "THA": "th",
    "KHM": "km", "LAO": "lo", "HMN": "hmn", "AMH": "am", "SWA": "sw", "ASL": "ase",
}  # fmt: skip

# Encounter participants: PV1 field → (v3 ParticipationType code, display).
PARTICIPANTS: Final[tuple[tuple[int, str, str], ...]] = (
    (7, "ATND", "attender"),
    (8, "REF", "referrer"),
    (9, "CON", "consultant"),
    (17, "ADM", "admitter"),
    (52, "PART", "Participation"),  # other healthcare provider (v2.5+)
)


def bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


# -- Patient ----------------------------------------------------------------------------------


def cx_identifier(rep: Repetition, ctx: MappingContext, *, fallback: str = "") -> dict[str, Any] | None:
    """A CX as an Identifier. Without an assigning authority (CX-4), the assigning facility (CX-6)
    or else ``fallback`` (the sending facility) scopes the value, so two senders' bare numbers
    never share a system."""
    out = dt.identifier(rep, ctx)
    if out is None:
        return None
    if not (rep.get(4, 1) or rep.get(4, 2)):
        facility = rep.get(6, 1) or rep.get(6, 2)
        if facility or fallback:
            out["system"] = dt.authority_system(rep, 6, ctx) if facility else ctx.identifier_system(fallback)
    return out


def _sender(ctx: MappingContext) -> str:
    return ctx.sending_facility or ctx.sending_application


def patient_identifiers(pid: Segment, ctx: MappingContext) -> list[dict[str, Any]]:
    """PID-3 (and the older PID-2/PID-4, PID-19 SSN) as Identifiers, PID-3 first, no duplicates."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()

    def add(ident: dict[str, Any] | None) -> None:
        if ident and (ident["system"], ident["value"]) not in seen:
            seen.add((ident["system"], ident["value"]))
            out.append(ident)

    for number in (3, 2, 4):
        for rep in pid.repetitions(number):
            add(cx_identifier(rep, ctx, fallback=_sender(ctx)))
    ssn = pid.get(19).strip()
    if ssn:
        add({"system": US_SSN, "value": ssn, "type": {"coding": [{"system": V2_0203, "code": "SS"}]}})
    return out


def key_identifier(pid: Segment, ctx: MappingContext) -> dict[str, Any]:
    """The identifier the Patient is upserted on: PID-3's MR identifier, else PID-3's first.

    Raises MappingError (101 at PID-3) when PID-3 holds no identifier.
    """
    candidates = [
        (rep, ident)
        for rep in pid.repetitions(3)
        if (ident := cx_identifier(rep, ctx, fallback=_sender(ctx))) is not None
    ]
    if not candidates:
        raise MappingError(
            "PID-3 (patient identifier list) is required and holds no identifier.",
            segment="PID",
            position=pid.position,
            field=3,
            code="101",
        )
    for rep, ident in candidates:
        if rep.get(5).strip().upper() == "MR":
            return ident
    return candidates[0][1]


def patient_url(ident: dict[str, Any]) -> str:
    return dt.conditional_url("Patient", ident["system"], ident["value"])


def patient_resource(pid: Segment, ctx: MappingContext, warnings: list[Warning_]) -> dict[str, Any]:
    """The Patient a PID describes (no id: the upsert finds or creates it)."""
    body: dict[str, Any] = {"resourceType": "Patient", "identifier": patient_identifiers(pid, ctx)}
    names = [n for rep in pid.repetitions(5) if (n := dt.human_name(rep))]
    names += [n for rep in pid.repetitions(9) if (n := dt.human_name(rep))]  # aliases
    if names:
        body["name"] = names
    sex = pid.get(8).strip()
    if sex:
        gender = dt.gender(sex)
        if gender:
            body["gender"] = gender
        else:
            warnings.append(_warn(pid, 8, "PID-8 (administrative sex) is not a table 0001 code; left out."))
    birth = pid.get(7).strip()
    if birth:
        value = dt.date_time(birth)
        if value is None:
            warnings.append(_warn(pid, 7, "PID-7 (date of birth) is not a valid date; left out."))
        else:
            body["birthDate"] = value[:10]
            if "T" in value:
                body["_birthDate"] = {"extension": [{"url": BIRTH_TIME, "valueDateTime": value}]}
    addresses = [a for rep in pid.repetitions(11) if (a := dt.address(rep))]
    if addresses:
        body["address"] = addresses
    telecom = _telecom(pid.repetitions(13), "home") + _telecom(pid.repetitions(14), "work")
    telecom += [t for t in _telecom(pid.repetitions(40), "home") if t not in telecom]  # v2.7+
    if telecom:
        body["telecom"] = telecom
    marital = _marital_status(pid.first(16), ctx)
    if marital:
        body["maritalStatus"] = marital
    language = _language(pid.first(15), ctx)
    if language:
        body["communication"] = [{"language": language, "preferred": True}]
    multiple = pid.get(24).strip().upper()
    order = pid.get(25).strip()
    if order.isascii() and order.isdigit() and int(order) > 0:
        body["multipleBirthInteger"] = int(order)
    elif multiple in ("Y", "N"):
        body["multipleBirthBoolean"] = multiple == "Y"
    _deceased(pid, body, warnings)
    return body


def patient_entry(
    message: Message,
    ctx: MappingContext,
    warnings: list[Warning_] | None = None,
    *,
    pid: Segment | None = None,
) -> dict[str, Any]:
    """The Bundle entry upserting the message's Patient (its first PID, or ``pid``): a conditional
    ``PUT Patient?identifier=<system>|<value>`` on the MR identifier of PID-3 (else its first).

    Other entries reference it by ``entry["fullUrl"]`` (a ``urn:uuid:`` stable for a replay).
    Raises MappingError when there is no PID (100) or PID-3 is empty (101). Tolerated problems
    are appended to ``warnings`` when given.
    """
    segment = pid or message.first("PID")
    if segment is None:
        raise MappingError("The message has no PID segment (the patient).", segment="PID", code="100")
    key = key_identifier(segment, ctx)
    resource = patient_resource(segment, ctx, warnings if warnings is not None else [])
    return {
        "fullUrl": ctx.full_url("Patient", key["system"], key["value"]),
        "resource": resource,
        "request": {"method": "PUT", "url": patient_url(key)},
    }


def _warn(seg: Segment, field: int, reason: str) -> Warning_:
    return Warning_(reason, segment=seg.name, position=seg.position, field=field)


def _telecom(reps: list[Repetition], default_use: str) -> list[dict[str, Any]]:
    out = []
    for rep in reps:
        point = dt.contact_point(rep)
        if point is None:
            continue
        if "use" not in point and point["system"] != "email":
            point["use"] = default_use
        out.append(point)
    return out


def _marital_status(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    code = rep.get(1).strip().upper()
    if not code:
        return None
    mapped = MARITAL_STATUS.get(code)
    text = rep.get(2).strip()
    if mapped:
        out: dict[str, Any] = {"coding": [{"system": MARITAL, "code": mapped[0], "display": mapped[1]}]}
    elif code in ("U", "T"):
        out = {"coding": [{"system": NULL_FLAVOR, "code": "UNK", "display": "unknown"}]}
    else:
        out = dt.codeable_concept(rep, ctx) or {}
    if text:
        out["text"] = text
    return out or None


def _language(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    """PID-15 primary language: ISO 639 codes (table 0296) become BCP 47 tags; other codes keep
    their (local) system; a bare word (``ENGLISH``) is kept as text."""
    code, text = rep.get(1).strip(), (rep.get(9) or rep.get(2)).strip()
    if not code and not text:
        return None
    tags = [t for c in (code, rep.get(4).strip()) if c and (t := _bcp47(c))]
    if tags:
        out: dict[str, Any] = {"coding": [{"system": BCP47, "code": t} for t in dict.fromkeys(tags)]}
        if text:
            out["text"] = text
        return out
    if code and not rep.get(3) and not text:
        return {"text": code}  # "ENGLISH": a word, not a code
    return dt.codeable_concept(rep, ctx)


def _bcp47(code: str) -> str | None:
    upper = code.upper()
    if upper in LANGUAGES:
        return LANGUAGES[upper]
    parts = code.replace("_", "-").split("-")
    if len(parts[0]) == 2 and parts[0].isalpha() and all(p.isalnum() and 1 < len(p) <= 8 for p in parts):
        return "-".join([parts[0].lower(), *(p.upper() if len(p) == 2 else p for p in parts[1:])])
    return None


def _deceased(pid: Segment, body: dict[str, Any], warnings: list[Warning_]) -> None:
    when, indicator = pid.get(29).strip(), pid.get(30).strip().upper()
    if when:
        value = dt.date_time(when)
        if value is not None:
            body["deceasedDateTime"] = value
            return
        warnings.append(_warn(pid, 29, "PID-29 (death date and time) is not a valid date; left out."))
    if indicator in ("Y", "N"):
        body["deceasedBoolean"] = indicator == "Y"


# -- Practitioner, Location --------------------------------------------------------------------


def practitioner_entry(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    """An XCN with an id as an upserted Practitioner entry; None without XCN-1 (no stable key)."""
    body = dt.practitioner(rep, ctx)
    if body is None or not body.get("identifier"):
        return None
    ident = body["identifier"][0]
    return {
        "fullUrl": ctx.full_url("Practitioner", ident["system"], ident["value"]),
        "resource": body,
        "request": {
            "method": "PUT",
            "url": dt.conditional_url("Practitioner", ident["system"], ident["value"]),
        },
    }


def person_display(rep: Repetition) -> str:
    """The readable name of an XCN (prefix, given, middle, family, suffix)."""
    parts = [rep.get(6), rep.get(3), rep.get(4), rep.get(2), rep.get(5)]
    return " ".join(p.strip() for p in parts if p.strip())


class Entries:
    """The Bundle being built: entries keyed by fullUrl, so a resource named twice (the same doctor
    attending and admitting) is written once."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def add(self, entry: dict[str, Any]) -> str:
        self.entries.setdefault(entry["fullUrl"], entry)
        return str(entry["fullUrl"])

    def bundle(self) -> dict[str, Any]:
        return bundle(list(self.entries.values()))


def actor_reference(rep: Repetition, ctx: MappingContext, entries: Entries) -> dict[str, Any] | None:
    """A Reference to the Practitioner an XCN names: its upserted entry, else a display only."""
    entry = practitioner_entry(rep, ctx)
    if entry is not None:
        ref: dict[str, Any] = {"reference": entries.add(entry)}
        display = person_display(rep)
        if display:
            ref["display"] = display
        return ref
    display = person_display(rep)
    return {"display": display} if display else None


# PL components: 1 point of care, 2 room, 3 bed, 4 facility, 7 building, 8 floor.
_PL_ORDER: Final = ((4, "si"), (7, "bu"), (8, "lvl"), (1, "wa"), (2, "ro"), (3, "bd"))


def location_entry(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    """A PL (PV1-3) as a Location upserted on an identifier built from its components
    (point of care^room^bed^facility^building^floor), physical type from the most specific one."""
    parts = [(rep.get(n).strip(), kind) for n, kind in _PL_ORDER]
    if not any(value for value, _ in parts):
        return None
    # The key follows the PL's own order (point of care^room^bed^facility^building^floor).
    key = "^".join(rep.get(n).strip() for n in (1, 2, 3, 4, 7, 8)).rstrip("^")
    system = ctx.identifier_system(f"{_sender_slug(ctx)}-location")
    kind = next(kind for value, kind in reversed(parts) if value)
    name = " ".join(value for value, _ in parts[1:] if value) or parts[0][0]
    body: dict[str, Any] = {
        "resourceType": "Location",
        "identifier": [{"system": system, "value": key}],
        "name": name,
        "mode": "instance",
        "physicalType": {"coding": [{"system": PHYSICAL_TYPE, "code": kind}]},
    }
    description = rep.get(9).strip()
    if description:
        body["description"] = description
    return {
        "fullUrl": ctx.full_url("Location", system, key),
        "resource": body,
        "request": {"method": "PUT", "url": dt.conditional_url("Location", system, key)},
    }


def _sender_slug(ctx: MappingContext) -> str:
    return _sender(ctx) or "sender"


# -- Encounter ---------------------------------------------------------------------------------


def encounter_status(trigger: str, patient_class: str, discharged: bool) -> str:
    """A03 (or a discharge time) → finished; A04 → arrived; A01 → in-progress; A08 → in-progress,
    or planned for a pre-admit (PV1-2 P). A08 cannot "keep" a status: the upsert replaces the
    Encounter, so the status is derived from what the message says."""
    if trigger == "A03" or discharged:
        return "finished"
    if trigger == "A08" and patient_class == "P":
        return "planned"
    if trigger == "A04":
        return "arrived"
    return "in-progress"


def _v2_concept(code: str, table: str) -> dict[str, Any] | None:
    code = code.strip()
    if not code:
        return None
    return {"coding": [{"system": f"http://terminology.hl7.org/CodeSystem/v2-{table}", "code": code}]}


def encounter_entry(  # noqa: PLR0917 - positional: other mappers call it so
    message: Message,
    pv1: Segment,
    patient: dict[str, Any],
    patient_key: dict[str, Any],
    ctx: MappingContext,
    entries: Entries,
    warnings: list[Warning_],
) -> dict[str, Any] | None:
    """The PV1 as an upserted Encounter; None (with a warning) when the visit cannot be identified."""
    trigger = message.trigger_event
    evn = message.first("EVN")
    start_raw = pv1.get(44).strip()
    end_raw = pv1.get(45).strip()
    if trigger == "A03" and not end_raw and evn is not None:
        end_raw = evn.get(6).strip() or evn.get(2).strip()
    if trigger == "A01" and not start_raw and evn is not None:
        start_raw = evn.get(6).strip() or evn.get(2).strip()
    identifiers: list[dict[str, Any]] = []
    visit = cx_identifier(pv1.first(19), ctx, fallback=_sender(ctx))
    if visit is not None:
        visit["type"] = {"coding": [{"system": V2_0203, "code": "VN"}], "text": "visit number"}
        identifiers.append(visit)
        key = visit
    elif pv1.get(44).strip():
        seed = "|".join((patient_key["system"], patient_key["value"], pv1.get(44).strip()))
        key = {
            "system": ctx.identifier_system(f"{_sender_slug(ctx)}-visit-key"),
            "value": hashlib.sha256(seed.encode()).hexdigest()[:32],
        }
        identifiers.append(key)
        warnings.append(
            _warn(pv1, 19, "PV1-19 (visit number) is empty; the visit is keyed on the patient and PV1-44.")
        )
    else:
        warnings.append(
            _warn(
                pv1,
                19,
                "PV1-19 (visit number) and PV1-44 (admit date/time) are empty, so the visit cannot be "
                "identified; no Encounter was written.",
            )
        )
        return None
    patient_class = pv1.get(2).strip().upper()
    body: dict[str, Any] = {
        "resourceType": "Encounter",
        "identifier": identifiers,
        "status": encounter_status(trigger, patient_class, bool(end_raw)),
        "class": _encounter_class(pv1, patient_class, warnings),
        "subject": {"reference": patient["fullUrl"]},
    }
    admission_type = _v2_concept(pv1.get(4), "0007")
    if admission_type:
        body["type"] = [admission_type]
    service = _v2_concept(pv1.get(10), "0069")
    if service:
        body["serviceType"] = service
    period: dict[str, Any] = {}
    for name, raw, field in (("start", start_raw, 44), ("end", end_raw, 45)):
        if raw:
            value = dt.date_time(raw)
            if value is None:
                warnings.append(_warn(pv1, field, f"PV1-{field} is not a valid date/time; left out."))
            else:
                period[name] = value
    if period:
        body["period"] = period
    participants = _participants(pv1, ctx, entries)
    if participants:
        body["participant"] = participants
    location = location_entry(pv1.first(3), ctx)
    if location is not None:
        body["location"] = [
            {
                "location": {"reference": entries.add(location), "display": location["resource"]["name"]},
                "status": "completed" if body["status"] == "finished" else "active",
            }
        ]
    hospitalization = {
        name: concept
        for name, field, table in (("admitSource", 14, "0023"), ("dischargeDisposition", 36, "0112"))
        if (concept := _v2_concept(pv1.get(field), table))
    }
    if hospitalization:
        body["hospitalization"] = hospitalization
    return {
        "fullUrl": ctx.full_url("Encounter", key["system"], key["value"]),
        "resource": body,
        "request": {"method": "PUT", "url": dt.conditional_url("Encounter", key["system"], key["value"])},
    }


def _participants(pv1: Segment, ctx: MappingContext, entries: Entries) -> list[dict[str, Any]]:
    out = []
    for field, code, display in PARTICIPANTS:
        for rep in pv1.repetitions(field):
            actor = actor_reference(rep, ctx, entries)
            if actor is not None:
                concept = {"coding": [{"system": PARTICIPATION, "code": code, "display": display}]}
                out.append({"type": [concept], "individual": actor})
    return out


def _encounter_class(pv1: Segment, code: str, warnings: list[Warning_]) -> dict[str, Any]:
    mapped = PATIENT_CLASS.get(code)
    if mapped:
        return {"system": ACT_CODE, "code": mapped[0], "display": mapped[1]}
    if code and code not in ("N", "U"):
        warnings.append(
            _warn(pv1, 2, "PV1-2 (patient class) is not a table 0004 code; class set to unknown.")
        )
    return {"system": NULL_FLAVOR, "code": "UNK", "display": "unknown"}


# -- mappers -----------------------------------------------------------------------------------


def map_adt(message: Message, ctx: MappingContext) -> Mapping:
    """ADT^A01/A03/A04/A08/A31 → Patient (+ Encounter, Location, Practitioners from PV1)."""
    warnings: list[Warning_] = []
    pid = message.first("PID")
    if pid is None:
        raise MappingError("The message has no PID segment (the patient).", segment="PID", code="100")
    entries = Entries()
    patient = patient_entry(message, ctx, warnings, pid=pid)
    entries.add(patient)
    pv1 = message.first("PV1")
    if pv1 is not None and message.trigger_event != "A31":
        patient_key = key_identifier(pid, ctx)
        encounter = encounter_entry(message, pv1, patient, patient_key, ctx, entries, warnings)
        if encounter is not None:
            entries.add(encounter)
    return Mapping(bundle=entries.bundle(), warnings=warnings)


def map_adt_merge(message: Message, ctx: MappingContext) -> Mapping:
    """ADT^A40 → for each PID/MRG pair: the surviving Patient upserted (with ``link`` replaces) and
    the prior Patient marked inactive and ``replaced-by`` the survivor, by a conditional JSON Patch
    on its MRG-1 identifier (its own data is kept; a prior patient the store does not know fails
    the transaction instead of creating an empty record). ``Mapping.merges`` tells the inbound
    service which references to move after the commit."""
    warnings: list[Warning_] = []
    pids = message.all("PID")
    if not pids:
        raise MappingError(
            "The message has no PID segment (the surviving patient).", segment="PID", code="100"
        )
    entries: list[dict[str, Any]] = []
    merges: list[tuple[str, str]] = []
    for pid in pids:
        mrg = next(message.following(pid, {"MRG"}, {"PID"}), None)
        if mrg is None:
            raise MappingError(
                "The PID has no MRG segment after it: a merge needs the prior patient identifier (MRG-1).",
                segment="MRG",
                position=pid.position + 1,
                code="100",
            )
        survivor = patient_entry(message, ctx, warnings, pid=pid)
        survivor_key = key_identifier(pid, ctx)
        prior_key = _prior_key(mrg, ctx)
        if (prior_key["system"], prior_key["value"]) == (survivor_key["system"], survivor_key["value"]):
            raise MappingError(
                "MRG-1 names the same patient identifier as PID-3: there is nothing to merge.",
                segment="MRG",
                position=mrg.position,
                field=1,
                code="102",
            )
        prior_url = patient_url(prior_key)
        prior_full_url = ctx.full_url("Patient", prior_key["system"], prior_key["value"])
        survivor["resource"]["link"] = [{"other": {"reference": prior_full_url}, "type": "replaces"}]
        patch = [
            {"op": "add", "path": "/active", "value": False},
            {
                "op": "add",
                "path": "/link",
                "value": [{"other": {"reference": survivor["fullUrl"]}, "type": "replaced-by"}],
            },
        ]
        entries.append(survivor)
        entries.append(
            {
                "fullUrl": prior_full_url,
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
                "request": {"method": "PATCH", "url": prior_url},
            }
        )
        merges.append((survivor["request"]["url"], prior_url))
    return Mapping(bundle=bundle(entries), warnings=warnings, merges=merges)


def _prior_key(mrg: Segment, ctx: MappingContext) -> dict[str, Any]:
    """MRG-1 (prior patient identifier list): its MR identifier, else its first."""
    candidates = [
        (rep, ident)
        for rep in mrg.repetitions(1)
        if (ident := cx_identifier(rep, ctx, fallback=_sender(ctx))) is not None
    ]
    if not candidates:
        raise MappingError(
            "MRG-1 (prior patient identifier list) is required and holds no identifier.",
            segment="MRG",
            position=mrg.position,
            field=1,
            code="101",
        )
    for rep, ident in candidates:
        if rep.get(5).strip().upper() == "MR":
            return ident
    return candidates[0][1]
