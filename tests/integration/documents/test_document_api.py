"""Clinical documents through the API, on moto with the loopback S3 server: upload metadata,
presigned PUT, verification, audited download redirect, inline data (REST and transactions),
refusals, immutability, search, and the encryption each object gets."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from documents_support import (
    UploadTicket,
    attachment_for,
    attachment_of,
    document,
    inline,
    minimal_pdf,
    png,
    sha1_b64,
    sha256_b64,
)

from ehr.documents.ports import ObjectLocation
from ehr.documents.s3 import S3DocumentStore
from ehr.documents.service import SHA256_EXTENSION, VERIFICATION_EXTENSION
from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer
from infra.local.platform import LocalPlatform
from tests.integration.api.api_support import FhirClient, location_ref, new_uuid, post_entry


def upload_ticket(fhir: FhirClient, document_id: str) -> UploadTicket:
    reply = fhir.post(f"DocumentReference/{document_id}/$upload-url", body=b"", content_type=None)
    assert reply.status == 200, reply
    return UploadTicket.from_parameters(reply.json)


def download(fhir: FhirClient, document_id: str) -> requests.Response:
    reply = fhir.get(f"Binary/{document_id}")
    assert reply.status == 302, reply
    return requests.get(reply.header("Location"), timeout=30)


def s3_client(platform: LocalPlatform) -> Any:
    assert platform.resources is not None
    return boto3.client(
        "s3",
        endpoint_url=platform.resources.s3_endpoint,
        region_name=platform.resources.region,
        config=Config(s3={"addressing_style": "path"}),
    )


def extension(attachment: dict[str, Any], url: str) -> Any:
    return next((e.get("valueString") for e in attachment.get("extension", []) if e["url"] == url), None)


# -- upload through a presigned URL ----------------------------------------------------------------


def test_upload_verify_and_download_a_pdf(fhir: FhirClient, uid: str) -> None:
    # Given the metadata of a real PDF
    pdf = minimal_pdf(f"Discharge summary {uid}")
    created = fhir.create(document(attachment_for(pdf)))
    # Then the DocumentReference waits for its content, and the content cannot be downloaded yet
    assert created["docStatus"] == "preliminary"
    assert attachment_of(created)["url"] == f"Binary/{created['id']}"
    early = fhir.get(f"Binary/{created['id']}")
    assert (early.status, early.codes) == (409, {"conflict"})

    # When the client asks for an upload URL
    ticket = upload_ticket(fhir, created["id"])
    # Then it is a PUT that expires within minutes and names the headers to send
    assert ticket.method == "PUT"
    expires = datetime.strptime(ticket.expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(0) < expires - datetime.now(UTC) <= timedelta(minutes=10)
    assert ticket.headers["Content-Type"] == "application/pdf"
    assert ticket.headers["Content-Length"] == str(len(pdf))
    assert ticket.headers["x-amz-checksum-sha256"] == sha256_b64(pdf)
    assert ticket.headers["If-None-Match"] == "*"

    # When the bytes are PUT to it
    assert ticket.put(pdf).status_code == 200
    # Then the platform has verified them: final, downloadable, byte for byte
    stored = fhir.read("DocumentReference", created["id"])
    assert (stored["docStatus"], stored["status"]) == ("final", "current")
    assert extension(attachment_of(stored), VERIFICATION_EXTENSION) == "verified-upload"
    got = download(fhir, created["id"])
    assert got.status_code == 200
    assert got.content == pdf
    assert got.headers["Content-Type"] == "application/pdf"
    assert got.headers["Content-Disposition"].startswith("attachment")


def test_the_download_is_audited_with_the_document_and_its_patient(
    fhir: FhirClient, gateway: LocalGateway, issuer: DevIssuer, uid: str
) -> None:
    # Given a stored document of a patient of this test
    patient = fhir.create({"resourceType": "Patient", "name": [{"family": f"Doc{uid}"}]})
    created = fhir.create(document(inline(png(seed=3), "image/png"), patient=f"Patient/{patient['id']}"))
    # When it is downloaded
    assert download(fhir, created["id"]).status_code == 200
    # Then the patient's audit trail holds a read of Binary/{id} and of the DocumentReference
    auditor = FhirClient(gateway, "clinic-a", issuer.mint(tenant="clinic-a", scope="user/AuditEvent.rs"))
    trail = auditor.search("AuditEvent", {"patient": f"Patient/{patient['id']}"})
    reads = [
        e["resource"]
        for e in trail.get("entry", [])
        if f"Binary/{created['id']}" in json.dumps(e["resource"])
    ]
    assert reads, trail
    assert f"DocumentReference/{created['id']}" in json.dumps(reads[0])


def test_a_second_upload_of_the_same_document_is_refused(fhir: FhirClient, uid: str) -> None:
    pdf = minimal_pdf(uid)
    created = fhir.create(document(attachment_for(pdf)))
    ticket = upload_ticket(fhir, created["id"])
    assert ticket.put(pdf).status_code == 200
    # When the URL is used again, or a new one is asked for
    again = ticket.put(pdf)
    reply = fhir.post(f"DocumentReference/{created['id']}/$upload-url", body=b"", content_type=None)
    # Then S3 refuses to overwrite (If-None-Match), and the API has nothing left to upload
    assert again.status_code == 412
    assert (reply.status, reply.codes) == (409, {"conflict"})


def test_a_large_document_goes_through_the_presigned_url(fhir: FhirClient) -> None:
    # Given 12 MB, twice Lambda's synchronous payload limit (a PDF followed by padding bytes)
    data = minimal_pdf("large") + bytes(range(256)) * (12 * 4096)
    created = fhir.create(document(attachment_for(data)))
    # When uploaded through the presigned URL
    assert upload_ticket(fhir, created["id"]).put(data).status_code == 200
    # Then it is verified and served whole
    assert fhir.read("DocumentReference", created["id"])["docStatus"] == "final"
    assert download(fhir, created["id"]).content == data


# -- what the verifier and S3 refuse ---------------------------------------------------------------


def test_a_sha1_mismatch_marks_the_document_entered_in_error_and_keeps_the_bytes(
    fhir: FhirClient, platform: LocalPlatform
) -> None:
    # Given metadata whose SHA-1 is not that of the bytes (the SHA-256 is, so S3 takes them)
    pdf = minimal_pdf("mismatch")
    created = fhir.create(document(attachment_for(pdf, hash=sha1_b64(b"other bytes"))))
    # When the bytes land
    assert upload_ticket(fhir, created["id"]).put(pdf).status_code == 200
    # Then the document is in error, says why, and is not served
    stored = fhir.read("DocumentReference", created["id"])
    assert (stored["status"], stored["docStatus"]) == ("entered-in-error", "preliminary")
    assert extension(attachment_of(stored), VERIFICATION_EXTENSION) == "mismatch: sha-1"
    refused = fhir.get(f"Binary/{created['id']}")
    assert (refused.status, refused.codes) == (409, {"conflict"})
    # And the bytes stay in the bucket for review
    assert platform.resources is not None
    key = ObjectLocation("clinic-a", created["id"], base64.b64decode(sha256_b64(pdf)).hex()).key
    kept = s3_client(platform).get_object(Bucket=platform.resources.documents_bucket, Key=key)
    assert kept["Body"].read() == pdf
    # And a client cannot clear the error by updating the resource
    stored["status"] = "current"
    assert (
        fhir.put(f"DocumentReference/{created['id']}", json_body=stored).json["status"] == "entered-in-error"
    )


def test_other_bytes_than_declared_are_refused_by_s3(fhir: FhirClient) -> None:
    pdf = minimal_pdf("declared")
    created = fhir.create(document(attachment_for(pdf)))
    ticket = upload_ticket(fhir, created["id"])
    # When the same number of other bytes is sent (S3 checks the signed SHA-256)
    tampered = ticket.put(pdf.replace(b"declared", b"DECLARED"))
    # And when more bytes are sent than declared (the signed Content-Length differs)
    longer = ticket.put(pdf + b"\n% trailing")
    # Then both are refused, nothing lands, and the document still waits
    assert tampered.status_code == 400 and b"BadDigest" in tampered.content
    assert longer.status_code == 403 and b"SignatureDoesNotMatch" in longer.content
    assert fhir.read("DocumentReference", created["id"])["docStatus"] == "preliminary"


def test_another_content_type_than_signed_is_refused(fhir: FhirClient) -> None:
    pdf = minimal_pdf("type")
    created = fhir.create(document(attachment_for(pdf)))
    reply = upload_ticket(fhir, created["id"]).put(pdf, **{"Content-Type": "text/html"})
    assert reply.status_code == 403 and b"SignatureDoesNotMatch" in reply.content


def test_an_expired_url_is_refused(platform: LocalPlatform) -> None:
    # Given URLs signed by the platform's S3 adapter for one second
    assert platform.resources is not None
    store = S3DocumentStore(
        platform.resources.documents_bucket,
        platform.resources.data_key_arn,
        endpoint=platform.resources.s3_endpoint,
    )
    data = png(seed=9)
    location = ObjectLocation("clinic-a", "expiry-test", base64.b64decode(sha256_b64(data)).hex())
    upload = store.upload_request(
        location, content_type="image/png", size=len(data), sha256_b64=sha256_b64(data), seconds=1
    )
    time.sleep(2.1)
    # When they are used after that
    headers = {k: v for k, v in upload.headers.items() if k != "Content-Length"}
    put = requests.put(upload.url, data=data, headers=headers, timeout=30)
    # Then S3 answers 403 "Request has expired" and stores nothing
    assert put.status_code == 403 and b"Request has expired" in put.content
    assert store.head(location) is None


# -- inline data -----------------------------------------------------------------------------------


def test_inline_data_is_moved_to_the_store_and_is_final_at_once(fhir: FhirClient) -> None:
    image = png(16, 16, seed=1)
    created = fhir.create(document(inline(image, "image/png")))
    attachment = attachment_of(created)
    assert created["docStatus"] == "final"
    assert "data" not in attachment
    assert attachment["url"] == f"Binary/{created['id']}"
    assert (attachment["size"], attachment["hash"]) == (len(image), sha1_b64(image))
    sha256 = next(e["valueBase64Binary"] for e in attachment["extension"] if e["url"] == SHA256_EXTENSION)
    assert sha256 == sha256_b64(image)
    assert download(fhir, created["id"]).content == image


def test_inline_data_in_a_transaction_bundle(fhir: FhirClient, uid: str) -> None:
    # Given a transaction as the HL7 MDM^T02 mapping writes it: a patient and a document with data
    patient_url, doc_url = new_uuid(), new_uuid()
    pdf = minimal_pdf(f"MDM {uid}")
    entries = [
        post_entry({"resourceType": "Patient", "name": [{"family": f"Mdm{uid}"}]}, patient_url),
        post_entry(document(inline(pdf), patient=patient_url), doc_url),
    ]
    # When it is posted
    reply = fhir.transaction(entries)
    # Then the document is final, refers to the new patient, and serves the bytes
    assert reply.status == 200, reply
    doc_ref = location_ref(reply.json["entry"][1]["response"]["location"])
    stored = fhir.read(*doc_ref.split("/"))
    assert stored["docStatus"] == "final"
    assert stored["subject"]["reference"] == location_ref(reply.json["entry"][0]["response"]["location"])
    assert "data" not in attachment_of(stored)
    assert download(fhir, stored["id"]).content == pdf


def test_a_failed_transaction_leaves_no_document(fhir: FhirClient, system: str) -> None:
    # Given a transaction whose second entry is invalid
    doc = document(inline(minimal_pdf("rolled back")), identifier=[{"system": system, "value": "1"}])
    entries = [post_entry(doc), post_entry({"resourceType": "Observation", "status": "not-a-status"})]
    # Then it is refused and no DocumentReference exists
    assert fhir.transaction(entries).status == 400
    assert fhir.search_ids("DocumentReference", {"identifier": f"{system}|1"}) == []


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status", "code", "expression"),
    [
        ({"hash": None}, 400, "required", "hash"),
        ({"size": None}, 400, "required", "size"),
        ({"extension": None}, 400, "required", "extension"),
        ({"hash": "not base64!"}, 400, "value", "hash"),
        ({"size": 0}, 400, "invalid", "size"),
        ({"contentType": "text/html"}, 415, "not-supported", "contentType"),
        ({"contentType": None}, 400, "required", "contentType"),
        ({"size": 257 * 1024 * 1024}, 413, "too-long", "size"),
    ],
)
def test_bad_upload_metadata_is_refused_and_nothing_is_stored(
    fhir: FhirClient, system: str, change: dict[str, Any], status: int, code: str, expression: str
) -> None:
    doc = document(attachment_for(minimal_pdf(), **change), identifier=[{"system": system, "value": "1"}])
    reply = fhir.post("DocumentReference", json_body=doc)
    assert (reply.status, reply.codes) == (status, {code})
    assert reply.expressions == {f"DocumentReference.content[0].attachment.{expression}"}
    assert fhir.search_ids("DocumentReference", {"identifier": f"{system}|1"}) == []


@pytest.mark.parametrize(
    ("attachment", "status", "expression"),
    [
        ({**inline(b"%PDF-1.4 x"), "hash": sha1_b64(b"other")}, 400, "hash"),
        ({**inline(b"%PDF-1.4 x"), "size": 3}, 400, "size"),
        ({**inline(b"%PDF-1.4 x"), "data": "@@not base64@@"}, 400, "data"),
    ],
)
def test_bad_inline_data_is_refused(
    fhir: FhirClient, system: str, attachment: dict[str, Any], status: int, expression: str
) -> None:
    doc = document(attachment, identifier=[{"system": system, "value": "1"}])
    reply = fhir.post("DocumentReference", json_body=doc)
    assert reply.status == status, reply
    assert reply.expressions == {f"DocumentReference.content[0].attachment.{expression}"}
    assert fhir.search_ids("DocumentReference", {"identifier": f"{system}|1"}) == []


def test_inline_data_larger_than_the_request_limit_is_refused(fhir: FhirClient, system: str) -> None:
    # 5 MB of bytes is about 6.7 MB of base64: over Lambda's 6 MB request limit, so 413 at the door
    doc = document(inline(b"x" * (5 * 1024 * 1024 + 1)), identifier=[{"system": system, "value": "1"}])
    reply = fhir.post("DocumentReference", json_body=doc)
    assert (reply.status, reply.codes) == (413, {"too-long"})
    assert fhir.search_ids("DocumentReference", {"identifier": f"{system}|1"}) == []


def test_upload_url_of_an_unknown_or_external_document(fhir: FhirClient) -> None:
    unknown = fhir.post("DocumentReference/no-such-doc/$upload-url", body=b"", content_type=None)
    external = fhir.create(document({"contentType": "application/pdf", "url": "https://example.org/d.pdf"}))
    elsewhere = fhir.post(f"DocumentReference/{external['id']}/$upload-url", body=b"", content_type=None)
    assert (unknown.status, unknown.codes) == (404, {"not-found"})
    assert (elsewhere.status, elsewhere.codes) == (404, {"not-found"})


# -- immutability and replacement ------------------------------------------------------------------


def test_stored_content_never_changes_but_other_elements_may(fhir: FhirClient) -> None:
    created = fhir.create(document(inline(minimal_pdf("v1"))))
    # When another content is sent for it
    changed = {**created, "content": [{"attachment": inline(minimal_pdf("v2"))}]}
    refused = fhir.put(f"DocumentReference/{created['id']}", json_body=changed)
    # Then that is refused; a description change is fine and keeps the content and its state
    assert (refused.status, refused.codes) == (422, {"business-rule"})
    described = fhir.put(
        f"DocumentReference/{created['id']}",
        json_body={**created, "description": "Reviewed", "docStatus": "amended"},
    )
    assert described.status == 200, described
    assert described.json["docStatus"] == "final"
    assert attachment_of(described.json) == attachment_of(created)


def test_a_client_cannot_mark_unverified_content_final(fhir: FhirClient) -> None:
    pdf = minimal_pdf("unverified")
    created = fhir.create(document(attachment_for(pdf), docStatus="final"))
    assert created["docStatus"] == "preliminary"
    updated = fhir.put(f"DocumentReference/{created['id']}", json_body={**created, "docStatus": "final"})
    assert updated.json["docStatus"] == "preliminary"
    assert fhir.get(f"Binary/{created['id']}").status == 409


def test_a_new_version_is_a_new_document_that_replaces_the_old(fhir: FhirClient) -> None:
    first_bytes, second_bytes = minimal_pdf("version 1"), minimal_pdf("version 2")
    first = fhir.create(document(inline(first_bytes)))
    second = fhir.create(
        document(
            inline(second_bytes),
            relatesTo=[{"code": "replaces", "target": {"reference": f"DocumentReference/{first['id']}"}}],
        )
    )
    assert second["relatesTo"][0]["target"]["reference"] == f"DocumentReference/{first['id']}"
    # Both objects exist side by side; neither overwrote the other
    assert download(fhir, first["id"]).content == first_bytes
    assert download(fhir, second["id"]).content == second_bytes


# -- storage properties ----------------------------------------------------------------------------


def test_objects_are_sse_kms_under_the_tenant_prefix_with_the_tenant_in_the_context(
    fhir: FhirClient, platform: LocalPlatform
) -> None:
    assert platform.resources is not None
    pdf = minimal_pdf("kms")
    created = fhir.create(document(attachment_for(pdf)))
    ticket = upload_ticket(fhir, created["id"])
    # The upload is bound to SSE-KMS with the platform key and clinic-a's encryption context
    context = json.loads(base64.b64decode(ticket.headers["x-amz-server-side-encryption-context"]))
    assert context == {"tenant": "clinic-a"}
    assert ticket.headers["x-amz-server-side-encryption"] == "aws:kms"
    assert ticket.headers["x-amz-server-side-encryption-aws-kms-key-id"] == platform.resources.data_key_arn
    assert ticket.headers["x-amz-server-side-encryption-bucket-key-enabled"] == "true"
    assert ticket.put(pdf).status_code == 200
    # And the object sits under clinic-a/{id}/{sha256}, encrypted with that key, bucket key on
    key = f"clinic-a/{created['id']}/{base64.b64decode(sha256_b64(pdf)).hex()}"
    head = s3_client(platform).head_object(Bucket=platform.resources.documents_bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(platform.resources.data_key_arn.split("/")[-1])
    assert head["BucketKeyEnabled"] is True


def test_a_decrypt_under_another_tenants_context_fails(platform: LocalPlatform) -> None:
    # KMS binds ciphertext to its encryption context: clinic-a's data key is not clinic-b's
    assert platform.resources is not None
    kms = boto3.client("kms", region_name=platform.resources.region)
    blob = kms.encrypt(
        KeyId=platform.resources.data_key_arn, Plaintext=b"data key", EncryptionContext={"tenant": "clinic-a"}
    )["CiphertextBlob"]
    assert (
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant": "clinic-a"})["Plaintext"] == b"data key"
    )
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant": "clinic-b"})


def test_the_documents_bucket_is_versioned_and_kms_encrypted(platform: LocalPlatform) -> None:
    assert platform.resources is not None
    s3 = s3_client(platform)
    bucket = platform.resources.documents_bucket
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert rule["BucketKeyEnabled"] is True


# -- search ----------------------------------------------------------------------------------------


def test_documents_are_found_by_the_parameters_clinics_use(fhir: FhirClient, uid: str, system: str) -> None:
    encounter = fhir.create({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}})
    author = fhir.create({"resourceType": "Practitioner", "name": [{"family": f"Author{uid}"}]})
    patient = fhir.create({"resourceType": "Patient", "name": [{"family": f"Search{uid}"}]})
    created = fhir.create(
        document(
            inline(minimal_pdf(uid)),
            patient=f"Patient/{patient['id']}",
            type={"coding": [{"system": system, "code": "discharge"}]},
            category=[{"coding": [{"system": system, "code": "clinical-note"}]}],
            date="2024-05-06T07:08:09Z",
            author=[{"reference": f"Practitioner/{author['id']}"}],
            context={"encounter": [{"reference": f"Encounter/{encounter['id']}"}]},
        )
    )
    searches = {
        "patient": f"Patient/{patient['id']}",
        "subject": f"Patient/{patient['id']}",
        "encounter": f"Encounter/{encounter['id']}",
        "type": f"{system}|discharge",
        "category": f"{system}|clinical-note",
        "date": "2024-05-06",
        "author": f"Practitioner/{author['id']}",
        "status": "current",
    }
    for name, value in searches.items():
        params = {name: value} if name != "status" else {"status": value, "type": f"{system}|discharge"}
        assert fhir.search_ids("DocumentReference", params) == [created["id"]], name
    assert fhir.search_ids("DocumentReference", {"type": f"{system}|discharge", "status": "superseded"}) == []


def test_the_capability_statement_declares_upload_url(fhir: FhirClient) -> None:
    statement = fhir.get("metadata").json
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert [o["name"] for o in resources["DocumentReference"]["operation"]] == ["upload-url"]
    assert "read" in {i["code"] for i in resources["Binary"]["interaction"]}
