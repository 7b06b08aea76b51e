"""MDM^T02 → DocumentReference: the document a clinician opens in the chart, with the bytes the
sender put in OBX-5, exactly (size and hashes checked against the decoded bytes).

A small real PDF is built here and sent as an ED value; the Microsoft FHIR-Converter pairs are
read from the shared folder (skipped when absent). Every produced resource must validate (R4B).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hl7_support import LAB_SCOPE, Endpoint, endpoint

from ehr.documents.service import SHA256_EXTENSION
from ehr.hl7v2 import er7
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, map_message
from ehr.hl7v2.mapping.mdm import map_mdm

PAIRS = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "hl7v2-to-fhir"
V2_0270 = "http://terminology.hl7.org/CodeSystem/v2-0270"


def small_pdf() -> bytes:
    """A real one-page PDF ("Discharge summary (test)"), with a correct cross-reference table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        None,  # the content stream, below
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    stream = b"BT /F1 10 Tf 10 50 Td (Discharge summary \\(test\\)) Tj ET"
    objects[3] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + (body or b"") + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


PDF = small_pdf()
PDF_ED = f"^application^pdf^Base64^{base64.b64encode(PDF).decode()}"
TXA_AUTH = "1234^WELBY^MARCUS^^^DR^^^NPI"


def mdm_message(
    obx: tuple[str, ...] = (),
    *,
    completion: str = "AU",
    document_number: str = "DOC-1^CLINICEHR",
    control_id: str = "MDM-1",
) -> str:
    fields = [""] * 23
    fields[1], fields[2], fields[3] = "1", "DS", "AP"
    fields[4] = "20240101110000+0000"  # activity date/time
    fields[5] = TXA_AUTH  # primary activity provider
    fields[6] = "20240101113000+0000"  # origination date/time
    fields[12] = document_number
    fields[14] = "PL-1^CLINICEHR"  # placer order number
    fields[17] = completion
    fields[19] = "AV"
    fields[22] = "5678^HOUSE^GREGORY^^^DR^^^NPI"  # authentication person
    if not obx:
        obx = (f"OBX|1|ED|18842-5^Discharge summary^LN||{PDF_ED}||||||F",)
    return "\r".join(
        [
            f"MSH|^~\\&|CLINICEHR|NORTH CLINIC|EHR|ACME|20240101120000||MDM^T02^MDM_T02|{control_id}|P|2.5.1",
            "EVN|T02|20240101120000",
            "PID|1||MRN-1^^^NORTH^MR||DOE^JANE||19800101|F",
            "PV1|1|O|CLINIC^1||||||||||||||||V-100^^^NORTH^VN",
            "TXA|" + "|".join(fields[1:]),
            *obx,
        ]
    )


def ctx_for(message: er7.Message) -> MappingContext:
    return MappingContext("acme-lab", message.sending_application, message.sending_facility)


def run(text: str) -> Mapping:
    message = er7.parse(text)
    return map_message(message, ctx_for(message))


def run_pair(name: str) -> Mapping:
    path = PAIRS / f"{name}.hl7"
    if not path.is_file():
        pytest.skip(f"shared pair {name} is not here")
    message = er7.parse(er7.split_messages(er7.decode(path.read_bytes()))[0][0])
    return map_mdm(message, ctx_for(message))


def document(mapping: Mapping) -> dict[str, Any]:
    return next(
        e["resource"] for e in mapping.bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
    )


def by_full_url(mapping: Mapping, full_url: str) -> dict[str, Any]:
    return next(e["resource"] for e in mapping.bundle["entry"] if e["fullUrl"] == full_url)


def assert_valid(mapping: Mapping) -> None:
    for entry in mapping.bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


# -- an ED document -----------------------------------------------------------------------------


def test_a_pdf_sent_as_base64_ed_is_the_attachment_with_its_exact_bytes() -> None:
    # Given an MDM^T02 carrying a small PDF as a Base64 ED value
    mapping = run(mdm_message())
    attachment = document(mapping)["content"][0]["attachment"]
    # Then the attachment is a PDF whose inline data decodes to exactly the bytes sent
    assert attachment["contentType"] == "application/pdf"
    assert base64.b64decode(attachment["data"]) == PDF
    assert attachment["title"] == "Discharge summary"
    assert_valid(mapping)


def test_size_sha1_and_sha256_are_computed_from_the_decoded_bytes() -> None:
    # Given the PDF document
    attachment = document(run(mdm_message()))["content"][0]["attachment"]
    # Then size, hash (SHA-1, base64) and the SHA-256 extension describe the PDF bytes
    assert attachment["size"] == len(PDF)
    assert attachment["hash"] == b64(hashlib.sha1(PDF).digest())
    assert attachment["extension"] == [
        {"url": SHA256_EXTENSION, "valueBase64Binary": b64(hashlib.sha256(PDF).digest())}
    ]


def test_hex_encoded_data_is_re_encoded_as_base64() -> None:
    # Given the same PDF sent Hex-encoded
    obx = (f"OBX|1|ED|18842-5^Discharge summary^LN||^application^pdf^Hex^{PDF.hex().upper()}||||||F",)
    attachment = document(run(mdm_message(obx)))["content"][0]["attachment"]
    # Then the attachment holds the same bytes, as base64
    assert base64.b64decode(attachment["data"]) == PDF
    assert attachment["size"] == len(PDF)


def test_ascii_encoded_text_is_kept_byte_for_byte() -> None:
    # Given a plain-text document sent as ASCII ED data with an escaped delimiter
    obx = ("OBX|1|ED|11506-3^Progress note^LN||^text^plain^A^Seen today \\T\\ doing well||||||F",)
    attachment = document(run(mdm_message(obx)))["content"][0]["attachment"]
    # Then the text (escapes decoded) is the content, typed as UTF-8 plain text
    assert base64.b64decode(attachment["data"]) == b"Seen today & doing well"
    assert attachment["contentType"] == "text/plain; charset=utf-8"


def test_hl7_subtype_names_become_mime_types() -> None:
    # Given an image sent with HL7 table 0191/0291 names (IM^JPEG) rather than MIME names
    jpeg = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"
    obx = (f"OBX|1|ED|72170-4^Photo^LN||^IM^JPEG^Base64^{base64.b64encode(jpeg).decode()}||||||F",)
    attachment = document(run(mdm_message(obx)))["content"][0]["attachment"]
    # Then the attachment says image/jpeg
    assert attachment["contentType"] == "image/jpeg"


# -- text documents -------------------------------------------------------------------------


def test_text_lines_become_one_utf8_plain_text_attachment() -> None:
    # Given a dictated report in three TX lines
    obx = (
        "OBX|1|TX|11506-3^Progress note^LN|1|Patient seen in clinic.||||||F",
        "OBX|2|TX|11506-3^Progress note^LN|1|Blood pressure 120/80.||||||F",
        "OBX|3|TX|11506-3^Progress note^LN|1|Follow up in 3 months \\T\\ labs.||||||F",
    )
    attachment = document(run(mdm_message(obx)))["content"][0]["attachment"]
    # Then the document is the lines joined by newlines, UTF-8 plain text
    assert attachment["contentType"] == "text/plain; charset=utf-8"
    assert base64.b64decode(attachment["data"]).decode("utf-8") == (
        "Patient seen in clinic.\nBlood pressure 120/80.\nFollow up in 3 months & labs."
    )


def test_the_microsoft_text_report_pair_matches_the_reference_document_fields() -> None:
    # Given Microsoft's MDM-T02-03 (29 TX lines, TXA-2 DS, TXA-12 2RWRVAJ627408, TXA-17 IP)
    mapping = run_pair("msft-fhir-converter__MDM-T02-03")
    ours = document(mapping)
    # Then type, document number, statuses and activity time agree with the reference
    assert ours["type"]["coding"][0]["code"] == "DS"
    assert ours["masterIdentifier"]["value"] == "2RWRVAJ627408"
    assert ours["docStatus"] == "preliminary"
    assert ours["status"] == "current"
    assert ours["context"]["period"]["start"] == "2021-08-01T09:06:42+02:15"  # = their 12:21:42+05:30
    # And the text is all 29 lines
    text = base64.b64decode(ours["content"][0]["attachment"]["data"]).decode("utf-8")
    assert len(text.split("\n")) == 29
    assert text.startswith("Toilet cylinder crackers")
    assert_valid(mapping)


# -- header fields --------------------------------------------------------------------------


def test_the_document_is_keyed_on_txa_12_and_created_once() -> None:
    # Given the T02
    mapping = run(mdm_message())
    entry = next(e for e in mapping.bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference")
    # Then TXA-12 is the master identifier and the entry is a conditional create on it
    assert entry["resource"]["masterIdentifier"]["value"] == "DOC-1"
    assert entry["resource"]["identifier"] == [entry["resource"]["masterIdentifier"]]
    assert entry["request"]["method"] == "POST"
    assert entry["request"]["ifNoneExist"].endswith("|DOC-1")


def test_an_oid_document_number_without_authority_is_a_urn_oid() -> None:
    # Given a TXA-12 that is a bare OID (a DICOM-style unique id)
    mapping = run(mdm_message(document_number="1.2.840.317.5947431.51.20080131160038"))
    # Then the master identifier is that OID as a URI
    assert document(mapping)["masterIdentifier"] == {
        "system": "urn:ietf:rfc:3986",
        "value": "urn:oid:1.2.840.317.5947431.51.20080131160038",
    }


@pytest.mark.parametrize(
    ("completion", "doc_status"),
    [("AU", "final"), ("LA", "final"), ("IP", "preliminary"), ("DI", "preliminary"), ("IN", "preliminary")],
)
def test_completion_status_sets_doc_status(completion: str, doc_status: str) -> None:
    # Given TXA-17 (document completion status), then docStatus follows table 0271
    assert document(run(mdm_message(completion=completion)))["docStatus"] == doc_status


def test_type_authors_authenticator_date_and_order_are_mapped() -> None:
    # Given the T02 with a primary provider, an authenticator and a placer order number
    mapping = run(mdm_message())
    doc = document(mapping)
    # Then the type is table 0270's discharge summary and the date the origination time
    assert doc["type"]["coding"][0] == {"code": "DS", "system": V2_0270, "display": "Discharge summary"}
    assert doc["date"] == "2024-01-01T11:30:00+00:00"
    # And author and authenticator are the NPI-identified Practitioners
    author = by_full_url(mapping, doc["author"][0]["reference"])
    authenticator = by_full_url(mapping, doc["authenticator"]["reference"])
    assert author["identifier"][0]["value"] == "1234"
    assert authenticator["identifier"][0]["value"] == "5678"
    # And the context names the visit and the order the document answers
    assert doc["context"]["encounter"][0]["reference"].startswith("urn:uuid:")
    assert doc["context"]["related"][0]["identifier"]["value"] == "PL-1"
    assert_valid(mapping)


# -- what is refused ------------------------------------------------------------------------


def test_an_ed_without_data_is_refused_naming_obx_5() -> None:
    # Given Microsoft's MDM-T02-01, whose ED value has no data (^application^pdf^Base64^)
    with pytest.raises(MappingError) as raised:
        run_pair("msft-fhir-converter__MDM-T02-01")
    # Then the sender is told the document content is empty, at OBX-5
    assert (raised.value.segment, raised.value.field, raised.value.component) == ("OBX", 5, 5)
    assert "empty" in raised.value.reason


def test_data_that_is_not_base64_is_refused_as_a_data_type_error() -> None:
    obx = ("OBX|1|ED|18842-5^Discharge summary^LN||^application^pdf^Base64^not*base64!||||||F",)
    with pytest.raises(MappingError) as raised:
        run(mdm_message(obx))
    assert (raised.value.field, raised.value.code) == (5, "102")


def test_a_content_type_the_document_store_refuses_is_refused_up_front() -> None:
    # Given an HTML document (active content the EHR never stores)
    obx = (f"OBX|1|ED|18842-5^Summary^LN||^text^html^Base64^{base64.b64encode(b'<p>x</p>').decode()}||||||F",)
    with pytest.raises(MappingError) as raised:
        run(mdm_message(obx))
    # Then the ACK names OBX-5 and the type (not a failed transaction later)
    assert (raised.value.field, raised.value.code) == (5, "103")
    assert "text^html" in raised.value.reason


def test_a_missing_document_number_is_refused() -> None:
    with pytest.raises(MappingError) as raised:
        run(mdm_message(document_number=""))
    assert (raised.value.segment, raised.value.field) == ("TXA", 12)


def test_a_second_ed_document_in_one_message_is_refused() -> None:
    ed = f"^application^pdf^Base64^{base64.b64encode(PDF).decode()}"
    obx = (f"OBX|1|ED|18842-5^A^LN||{ed}||||||F", f"OBX|2|ED|18842-5^B^LN||{ed}||||||F")
    with pytest.raises(MappingError) as raised:
        run(mdm_message(obx))
    assert raised.value.position == 7  # the second OBX


# -- end to end -----------------------------------------------------------------------------


def test_end_to_end_a_replayed_t02_keeps_one_document(auth_settings, issuer) -> None:
    # Given a clinic endpoint that received a T02 with a PDF
    lab: Endpoint = endpoint(auth_settings, issuer.mint(tenant="acme-lab", scope=LAB_SCOPE))
    assert lab.post(mdm_message()).code == "AA"
    # When the same document arrives again under a new control id (a resend by the interface)
    again = lab.post(mdm_message(control_id="MDM-2"))
    # Then it is accepted and there is still exactly one DocumentReference, at its first version
    assert again.code == "AA"
    (stored,) = lab.search("acme-lab", "DocumentReference", "identifier=DOC-1")
    assert stored["meta"]["versionId"] == "1"
    assert stored["subject"]["reference"].startswith("Patient/")
