"""Verification of an uploaded object: the one check that runs when bytes land in the bucket.

In AWS an S3 "Object Created" event (EventBridge) invokes the ``document_verifier`` function; in
local mode the emulated S3 dispatches the same function with the same event after a PUT
(``infra/local/s3_server.py``). Both end here: the object's key names the tenant, the
DocumentReference and the SHA-256 it must have; the object is read once, its size, SHA-1 and
SHA-256 compared with what the DocumentReference declared, and the DocumentReference updated:
``docStatus`` ``final``, or ``status`` ``entered-in-error`` with the reason in an extension (the
bytes stay, for review). Running twice changes nothing the second time.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from ehr.documents.ports import DocumentStore, ObjectLocation
from ehr.documents.service import (
    ENTERED_IN_ERROR,
    FINAL,
    MISMATCH,
    PRELIMINARY,
    VERIFICATION_EXTENSION,
    VERIFIED_UPLOAD,
    declared,
    stored_attachment,
    with_extension,
)
from ehr.fhir.service import FhirService
from ehr.security.audit import AuditRecord, AuditSink
from ehr.store.ports import ConflictError

VERIFIER_CLIENT: Final = "document_verifier"
ATTEMPTS: Final = 3
log = logging.getLogger(__name__)

Result = Literal["final", "entered-in-error", "unchanged", "not-a-document"]


@dataclass(frozen=True)
class Verification:
    result: Result
    reference: str | None = None


def object_keys(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(bucket, key) of every object an S3 event names: EventBridge "Object Created" or S3 notification."""
    detail = event.get("detail")
    if isinstance(detail, Mapping):
        bucket = (detail.get("bucket") or {}).get("name")
        key = (detail.get("object") or {}).get("key")
        return [(str(bucket), str(key))] if bucket and key else []
    found = []
    for record in event.get("Records") or []:
        s3 = record.get("s3") or {}
        bucket, key = (s3.get("bucket") or {}).get("name"), (s3.get("object") or {}).get("key")
        if bucket and key:
            from urllib.parse import unquote_plus

            found.append((str(bucket), unquote_plus(str(key))))
    return found


class UploadVerifier:
    def __init__(
        self,
        fhir: FhirService,
        documents: DocumentStore,
        *,
        audit: AuditSink | None = None,
        clock: Callable[[], str] | None = None,
    ) -> None:
        # ``fhir`` has no document hook: the verifier is the one writer of docStatus after an upload.
        self.fhir = fhir
        self.documents = documents
        self.audit = audit
        self.clock = clock or (lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z")

    def verify_key(self, key: str) -> Verification:
        try:
            location = ObjectLocation.from_key(key)
        except ValueError:
            # Expected for the HL7 v2 message archive ({tenant}/_hl7v2/...) in the same bucket.
            level = logging.DEBUG if "/_hl7v2/" in key else logging.WARNING
            log.log(level, "object key is not a document location")
            return Verification("not-a-document")
        for _ in range(ATTEMPTS):
            try:
                return self._verify(location)
            except ConflictError:
                continue  # the DocumentReference changed meanwhile: read it again
        raise RuntimeError(f"DocumentReference/{location.document_id} kept changing during verification")

    def _verify(self, location: ObjectLocation) -> Verification:
        reference = f"DocumentReference/{location.document_id}"
        current = self.fhir.store.current(location.tenant, "DocumentReference", location.document_id)
        found = stored_attachment(current.body if current is not None and not current.deleted else None)
        if current is None or current.body is None or found is None:
            # Bytes whose DocumentReference was never committed (or was deleted): never served.
            log.warning("object without a DocumentReference", extra={"tenant": location.tenant})
            return Verification("not-a-document", reference)
        index, attachment = found
        facts = declared(attachment)
        if facts.sha256_hex != location.sha256_hex:
            log.warning("object the DocumentReference does not declare", extra={"tenant": location.tenant})
            return Verification("not-a-document", reference)
        if current.body.get("docStatus") != PRELIMINARY or current.body.get("status") == ENTERED_IN_ERROR:
            return Verification("unchanged", reference)
        size, sha1, sha256 = 0, hashlib.sha1(usedforsecurity=False), hashlib.sha256()
        for chunk in self.documents.read(location):
            size += len(chunk)
            sha1.update(chunk)
            sha256.update(chunk)
        problems = []
        if size != facts.size:
            problems.append("size")
        if sha1.digest().hex() != _hex(facts.sha1_b64):
            problems.append("sha-1")
        if sha256.hexdigest() != location.sha256_hex:
            problems.append("sha-256")
        body = dict(current.body)
        body["content"] = [dict(c) for c in body["content"]]
        checked = dict(attachment)
        if problems:
            body["status"] = ENTERED_IN_ERROR
            with_extension(checked, VERIFICATION_EXTENSION, valueString=f"{MISMATCH}: {', '.join(problems)}")
        else:
            body["docStatus"] = FINAL
            with_extension(checked, VERIFICATION_EXTENSION, valueString=VERIFIED_UPLOAD)
        body["content"][index]["attachment"] = checked
        write = self.fhir.prepare(location.tenant, "DocumentReference", location.document_id, body, current)
        self.fhir.store.commit(location.tenant, [write])
        result: Result = "entered-in-error" if problems else "final"
        log.info("document verified", extra={"tenant": location.tenant, "result": result})
        self._record(location.tenant, reference, sorted(write.compartments))
        return Verification(result, reference)

    def _record(self, tenant: str, reference: str, patients: list[str]) -> None:
        if self.audit is None:
            return
        self.audit.record(
            AuditRecord(
                id=str(uuid.uuid4()),
                tenant=tenant,
                recorded=self.clock(),
                action="U",
                subtype="update",
                outcome="0",
                status=200,
                client_id=VERIFIER_CLIENT,
                entities=(reference,),
                patients=tuple(patients),
                resource_type="DocumentReference",
            )
        )


def _hex(b64: str) -> str:
    import base64

    return base64.b64decode(b64).hex()
