"""The audit archive: every audit record, as its FHIR AuditEvent, in an S3 bucket under Object Lock.

The audit table's DynamoDB stream (``NEW_IMAGE``) feeds ``AuditArchiver.archive`` one change at a
time (the Lambda handler runs it inside Powertools' ``BatchProcessor``, so a failed change is
reported alone and retried). A day item (``ehr.store.audit_dynamo``) becomes the object
``{tenant}/{yyyy}/{mm}/{dd}/{recorded}-{id}.json``; the per-patient copies are skipped.

The bucket keeps every version for ``ARCHIVE_RETENTION_DAYS`` in ``ARCHIVE_LOCK_MODE`` (COMPLIANCE:
nobody, not even the account root, can delete or shorten it). Archiving is idempotent: a retried
batch writes the same bytes to the same key, which only adds an identical, equally locked version.

The table is append-only by convention and IAM (``PutItem`` only), but ``PutItem`` can replace an
item when the caller leaves out the condition. A change that is not an ``INSERT`` therefore counts
as tampering: ``MODIFY`` and ``REMOVE`` are reported (metric ``AuditItemModified`` /
``AuditItemRemoved``, a warning with the keys), and a modified day item is archived as a new
version of its object — the original version stays locked beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from ehr.fhir import jsonio
from ehr.security.audit import AuditRecord
from ehr.security.audit_fhir import to_audit_event
from ehr.store.audit_dynamo import record_from_stream_image, recorded_key

if TYPE_CHECKING:
    from ehr.settings import AuditArchiverSettings

# One definition for the CDK bucket, the local emulator and the tests.
ARCHIVE_LOCK_MODE: Final = "COMPLIANCE"
ARCHIVE_RETENTION_DAYS: Final = 2192  # six years (HIPAA's documentation retention), leap days included
ARCHIVE_DEEP_ARCHIVE_AFTER_DAYS: Final = 90  # then S3 Glacier Deep Archive
CONTENT_TYPE: Final = "application/fhir+json"

ARCHIVED_METRIC: Final = "AuditEventArchived"
MODIFIED_METRIC: Final = "AuditItemModified"
REMOVED_METRIC: Final = "AuditItemRemoved"

log = logging.getLogger(__name__)


class ArchiveUnavailableError(Exception):
    """The archive refused or could not take an object; the change must be retried."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the audit archive did not store {key}")
        self.key = key


class AuditChangeError(ValueError):
    """A stream change that is not a readable audit item (malformed image)."""

    def __init__(self, sequence_number: str | None, reason: str) -> None:
        super().__init__(f"stream change {sequence_number}: {reason}")
        self.sequence_number = sequence_number


class ArchiveStore(Protocol):
    def put(self, key: str, body: bytes) -> None:
        """Store ``body`` under ``key`` (a new version if it exists) or raise ``ArchiveUnavailableError``."""
        ...


@dataclass
class InMemoryArchiveStore:
    """The fake beside the port: every version of every key; ``fail`` keys refuse writes."""

    versions: dict[str, list[bytes]] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)

    def put(self, key: str, body: bytes) -> None:
        if key in self.fail:
            raise ArchiveUnavailableError(key)
        self.versions.setdefault(key, []).append(body)


class S3ArchiveStore:
    """``ArchiveStore`` on the Object Lock bucket. Encryption (SSE-KMS, bucket key) and the default
    retention come from the bucket's configuration; the SHA-256 checksum is what S3 requires of a
    write into a bucket with Object Lock."""

    def __init__(self, bucket: str, *, client: Any | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.bucket = bucket
        self._client = client

    def put(self, key: str, body: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=CONTENT_TYPE, ChecksumAlgorithm="SHA256"
            )
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveUnavailableError(key) from exc


def archive_key(record: AuditRecord) -> str:
    """``{tenant}/{yyyy}/{mm}/{dd}/{recorded}-{id}.json`` with ``recorded`` in UTC, microseconds."""
    instant = recorded_key(record.recorded)
    return f"{record.tenant}/{instant[:4]}/{instant[5:7]}/{instant[8:10]}/{instant}-{record.id}.json"


def archive_body(record: AuditRecord) -> bytes:
    """The archived object: the record's AuditEvent, compact JSON (the same bytes every time)."""
    return jsonio.dumps(to_audit_event(record)).encode("utf-8")


class AuditArchiver:
    """Copies audit day items from the table's stream into the archive."""

    def __init__(self, store: ArchiveStore, *, observe: Callable[[str], None] | None = None) -> None:
        self.store = store
        self._observe = observe or (lambda _name: None)

    def archive(self, change: Mapping[str, Any]) -> str | None:
        """Archive one stream change (a record of the Lambda event's ``Records``).

        Returns the key written, or ``None`` when the change holds nothing to archive (a patient
        copy, a removal). Raises ``ArchiveUnavailableError`` or ``AuditChangeError`` to have the
        change retried (and, after the retries, sent to the dead-letter queue).
        """
        event_name = change.get("eventName")
        data = change.get("dynamodb") or {}
        sequence = data.get("SequenceNumber")
        keys = data.get("Keys") or {}
        if event_name == "REMOVE":
            self._tampered(REMOVED_METRIC, event_name, keys, sequence)
            return None
        image = data.get("NewImage")
        if event_name not in ("INSERT", "MODIFY") or not isinstance(image, Mapping):
            raise AuditChangeError(sequence, f"no new image in a {event_name} change")
        try:
            record = record_from_stream_image(image)
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditChangeError(sequence, "the image is not an audit item") from exc
        if event_name == "MODIFY":
            self._tampered(MODIFIED_METRIC, event_name, keys, sequence)
        if record is None:
            return None  # a patient copy: the day item carries the same record
        key = archive_key(record)
        self.store.put(key, archive_body(record))
        self._observe(ARCHIVED_METRIC)
        return key

    def _tampered(self, metric: str, event_name: str, keys: Mapping[str, Any], sequence: str | None) -> None:
        self._observe(metric)
        # Keys are identifiers only (tenant, day or patient id, instant, record id).
        log.warning(
            "audit item changed after it was written",
            extra={"event_name": event_name, "keys": dict(keys), "sequence_number": sequence},
        )


def build_archiver(
    settings: AuditArchiverSettings, *, observe: Callable[[str], None] | None = None, **overrides: Any
) -> AuditArchiver:
    """The archiver from validated settings; tests pass ``store=`` a fake."""
    store: ArchiveStore = overrides.get("store") or S3ArchiveStore(settings.archive_bucket)
    return AuditArchiver(store, observe=observe)
