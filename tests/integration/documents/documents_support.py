"""What the document tests share: real small files (a PDF and a PNG built here), DocumentReference
builders, and a client for presigned URLs (plain HTTP to the local S3 server, as curl would)."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import requests

from ehr.documents.service import SHA256_EXTENSION

FHIR = "application/fhir+json"


def minimal_pdf(text: str = "Discharge summary (test)") -> bytes:
    """A valid one-page PDF 1.4 whose xref offsets are computed, not guessed."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def png(width: int = 8, height: int = 8, seed: int = 0) -> bytes:
    """A valid RGB PNG (signature, IHDR, zlib IDAT, IEND, CRCs) with a small gradient."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + bytes((x * 32 + seed) % 256 for x in range(width) for _ in range(3)) for _ in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def attachment_for(data: bytes, content_type: str = "application/pdf", **overrides: Any) -> dict[str, Any]:
    """Upload metadata for ``data``: contentType, size, SHA-1 hash, SHA-256 extension, title."""
    attachment: dict[str, Any] = {
        "contentType": content_type,
        "size": len(data),
        "hash": sha1_b64(data),
        "title": "test document",
        "extension": [{"url": SHA256_EXTENSION, "valueBase64Binary": sha256_b64(data)}],
    }
    attachment.update(overrides)
    return {k: v for k, v in attachment.items() if v is not None}


def document(
    attachment: dict[str, Any], *, patient: str = "Patient/doc-subject", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": patient},
        "content": [{"attachment": attachment}],
        **extra,
    }


def inline(data: bytes, content_type: str = "application/pdf") -> dict[str, Any]:
    return {"contentType": content_type, "data": base64.b64encode(data).decode(), "title": "inline document"}


@dataclass
class UploadTicket:
    url: str
    method: str
    headers: dict[str, str]
    expires: str

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any]) -> UploadTicket:
        assert parameters["resourceType"] == "Parameters", parameters
        values = {p["name"]: p for p in parameters["parameter"]}
        headers = {
            p["part"][0]["valueString"]: p["part"][1]["valueString"]
            for p in parameters["parameter"]
            if p["name"] == "header"
        }
        return cls(
            values["url"]["valueUrl"],
            values["method"]["valueCode"],
            headers,
            values["expires"]["valueInstant"],
        )

    def put(self, data: bytes, **override_headers: str) -> requests.Response:
        headers = {**self.headers, **override_headers}
        headers.pop("Content-Length", None)  # requests sets it from the body
        return requests.request(self.method, self.url, data=data, headers=headers, timeout=30)


def attachment_of(resource: dict[str, Any]) -> dict[str, Any]:
    return resource["content"][0]["attachment"]
