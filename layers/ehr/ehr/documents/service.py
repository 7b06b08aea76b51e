"""What the platform does with DocumentReference attachments.

A DocumentReference has at most one *stored* attachment (the platform keeps its bytes); other
attachments with an absolute URL somewhere else are left alone. A stored attachment's ``url`` is
``Binary/{id}`` (the DocumentReference's id, relative to the tenant's FHIR base), and the server
owns its ``contentType``, ``size``, ``hash`` (SHA-1, base64, as FHIR R4 defines it), the SHA-256
extension, and ``docStatus`` while the bytes are unverified:

- attachment metadata without ``url`` or ``data`` (contentType, size, hash, SHA-256, title):
  ``docStatus`` ``preliminary``; ``$upload-url`` hands out a presigned PUT; when the object lands
  ``ehr.documents.verify`` checks it and sets ``final`` (or ``status`` ``entered-in-error``);
- inline ``data`` (up to ``MAX_INLINE_BYTES``, also inside transaction Bundles): the bytes are
  checked against whatever size and hashes were given, stored, and replaced by the URL: ``final``;
- once stored, the content never changes: a new content is a new DocumentReference whose
  ``relatesTo`` ``replaces`` this one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Final

from ehr.documents.ports import DocumentStore, DocumentStoreError, ObjectExistsError, ObjectLocation
from ehr.fhir.outcome import Issue, OperationOutcomeError, invalid
from ehr.store.ports import StoredResource

MAX_INLINE_BYTES: Final = 5 * 1024 * 1024
MAX_UPLOAD_BYTES: Final = 256 * 1024 * 1024
INLINE_LIMIT: Final = "Inline data (larger documents use $upload-url)"
UPLOAD_URL_SECONDS: Final = 600
DOWNLOAD_URL_SECONDS: Final = 300
SHA256_EXTENSION: Final = "urn:ehr:fhir:StructureDefinition:attachment-sha256"
VERIFICATION_EXTENSION: Final = "urn:ehr:fhir:StructureDefinition:upload-verification"
UPLOAD_URL_OPERATION: Final = "$upload-url"
# What may be stored and served: documents and images, never active content (HTML, SVG, scripts).
CONTENT_TYPES: Final = frozenset(
    {
        "application/pdf",
        "image/png",
        "image/jpeg",
        "image/tiff",
        "image/gif",
        "text/plain",
        "text/rtf",
        "application/rtf",
        "application/xml",
        "text/xml",
        "application/dicom",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    }
)
PRELIMINARY: Final = "preliminary"
FINAL: Final = "final"
ENTERED_IN_ERROR: Final = "entered-in-error"
VERIFIED_INLINE: Final = "verified-inline"
VERIFIED_UPLOAD: Final = "verified-upload"
MISMATCH: Final = "mismatch"  # verification outcomes "mismatch: size, sha-1" start with this

_CONTENT_URL: Final = re.compile(r"^(?:.*/)?Binary/([A-Za-z0-9\-.]{1,64})$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Declared:
    """What a stored attachment says about its bytes."""

    content_type: str
    size: int
    sha1_b64: str
    sha256_b64: str

    @property
    def sha256_hex(self) -> str:
        return base64.b64decode(self.sha256_b64).hex()


def content_url(document_id: str) -> str:
    return f"Binary/{document_id}"


def stored_attachment(body: dict[str, Any] | None) -> tuple[int, dict[str, Any]] | None:
    """The index and attachment of a DocumentReference's stored content, if it has one."""
    if not body or body.get("resourceType") != "DocumentReference":
        return None
    for n, entry in enumerate(body.get("content") or []):
        attachment = entry.get("attachment") if isinstance(entry, dict) else None
        if isinstance(attachment, dict) and is_content_url(attachment.get("url"), str(body.get("id", ""))):
            return n, attachment
    return None


def is_content_url(url: Any, document_id: str) -> bool:
    if not isinstance(url, str):
        return False
    match = _CONTENT_URL.match(url)
    return match is not None and match.group(1) == document_id


def extension_value(attachment: dict[str, Any], url: str) -> Any:
    for extension in attachment.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == url:
            return extension.get("valueBase64Binary", extension.get("valueString"))
    return None


def declared(attachment: dict[str, Any]) -> Declared:
    """The stored attachment's declaration (as the server wrote it)."""
    return Declared(
        content_type=str(attachment["contentType"]),
        size=int(attachment["size"]),
        sha1_b64=str(attachment["hash"]),
        sha256_b64=str(extension_value(attachment, SHA256_EXTENSION)),
    )


def location_of(tenant: str, stored: StoredResource) -> tuple[ObjectLocation, Declared, dict[str, Any]]:
    found = stored_attachment(stored.body)
    if found is None:
        raise not_stored(stored.id)
    attachment = found[1]
    facts = declared(attachment)
    return ObjectLocation(tenant, stored.id, facts.sha256_hex), facts, attachment


def not_stored(document_id: str) -> OperationOutcomeError:
    return OperationOutcomeError(
        status=404,
        issues=(
            Issue(
                code="not-found",
                diagnostics=f"DocumentReference/{document_id} has no content stored by this server.",
            ),
        ),
    )


def _conflict(message: str) -> OperationOutcomeError:
    return OperationOutcomeError(status=409, issues=(Issue(code="conflict", diagnostics=message),))


def _immutable(where: str) -> OperationOutcomeError:
    return OperationOutcomeError(
        status=422,
        issues=(
            Issue(
                code="business-rule",
                diagnostics="The stored content of a DocumentReference never changes; a new content "
                "is a new DocumentReference whose relatesTo (code replaces) names this one.",
                expression=(where,),
            ),
        ),
    )


def _b64(value: Any, length: int, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"{what} is required (base64).", expression=[where], code="required")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"{what} is not base64.", expression=[where]) from exc
    if len(raw) != length:
        raise invalid(f"{what} must be {length} bytes (base64 of the digest).", expression=[where])
    return base64.b64encode(raw).decode("ascii")


def _content_type(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid("contentType is required.", expression=[where], code="required")
    media = value.split(";")[0].strip().lower()
    if media not in CONTENT_TYPES:
        raise OperationOutcomeError(
            status=415,
            issues=(
                Issue(
                    code="not-supported",
                    diagnostics=f"Content type {media[:60]!r} is not stored; accepted: "
                    + ", ".join(sorted(CONTENT_TYPES)),
                    expression=(where,),
                ),
            ),
        )
    return media


def _too_large(limit: int, where: str, how: str) -> OperationOutcomeError:
    return OperationOutcomeError(
        status=413,
        issues=(
            Issue(
                code="too-long",
                diagnostics=f"{how} is limited to {limit // (1024 * 1024)} MB.",
                expression=(where,),
            ),
        ),
    )


def with_extension(attachment: dict[str, Any], url: str, **value: Any) -> None:
    kept = [e for e in attachment.get("extension") or [] if not (isinstance(e, dict) and e.get("url") == url)]
    attachment["extension"] = [*kept, {"url": url, **value}]


class DocumentService:
    """The write hook, ``$upload-url`` and downloads, on a ``DocumentStore``."""

    def __init__(
        self,
        store: DocumentStore,
        *,
        upload_seconds: int = UPLOAD_URL_SECONDS,
        download_seconds: int = DOWNLOAD_URL_SECONDS,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
    ) -> None:
        self.store = store
        self.upload_seconds = upload_seconds
        self.download_seconds = download_seconds
        self.max_upload_bytes = max_upload_bytes

    # -- the write hook ----------------------------------------------------------------------------

    def prepare_write(
        self, tenant: str, resource_id: str, body: dict[str, Any], previous: StoredResource | None
    ) -> dict[str, Any]:
        """The DocumentReference as it will be stored; inline bytes are stored on the way."""
        before = stored_attachment(previous.body) if previous is not None and not previous.deleted else None
        contents = body.get("content")
        if not isinstance(contents, list):
            return body
        body = {**body, "content": [dict(c) if isinstance(c, dict) else c for c in contents]}
        managed: int | None = None
        for n, entry in enumerate(body["content"]):
            attachment = entry.get("attachment") if isinstance(entry, dict) else None
            if not isinstance(attachment, dict):
                continue
            where = f"DocumentReference.content[{n}].attachment"
            url = attachment.get("url")
            is_ours = "data" in attachment or url is None or is_content_url(url, resource_id)
            if not is_ours and isinstance(url, str) and _CONTENT_URL.match(url) and ":" not in url:
                raise invalid(
                    "Binary/{id} URLs are set by the server for this DocumentReference's own content.",
                    expression=[f"{where}.url"],
                )
            if not is_ours:
                continue  # a document kept elsewhere: only its URL is recorded
            if managed is not None:
                raise invalid(
                    "A DocumentReference stores one attachment; send several DocumentReferences.",
                    expression=[where],
                )
            managed = n
            if before is not None:
                entry["attachment"] = self._unchanged(before[1], attachment, where)
            elif "data" in attachment:
                entry["attachment"] = self._store_inline(tenant, resource_id, attachment, where)
            elif url is None:
                entry["attachment"] = self._declare_upload(resource_id, attachment, where)
            else:
                raise invalid(
                    "Binary/{id} URLs are set by the server; send the attachment's metadata or data.",
                    expression=[f"{where}.url"],
                )
        if before is not None and managed is None:
            raise _immutable("DocumentReference.content")
        if managed is None:
            return body
        attachment = body["content"][managed]["attachment"]
        if before is not None:
            # Verification decides these; a client cannot mark unverified bytes final or clear a failure.
            assert previous is not None and previous.body is not None
            for name in ("docStatus",):
                if name in previous.body:
                    body[name] = previous.body[name]
            outcome = str(extension_value(before[1], VERIFICATION_EXTENSION) or "")
            if previous.body.get("status") == ENTERED_IN_ERROR and outcome.startswith(MISMATCH):
                body["status"] = ENTERED_IN_ERROR
        else:
            body["docStatus"] = FINAL if self._inline_done(attachment) else PRELIMINARY
        return body

    @staticmethod
    def _inline_done(attachment: dict[str, Any]) -> bool:
        return bool(extension_value(attachment, VERIFICATION_EXTENSION) == VERIFIED_INLINE)

    def _unchanged(self, before: dict[str, Any], sent: dict[str, Any], where: str) -> dict[str, Any]:
        if "data" in sent:
            # A resend of the same bytes (a retried transaction, a corrected HL7 result that
            # repeats its report form) leaves the stored content as it is; other bytes are refused.
            if not _same_bytes(sent.get("data"), before):
                raise _immutable(f"{where}.data")
            sent = {k: v for k, v in sent.items() if k != "data"}
        for name in ("contentType", "size", "hash"):
            if name in sent and sent[name] != before.get(name):
                raise _immutable(f"{where}.{name}")
        sha256 = extension_value(sent, SHA256_EXTENSION)
        if sha256 is not None and sha256 != extension_value(before, SHA256_EXTENSION):
            raise _immutable(f"{where}.extension")
        kept = dict(sent)
        for name in ("url", "contentType", "size", "hash", "extension"):
            if name in before:
                kept[name] = before[name]
        return kept

    def _declare_upload(self, resource_id: str, attachment: dict[str, Any], where: str) -> dict[str, Any]:
        content_type = _content_type(attachment.get("contentType"), f"{where}.contentType")
        size = attachment.get("size")
        if size is None:
            raise invalid("size is required (bytes).", expression=[f"{where}.size"], code="required")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise invalid("size is a whole number of bytes above 0.", expression=[f"{where}.size"])
        if size > self.max_upload_bytes:
            raise _too_large(self.max_upload_bytes, f"{where}.size", "An uploaded document")
        sha1 = _b64(attachment.get("hash"), 20, f"{where}.hash", "hash (SHA-1)")
        sha256 = _b64(
            extension_value(attachment, SHA256_EXTENSION), 32, f"{where}.extension", "The SHA-256 extension"
        )
        declared_attachment = {**attachment, "contentType": content_type, "hash": sha1}
        declared_attachment["url"] = content_url(resource_id)
        with_extension(declared_attachment, SHA256_EXTENSION, valueBase64Binary=sha256)
        return declared_attachment

    def _store_inline(
        self, tenant: str, resource_id: str, attachment: dict[str, Any], where: str
    ) -> dict[str, Any]:
        content_type = _content_type(attachment.get("contentType"), f"{where}.contentType")
        data = attachment.get("data")
        if not isinstance(data, str):
            raise invalid("data is base64 text.", expression=[f"{where}.data"])
        if len(data) > (MAX_INLINE_BYTES * 4) // 3 + 8:
            raise _too_large(MAX_INLINE_BYTES, f"{where}.data", INLINE_LIMIT)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid("data is not base64.", expression=[f"{where}.data"]) from exc
        if not raw:
            raise invalid("data is empty.", expression=[f"{where}.data"])
        if len(raw) > MAX_INLINE_BYTES:
            raise _too_large(MAX_INLINE_BYTES, f"{where}.data", INLINE_LIMIT)
        sha1 = base64.b64encode(hashlib.sha1(raw, usedforsecurity=False).digest()).decode("ascii")
        sha256_digest = hashlib.sha256(raw).digest()
        sha256 = base64.b64encode(sha256_digest).decode("ascii")
        if "size" in attachment and attachment["size"] != len(raw):
            raise invalid(
                f"size says {attachment['size']!r} bytes; data has {len(raw)}.", expression=[f"{where}.size"]
            )
        if "hash" in attachment and attachment["hash"] != sha1:
            raise invalid("hash is not the SHA-1 of data.", expression=[f"{where}.hash"])
        given = extension_value(attachment, SHA256_EXTENSION)
        if given is not None and given != sha256:
            raise invalid(
                "The SHA-256 extension is not the SHA-256 of data.", expression=[f"{where}.extension"]
            )
        location = ObjectLocation(tenant, resource_id, sha256_digest.hex())
        try:
            self.store.put(location, raw, content_type=content_type, sha256_b64=sha256)
        except ObjectExistsError:
            pass  # the same bytes under the same id: a retry of this very write
        except DocumentStoreError as exc:
            raise OperationOutcomeError(
                status=503,
                issues=(Issue(code="transient", diagnostics="The document store is unavailable; retry."),),
                headers={"Retry-After": "5"},
            ) from exc
        stored = {k: v for k, v in attachment.items() if k != "data"}
        stored.update(contentType=content_type, size=len(raw), hash=sha1, url=content_url(resource_id))
        with_extension(stored, SHA256_EXTENSION, valueBase64Binary=sha256)
        with_extension(stored, VERIFICATION_EXTENSION, valueString=VERIFIED_INLINE)
        return stored

    # -- $upload-url and downloads -----------------------------------------------------------------

    def upload_parameters(self, tenant: str, stored: StoredResource) -> dict[str, Any]:
        """A FHIR Parameters resource with a presigned PUT for the declared content."""
        location, facts, _ = location_of(tenant, stored)
        body = stored.body or {}
        if body.get("status") == ENTERED_IN_ERROR:
            raise _conflict(f"DocumentReference/{stored.id} is entered-in-error; it takes no upload.")
        if body.get("docStatus") != PRELIMINARY:
            raise _conflict(f"DocumentReference/{stored.id} already has its content; nothing to upload.")
        try:
            if self.store.head(location) is not None:
                raise _conflict(
                    f"The content of DocumentReference/{stored.id} has been uploaded and is being verified."
                )
            request = self.store.upload_request(
                location,
                content_type=facts.content_type,
                size=facts.size,
                sha256_b64=facts.sha256_b64,
                seconds=self.upload_seconds,
            )
        except DocumentStoreError as exc:
            raise OperationOutcomeError(
                status=503,
                issues=(Issue(code="transient", diagnostics="The document store is unavailable; retry."),),
                headers={"Retry-After": "5"},
            ) from exc
        return {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "url", "valueUrl": request.url},
                {"name": "method", "valueCode": request.method},
                *(
                    {
                        "name": "header",
                        "part": [
                            {"name": "name", "valueString": name},
                            {"name": "value", "valueString": value},
                        ],
                    }
                    for name, value in request.headers.items()
                ),
                {"name": "expires", "valueInstant": _instant(request.expires)},
            ],
        }

    def download_url(self, tenant: str, stored: StoredResource) -> str:
        """A presigned GET of the verified content (409 while it is not verified)."""
        location, facts, _ = location_of(tenant, stored)
        body = stored.body or {}
        if body.get("status") == ENTERED_IN_ERROR:
            raise _conflict(f"DocumentReference/{stored.id} is entered-in-error; its content is not served.")
        if body.get("docStatus") != FINAL:
            raise _conflict(
                f"The content of DocumentReference/{stored.id} has not been uploaded and verified yet."
            )
        extension = {"application/pdf": "pdf", "image/png": "png", "image/jpeg": "jpg"}.get(
            facts.content_type, "bin"
        )
        request = self.store.download_url(
            location,
            content_type=facts.content_type,
            filename=f"{stored.id}.{extension}",
            seconds=self.download_seconds,
        )
        return request.url


def _same_bytes(data: Any, before: dict[str, Any]) -> bool:
    if not isinstance(data, str) or not isinstance(before.get("hash"), str):
        return False
    try:
        raw = base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        return False
    sha1 = base64.b64encode(hashlib.sha1(raw).digest()).decode("ascii")  # noqa: S324 - FHIR R4 Attachment.hash
    return bool(sha1 == before["hash"] and len(raw) == before.get("size", len(raw)))


def _instant(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
