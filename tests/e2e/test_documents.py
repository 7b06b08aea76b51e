"""Documents over real HTTP against `ehr local`: curl uploads a real PDF to the presigned URL the
API hands out and downloads it through the audited redirect; a PNG comes inline in a transaction."""

from __future__ import annotations

import base64
import hashlib
import shutil
import struct
import subprocess
import zlib

import pytest

SHA256_EXTENSION = "urn:ehr:fhir:StructureDefinition:attachment-sha256"
pytestmark = pytest.mark.e2e


def minimal_pdf(text: str) -> bytes:
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((x * 40) % 256 for x in range(4) for _ in range(3)) for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.skip("curl is not installed")
    return found


def test_curl_uploads_and_downloads_a_pdf(local_server, http, curl, tmp_path) -> None:
    token = local_server.token("--tenant", "clinic-a")
    base = f"{local_server.base}/tenants/clinic-a/fhir"
    auth = {"Authorization": f"Bearer {token}"}
    pdf = minimal_pdf("e2e discharge summary")
    (tmp_path / "summary.pdf").write_bytes(pdf)
    # Given the document's metadata
    attachment = {
        "contentType": "application/pdf",
        "size": len(pdf),
        "hash": b64(hashlib.sha1(pdf, usedforsecurity=False).digest()),
        "title": "Discharge summary",
        "extension": [{"url": SHA256_EXTENSION, "valueBase64Binary": b64(hashlib.sha256(pdf).digest())}],
    }
    created = http.post(
        f"{base}/DocumentReference",
        json={
            "resourceType": "DocumentReference",
            "status": "current",
            "content": [{"attachment": attachment}],
        },
        headers={**auth, "Content-Type": "application/fhir+json"},
    )
    assert created.status_code == 201, created.text
    doc_id = created.json()["id"]
    assert created.json()["docStatus"] == "preliminary"
    # When the client asks for an upload URL and curl PUTs the file with the headers named there
    ticket = http.post(f"{base}/DocumentReference/{doc_id}/$upload-url", headers=auth)
    assert ticket.status_code == 200, ticket.text
    parameters = ticket.json()["parameter"]
    url = next(p["valueUrl"] for p in parameters if p["name"] == "url")
    headers = [
        f"{p['part'][0]['valueString']}: {p['part'][1]['valueString']}"
        for p in parameters
        if p["name"] == "header"
    ]
    command = [
        curl,
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "PUT",
        "-T",
        str(tmp_path / "summary.pdf"),
    ]
    for header in headers:
        if not header.lower().startswith("content-length:"):
            command += ["-H", header]
    put = subprocess.run([*command, url], capture_output=True, text=True, timeout=60, check=False)
    assert put.stdout == "200", put.stderr
    # Then the document is final, and the Binary URL redirects to the bytes
    assert http.get(f"{base}/DocumentReference/{doc_id}", headers=auth).json()["docStatus"] == "final"
    redirect = http.get(f"{base}/Binary/{doc_id}", headers=auth, allow_redirects=False)
    assert redirect.status_code == 302
    got = subprocess.run(
        [curl, "-sS", "-o", str(tmp_path / "back.pdf"), redirect.headers["Location"]],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "back.pdf").read_bytes() == pdf
    # And another tenant's token on its own URL finds nothing
    other = local_server.token("--tenant", "clinic-b")
    stolen = http.get(
        f"{local_server.base}/tenants/clinic-b/fhir/Binary/{doc_id}",
        headers={"Authorization": f"Bearer {other}"},
        allow_redirects=False,
    )
    assert stolen.status_code == 404


def test_a_png_inline_in_a_transaction_is_stored_and_served(local_server, http) -> None:
    token = local_server.token("--tenant", "clinic-a")
    base = f"{local_server.base}/tenants/clinic-a/fhir"
    image = png()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5b0e4c1e-1d64-4a53-9a43-1a2b3c4d5e6f",
                "resource": {"resourceType": "Patient", "name": [{"family": "Inline"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "DocumentReference",
                    "status": "current",
                    "subject": {"reference": "urn:uuid:5b0e4c1e-1d64-4a53-9a43-1a2b3c4d5e6f"},
                    "content": [{"attachment": {"contentType": "image/png", "data": b64(image)}}],
                },
                "request": {"method": "POST", "url": "DocumentReference"},
            },
        ],
    }
    reply = http.post(
        base,
        json=bundle,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )
    assert reply.status_code == 200, reply.text
    location = reply.json()["entry"][1]["response"]["location"]
    doc_id = location.split("/_history/")[0].rsplit("/", 1)[-1]
    # Following the redirect (requests drops the bearer token on the way to S3)
    got = http.get(f"{base}/Binary/{doc_id}", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200
    assert got.content == image
    assert got.headers["Content-Type"] == "image/png"
