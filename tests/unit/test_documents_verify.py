"""The document rules and the verifier on the in-memory fakes (no network)."""

from __future__ import annotations

import base64
import hashlib

from ehr.documents.ports import InMemoryDocumentStore, ObjectLocation
from ehr.documents.service import SHA256_EXTENSION, VERIFICATION_EXTENSION, DocumentService
from ehr.documents.verify import UploadVerifier
from ehr.fhir.service import FhirService
from ehr.security.audit import InMemoryAuditSink
from ehr.store.memory import InMemoryRecordStore

TENANT = "clinic-a"


def b64(data: bytes, algorithm: str) -> str:
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


def setup() -> tuple[FhirService, UploadVerifier, InMemoryDocumentStore, InMemoryAuditSink]:
    records, objects, audit = InMemoryRecordStore(), InMemoryDocumentStore(), InMemoryAuditSink()
    api = FhirService(records, documents=DocumentService(objects))
    return api, UploadVerifier(FhirService(records), objects, audit=audit), objects, audit


def declare(api: FhirService, data: bytes, *, size: int | None = None) -> str:
    attachment = {
        "contentType": "text/plain",
        "size": size if size is not None else len(data),
        "hash": b64(data, "sha1"),
        "extension": [{"url": SHA256_EXTENSION, "valueBase64Binary": b64(data, "sha256")}],
    }
    doc = {"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": attachment}]}
    stored = api.create(TENANT, "DocumentReference", doc).stored
    assert stored is not None and stored.body is not None and stored.body["docStatus"] == "preliminary"
    return stored.id


def test_matching_bytes_make_the_document_final_once_and_are_audited() -> None:
    api, verifier, objects, audit = setup()
    data = b"clinical note"
    doc_id = declare(api, data)
    location = ObjectLocation(TENANT, doc_id, hashlib.sha256(data).hexdigest())
    objects.put(location, data, content_type="text/plain", sha256_b64=b64(data, "sha256"))
    assert verifier.verify_key(location.key).result == "final"
    assert verifier.verify_key(location.key).result == "unchanged"  # an event delivered twice
    stored = api.read(TENANT, "DocumentReference", doc_id)
    assert stored.body is not None and stored.body["docStatus"] == "final" and stored.version == 2
    assert [r.entities for r in audit.records] == [(f"DocumentReference/{doc_id}",)]


def test_a_size_mismatch_is_entered_in_error_and_keeps_the_bytes() -> None:
    api, verifier, objects, _ = setup()
    data = b"clinical note"
    doc_id = declare(api, data, size=len(data) + 1)
    location = ObjectLocation(TENANT, doc_id, hashlib.sha256(data).hexdigest())
    objects.put(location, data, content_type="text/plain", sha256_b64=b64(data, "sha256"))
    assert verifier.verify_key(location.key).result == "entered-in-error"
    body = api.read(TENANT, "DocumentReference", doc_id).body
    assert body is not None and body["status"] == "entered-in-error"
    outcome = {e["url"]: e.get("valueString") for e in body["content"][0]["attachment"]["extension"]}
    assert outcome[VERIFICATION_EXTENSION] == "mismatch: size"
    assert objects.objects[location.key] == data


def test_objects_no_document_declares_are_ignored() -> None:
    _, verifier, _, audit = setup()
    assert verifier.verify_key(f"{TENANT}/unknown-id/{'0' * 64}").result == "not-a-document"
    assert verifier.verify_key(f"{TENANT}/_hl7v2/message.er7").result == "not-a-document"
    assert audit.records == []
