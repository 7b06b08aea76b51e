"""The document store port: where attachment bytes live, independent of S3.

Objects are addressed by ``ObjectLocation`` (tenant, DocumentReference id, SHA-256): the key
``{tenant}/{id}/{sha256 hex}`` names exactly one content, so an object is never overwritten with
other bytes, and a URL handed out for one key cannot reach another.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from ehr.security.identity import TENANT_ID

_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")


class DocumentStoreError(Exception):
    """The store could not take or give an object (a transient failure: retry)."""


class ObjectExistsError(DocumentStoreError):
    """An object already exists under the key; objects are never overwritten."""

    def __init__(self, key: str) -> None:
        super().__init__(f"an object already exists under {key}")
        self.key = key


@dataclass(frozen=True)
class ObjectLocation:
    """Where one attachment's bytes live: ``{tenant}/{document id}/{sha256 hex}``."""

    tenant: str
    document_id: str
    sha256_hex: str

    def __post_init__(self) -> None:
        if not (
            TENANT_ID.match(self.tenant)
            and _ID.match(self.document_id)
            and _SHA256_HEX.match(self.sha256_hex)
        ):
            raise ValueError("not a document object location")

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.document_id}/{self.sha256_hex}"

    @classmethod
    def from_key(cls, key: str) -> ObjectLocation:
        """Parse an object key; ``ValueError`` when it is not one this platform writes."""
        parts = key.split("/")
        if len(parts) != 3:
            raise ValueError("not a document object key")
        return cls(parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class PresignedRequest:
    """A request a client may make once, directly to the object store, until ``expires``."""

    url: str
    method: str
    headers: dict[str, str]
    expires: float  # epoch seconds


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    version_id: str | None = None


class DocumentStore(Protocol):
    def put(self, location: ObjectLocation, data: bytes, *, content_type: str, sha256_b64: str) -> str | None:
        """Store ``data`` (never over an existing object: ``ObjectExistsError``); the version id."""
        ...

    def upload_request(
        self, location: ObjectLocation, *, content_type: str, size: int, sha256_b64: str, seconds: int
    ) -> PresignedRequest:
        """A presigned PUT bound to the key, the size, the content type, the SHA-256 and the tenant's
        encryption context, refused when the key already holds an object."""
        ...

    def download_url(
        self, location: ObjectLocation, *, content_type: str, filename: str, seconds: int
    ) -> PresignedRequest:
        """A presigned GET of that one object, served as an attachment of ``content_type``."""
        ...

    def head(self, location: ObjectLocation) -> ObjectInfo | None: ...

    def read(self, location: ObjectLocation, *, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The object's bytes in chunks (``DocumentStoreError`` when it is missing)."""
        ...


@dataclass
class InMemoryDocumentStore:
    """The fake beside the port: objects by key; its "URLs" are ``memory://`` and carry the binding."""

    objects: dict[str, bytes] = field(default_factory=dict)
    content_types: dict[str, str] = field(default_factory=dict)
    clock: object = time.time

    def put(self, location: ObjectLocation, data: bytes, *, content_type: str, sha256_b64: str) -> str | None:
        if location.key in self.objects:
            raise ObjectExistsError(location.key)
        self.objects[location.key] = bytes(data)
        self.content_types[location.key] = content_type
        return "1"

    def upload_request(
        self, location: ObjectLocation, *, content_type: str, size: int, sha256_b64: str, seconds: int
    ) -> PresignedRequest:
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(size),
            "x-amz-checksum-sha256": sha256_b64,
            "If-None-Match": "*",
        }
        return PresignedRequest(f"memory://{location.key}", "PUT", headers, self._now() + seconds)

    def download_url(
        self, location: ObjectLocation, *, content_type: str, filename: str, seconds: int
    ) -> PresignedRequest:
        return PresignedRequest(f"memory://{location.key}", "GET", {}, self._now() + seconds)

    def head(self, location: ObjectLocation) -> ObjectInfo | None:
        data = self.objects.get(location.key)
        return None if data is None else ObjectInfo(size=len(data), version_id="1")

    def read(self, location: ObjectLocation, *, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        data = self.objects.get(location.key)
        if data is None:
            raise DocumentStoreError(f"no object under {location.key}")
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    def _now(self) -> float:
        clock = self.clock
        assert callable(clock)
        return float(clock())
