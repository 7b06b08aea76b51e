"""MDM^T02 (original document notification and content) → DocumentReference, with the Patient, the
Encounter and the Practitioners who wrote and authenticated the document.

- The document is keyed by TXA-12 (unique document number): ``masterIdentifier`` and
  ``identifier``. T02 announces an *original* document, so the DocumentReference is created
  once (conditional create, ``ifNoneExist``): a replay of the same T02 leaves the stored document
  as it is. (A conditional update would fail on a replay: the document store never lets the stored
  content of a DocumentReference change, not even to the same bytes.)
- The content is OBX-5: an ED value (``source^type^subtype^encoding^data``) becomes the
  attachment with its bytes inline as base64 (``Hex`` and ``A`` ASCII data are re-encoded), with
  ``size``, ``hash`` (SHA-1, base64) and the SHA-256 extension computed from the decoded bytes; TX,
  FT and ST lines become one ``text/plain; charset=utf-8`` attachment; an RP whose pointer is a
  URL becomes an attachment ``url``. The document store moves inline data to S3 on commit.
- A T02 without content (no OBX, or an ED with no data) is refused: FHIR requires content.

Field tables and decisions: ``docs/hl7v2-mapping-orders-mdm.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

from ehr.documents.service import CONTENT_TYPES, SHA256_EXTENSION
from ehr.hl7v2.er7 import Message, Segment
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, Warning_
from ehr.hl7v2.mapping.datatypes import (
    codeable_concept,
    conditional_url,
    date_time,
    entity_identifier,
    instant,
)
from ehr.hl7v2.mapping.orders import (
    TransactionBuilder,
    encounter_reference,
    note_text,
    order_number,
    patient_reference,
    practitioner_reference,
    warn,
)

# The SHA-256 of the attachment bytes: the constant ``ehr.documents`` reads and writes.
SHA256_EXTENSION_URL = SHA256_EXTENSION
V2_0270 = "http://terminology.hl7.org/CodeSystem/v2-0270"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
TEXT_PLAIN = "text/plain; charset=utf-8"

# TXA-2 document type (HL7 table 0270).
DOCUMENT_TYPES: dict[str, str] = {
    "AR": "Autopsy report",
    "CD": "Cardiodiagnostics",
    "CN": "Consultation",
    "DI": "Diagnostic imaging",
    "DS": "Discharge summary",
    "ED": "Emergency department report",
    "HP": "History and physical examination",
    "OP": "Operative report",
    "PC": "Psychiatric consultation",
    "PH": "Psychiatric history and physical examination",
    "PN": "Procedure note",
    "PR": "Progress note",
    "SP": "Surgical pathology",
    "TS": "Transfer summary",
}

# TXA-17 document completion status (table 0271) → DocumentReference.docStatus.
COMPLETION_STATUS: dict[str, str] = {
    "AU": "final",  # authenticated
    "LA": "final",  # legally authenticated
    "DI": "preliminary",  # dictated
    "DO": "preliminary",  # documented
    "IP": "preliminary",  # in progress
    "IN": "preliminary",  # incomplete
    "PA": "preliminary",  # pre-authenticated
    "CA": "entered-in-error",  # canceled
}

# TXA-19 document availability status (table 0273) → DocumentReference.status.
AVAILABILITY_STATUS: dict[str, str] = {
    "AV": "current",  # available for patient care
    "UN": "current",  # unavailable for patient care (still the current version)
    "OB": "superseded",  # obsolete
    "CA": "entered-in-error",  # deleted
}

# TXA-18 document confidentiality status (table 0272) → v3 Confidentiality.
CONFIDENTIALITY: dict[str, tuple[str, str]] = {
    "V": ("V", "very restricted"),
    "R": ("R", "restricted"),
    "U": ("N", "normal"),
}

# ED-2 type of data (table 0191) and ED-3 subtype (table 0291) → MIME type, when they are not
# already a MIME type and subtype (``application^pdf``).
SUBTYPES: dict[str, str] = {
    "PDF": "application/pdf",
    "JPEG": "image/jpeg",
    "JPG": "image/jpeg",
    "GIF": "image/gif",
    "PNG": "image/png",
    "TIFF": "image/tiff",
    "RTF": "application/rtf",
    "XML": "application/xml",
    "DICOM": "application/dicom",
    "MSWORD": "application/msword",
    "DOCX": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "HTML": "text/html",
    "OCTET-STREAM": "application/octet-stream",
    "POSTSCRIPT": "application/postscript",
    "X-HL7-CDA-LEVEL-ONE": "application/xml",
}
TYPES: dict[str, str] = {"TEXT": "text/plain", "FT": "text/rtf", "IM": "image/jpeg", "SI": "image/tiff"}
MIME_TOP_LEVEL = frozenset({"application", "image", "text", "audio", "video", "multipart"})
TEXT_TYPES = frozenset({"TX", "FT", "ST"})


def map_mdm(message: Message, ctx: MappingContext) -> Mapping:
    """MDM^T02 → a transaction creating one DocumentReference (see the module docstring)."""
    warnings: list[Warning_] = []
    txa = message.first("TXA")
    if txa is None:
        raise MappingError("The message has no TXA segment (the document header).", segment="TXA", code="100")
    key = _document_number(txa, ctx)
    builder = TransactionBuilder(ctx)
    content = _content(message, txa, warnings)
    patient, patient_entry_ = patient_reference(message, ctx, builder, warnings)
    body: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "masterIdentifier": key,
        "identifier": [key],
        "status": _availability(txa, warnings),
        "subject": {"reference": patient},
    }
    completion = txa.get(17).upper()
    if completion in COMPLETION_STATUS:
        body["docStatus"] = COMPLETION_STATUS[completion]
    elif completion:
        warn(warnings, f"TXA-17 (completion status) {completion!r} is not in HL7 table 0271.", txa, 17)
    kind, title = _document_type(txa, ctx)
    if kind:
        body["type"] = kind
    confidentiality = CONFIDENTIALITY.get(txa.get(18).upper())
    if confidentiality:
        body["securityLabel"] = [
            {
                "coding": [
                    {"system": V3_CONFIDENTIALITY, "code": confidentiality[0], "display": confidentiality[1]}
                ]
            }
        ]
    moment = instant(txa.get(6)) or instant(txa.get(4))
    if moment:
        body["date"] = moment
    authors: list[dict[str, Any]] = []
    for n in (5, 9):  # primary activity provider, originator
        for rep in txa.repetitions(n):
            ref = practitioner_reference(rep, ctx, builder)
            if ref and ref not in authors:
                authors.append(ref)
    if authors:
        body["author"] = authors
    authenticator = next(
        (
            ref
            for n in (22, 10)
            for rep in txa.repetitions(n)
            if (ref := practitioner_reference(rep, ctx, builder))
        ),
        None,
    )
    if authenticator:
        body["authenticator"] = authenticator
    parent = entity_identifier(txa.first(13), ctx)
    if parent:
        body["relatesTo"] = [
            {"code": "appends", "target": {"type": "DocumentReference", "identifier": parent}}
        ]
    context = _context(message, txa, ctx, builder=builder, patient_entry_=patient_entry_, warnings=warnings)
    if context:
        body["context"] = context
    for attachment in content:
        if title and "title" not in attachment:
            attachment["title"] = title
        creation = date_time(txa.get(6))
        if creation and "creation" not in attachment:
            attachment["creation"] = creation
    body["content"] = [{"attachment": a} for a in content]
    full_url = ctx.full_url("DocumentReference", str(key["system"]), str(key["value"]))
    builder.add(
        {
            "fullUrl": full_url,
            "resource": body,
            "request": {
                "method": "POST",
                "url": "DocumentReference",
                "ifNoneExist": conditional_url("DocumentReference", key["system"], key["value"]).partition(
                    "?"
                )[2],
            },
        }
    )
    return Mapping(bundle=builder.bundle(), warnings=warnings)


def _document_number(txa: Segment, ctx: MappingContext) -> dict[str, Any]:
    rep = txa.first(12)
    ident = entity_identifier(rep, ctx)
    if ident is None:
        raise MappingError(
            "TXA-12 (unique document number) is required and empty.",
            segment="TXA",
            position=txa.position,
            field=12,
        )
    if not (rep.get(2) or rep.get(3)):  # no assigning authority
        if re.fullmatch(r"[0-2](\.(0|[1-9]\d*))+", ident["value"]):  # an OID (e.g. a DICOM UID)
            return {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{ident['value']}"}
        ident["system"] = ctx.identifier_system(f"{ctx.sending_facility or ctx.sending_application} document")
    return ident


def _availability(txa: Segment, warnings: list[Warning_]) -> str:
    code = txa.get(19).upper()
    if code and code not in AVAILABILITY_STATUS:
        warn(warnings, f"TXA-19 (availability status) {code!r} is not in HL7 table 0273.", txa, 19)
    if txa.get(17).upper() == "CA":
        return "entered-in-error"
    return AVAILABILITY_STATUS.get(code, "current")


def _document_type(txa: Segment, ctx: MappingContext) -> tuple[dict[str, Any] | None, str]:
    """TXA-2 → (type, title). A bare table 0270 code gets the v2-0270 system and its display."""
    rep = txa.first(2)
    code = rep.get(1).strip()
    if code and not rep.get(3):
        display = rep.get(2) or DOCUMENT_TYPES.get(code.upper(), "")
        coding: dict[str, Any] = {"code": code}
        if code.upper() in DOCUMENT_TYPES:
            coding["system"] = V2_0270
        else:
            coding["system"] = ctx.code_system("HL70270")
        if display:
            coding["display"] = display
        return {"coding": [coding], **({"text": display} if display else {})}, display or code
    concept = codeable_concept(rep, ctx)
    return concept, str((concept or {}).get("text") or code)


def _context(
    message: Message,
    txa: Segment,
    ctx: MappingContext,
    *,
    builder: TransactionBuilder,
    patient_entry_: dict[str, Any],
    warnings: list[Warning_],
) -> dict[str, Any]:
    context: dict[str, Any] = {}
    encounter = encounter_reference(message, ctx, builder, patient_entry_, warnings)
    if encounter:
        context["encounter"] = [{"reference": encounter}]
    activity = date_time(txa.get(4))
    if activity:
        context["period"] = {"start": activity}
    related = []
    for n, role in ((14, "placer"), (15, "filler")):
        order = order_number(txa.first(n), ctx, role)
        if order:
            related.append({"type": "ServiceRequest", "identifier": order})
    if related:
        context["related"] = related
    return context


# -- content -----------------------------------------------------------------------------------


def _content(message: Message, txa: Segment, warnings: list[Warning_]) -> list[dict[str, Any]]:
    """The attachments of OBX-5: at most one stored (ED or text), plus external URLs (RP)."""
    stored: dict[str, Any] | None = None
    lines: list[str] = []
    urls: list[dict[str, Any]] = []
    for obx in message.all("OBX"):
        kind = obx.get(2).upper()
        if kind == "ED":
            if stored is not None:
                raise MappingError(
                    "An MDM^T02 carries one document; this OBX holds a second ED value. "
                    "Send each document in its own message.",
                    segment="OBX",
                    position=obx.position,
                    field=5,
                    code="102",
                )
            stored = _encapsulated(obx)
        elif kind in TEXT_TYPES:
            lines.append(note_text(obx, 5))
        elif kind == "RP":
            pointer = obx.get(5, 1)
            if re.match(r"^https?://", pointer):
                urls.append({"url": pointer})
            else:
                warn(warnings, "OBX-5 (RP) is not a URL; the reference pointer is left out.", obx, 5)
        else:
            warn(warnings, f"OBX-2 value type {kind or '(empty)'} is not document content; left out.", obx, 2)
    text = "\n".join(lines).strip("\n")
    if stored is None and text:
        stored = _attachment(text.encode("utf-8"), TEXT_PLAIN)
    elif text:
        warn(warnings, "Text OBX lines next to an ED document are left out (the ED is the document).", txa)
    attachments = ([stored] if stored else []) + urls
    if not attachments:
        first = message.first("OBX")
        raise MappingError(
            "The MDM^T02 carries no document content (OBX-5 is missing or empty).",
            segment="OBX" if first else "TXA",
            position=first.position if first else txa.position,
            field=5 if first else 0,
        )
    return attachments


def _encapsulated(obx: Segment) -> dict[str, Any]:
    """An ED (source^type of data^subtype^encoding^data) → an attachment with inline bytes."""
    rep = obx.first(5)
    type_of_data, subtype, encoding = rep.get(2).strip(), rep.get(3).strip(), rep.get(4).strip().upper()
    data = rep.get(5)
    if not data.strip():
        raise _ed_error(obx, "OBX-5 (ED) has no data: the document content is empty.", 5)
    content_type = _content_type(type_of_data, subtype)
    if content_type is None or content_type.split(";")[0] not in CONTENT_TYPES:
        raise _ed_error(
            obx,
            f"OBX-5 (ED) type {type_of_data}^{subtype} is not a document type this EHR stores "
            f"({', '.join(sorted(CONTENT_TYPES))}).",
            3,
            "103",
        )
    try:
        if encoding in ("BASE64", "B64"):
            raw = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
        elif encoding == "HEX":
            raw = bytes.fromhex(re.sub(r"\s+", "", data))
        elif encoding in ("A", "ASCII", ""):
            raw = data.encode("utf-8")
        else:
            raise _ed_error(
                obx,
                f"OBX-5 (ED) encoding {encoding!r} is not one of Base64, Hex, A (HL7 table 0299).",
                4,
                "103",
            )
    except (binascii.Error, ValueError) as exc:
        raise _ed_error(obx, f"OBX-5 (ED) data is not valid {encoding.title()} text.", 5, "102") from exc
    if not raw:
        raise _ed_error(obx, "OBX-5 (ED) has no data: the document content is empty.", 5)
    return _attachment(raw, content_type)


def _ed_error(obx: Segment, reason: str, component: int, code: str = "101") -> MappingError:
    return MappingError(reason, segment="OBX", position=obx.position, field=5, component=component, code=code)


def _content_type(type_of_data: str, subtype: str) -> str | None:
    top, sub = type_of_data.lower(), subtype.lower()
    if top in MIME_TOP_LEVEL and sub and re.fullmatch(r"[a-z0-9.+-]+", sub):
        if top == "text" and sub in ("plain", "rtf", "xml", "html"):
            return f"text/{sub}" + ("; charset=utf-8" if sub == "plain" else "")
        return f"{top}/{sub}"
    return SUBTYPES.get(subtype.upper()) or TYPES.get(type_of_data.upper())


def _attachment(raw: bytes, content_type: str) -> dict[str, Any]:
    sha1 = hashlib.sha1(raw, usedforsecurity=False).digest()
    sha256 = hashlib.sha256(raw).digest()
    return {
        "contentType": content_type,
        "data": base64.b64encode(raw).decode("ascii"),
        "size": len(raw),
        "hash": base64.b64encode(sha1).decode("ascii"),
        "extension": [
            {"url": SHA256_EXTENSION_URL, "valueBase64Binary": base64.b64encode(sha256).decode("ascii")}
        ],
    }
