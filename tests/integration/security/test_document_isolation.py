"""Documents across tenants: clinic-b (the attacker) against clinic-a's (the victim's) documents.

The attack-matrix rules (``test_attack_matrix.py``) applied to the document routes and to the
presigned URLs: on its own base URL clinic-b gets exactly what an id that never existed gets
(404, nothing revealed) for read, ``Binary`` download, ``$upload-url``, history and searches; on
clinic-a's URL its tokens get 403; a presigned URL, signed for one key, opens no other key; and
nothing clinic-b does changes clinic-a's documents or bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from ehr.documents.service import SHA256_EXTENSION
from tests.integration.security.conftest import Tokens
from tests.integration.security.support import ATTACKER, VICTIM, Client, Reply, base, bearer

NEVER = "00000000-0000-4000-8000-000000000000"  # an id that exists in no tenant
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def digest(data: bytes, algorithm: str) -> str:
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode()


@dataclass(frozen=True)
class VictimDocuments:
    final: str  # verified content (inline)
    pending: str  # metadata only, waiting for its upload
    patient: str
    download_url: str  # a presigned GET clinic-a was handed
    upload_url: str  # a presigned PUT clinic-a was handed (for ``pending``)
    upload_headers: dict[str, str]


def parameters(reply: Reply) -> tuple[str, dict[str, str]]:
    assert reply.status == 200, reply.text[:300]
    values = reply.document["parameter"]
    url = next(p["valueUrl"] for p in values if p["name"] == "url")
    headers = {
        p["part"][0]["valueString"]: p["part"][1]["valueString"] for p in values if p["name"] == "header"
    }
    return url, headers


@pytest.fixture(scope="module")
def documents(client: Client, tokens: Tokens) -> Iterator[VictimDocuments]:
    auth = bearer(tokens.victim)
    patient = client.call("POST", f"{base(VICTIM)}/Patient", auth, {"resourceType": "Patient"}).document
    doc = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": f"Patient/{patient['id']}"},
    }
    final = client.call(
        "POST",
        f"{base(VICTIM)}/DocumentReference",
        auth,
        {
            **doc,
            "content": [
                {"attachment": {"contentType": "application/pdf", "data": base64.b64encode(PDF).decode()}}
            ],
        },
    ).document
    other = PDF + b"% pending\n"
    pending = client.call(
        "POST",
        f"{base(VICTIM)}/DocumentReference",
        auth,
        {
            **doc,
            "content": [
                {
                    "attachment": {
                        "contentType": "application/pdf",
                        "size": len(other),
                        "hash": digest(other, "sha1"),
                        "extension": [
                            {"url": SHA256_EXTENSION, "valueBase64Binary": digest(other, "sha256")}
                        ],
                    }
                }
            ],
        },
    ).document
    download = client.call("GET", f"{base(VICTIM)}/Binary/{final['id']}", auth)
    assert download.status == 302, download.text
    upload_url, upload_headers = parameters(
        client.call("POST", f"{base(VICTIM)}/DocumentReference/{pending['id']}/$upload-url", auth, b"")
    )
    yield VictimDocuments(
        final=final["id"],
        pending=pending["id"],
        patient=patient["id"],
        download_url=download.headers["Location"],
        upload_url=upload_url,
        upload_headers=upload_headers,
    )


ATTACKS = {
    "read": ("GET", "DocumentReference/{id}"),
    "download": ("GET", "Binary/{id}"),
    "upload-url": ("POST", "DocumentReference/{id}/$upload-url"),
    "history": ("GET", "DocumentReference/{id}/_history"),
    "vread": ("GET", "DocumentReference/{id}/_history/1"),
}


@pytest.mark.parametrize("token_name", ["user", "system"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_clinic_a_document_ids_on_clinic_b_url_answer_as_if_they_never_existed(
    client: Client, tokens: Tokens, documents: VictimDocuments, attack: str, token_name: str
) -> None:
    method, template = ATTACKS[attack]
    auth = bearer(getattr(tokens, token_name))
    for victim_id in (documents.final, documents.pending):
        # When clinic-b asks its own base URL about clinic-a's document
        stolen = client.call(
            method,
            f"{base(ATTACKER)}/{template.format(id=victim_id)}",
            auth,
            b"" if method == "POST" else None,
        )
        never = client.call(
            method, f"{base(ATTACKER)}/{template.format(id=NEVER)}", auth, b"" if method == "POST" else None
        )
        # Then the answer is a 404, word for word the one for an id that never existed, no redirect
        assert stolen.status == 404, (attack, stolen.text[:300])
        assert stolen.text.replace(victim_id, "{id}") == never.text.replace(NEVER, "{id}")
        assert "Location" not in stolen.headers


def test_clinic_b_searches_list_none_of_clinic_a_documents(
    client: Client, tokens: Tokens, documents: VictimDocuments
) -> None:
    auth = bearer(tokens.system)
    for query in (
        f"_id={documents.final},{documents.pending}",
        f"patient=Patient/{documents.patient}",
        f"subject=Patient/{documents.patient}",
        "status=current&_count=1000",
    ):
        reply = client.call("GET", f"{base(ATTACKER)}/DocumentReference?{query}", auth)
        assert reply.status == 200, reply.text[:300]
        found = [e["resource"]["id"] for e in reply.document.get("entry", []) if "resource" in e]
        assert documents.final not in found and documents.pending not in found, query


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_clinic_b_tokens_on_clinic_a_url_are_refused(
    client: Client, tokens: Tokens, documents: VictimDocuments, attack: str
) -> None:
    method, template = ATTACKS[attack]
    path = f"{base(VICTIM)}/{template.format(id=documents.final)}"
    reply = client.call(method, path, bearer(tokens.user), b"" if method == "POST" else None)
    assert (reply.status, reply.document["issue"][0]["code"]) == (403, "forbidden")
    assert "Location" not in reply.headers


def retarget(url: str, key: str) -> str:
    """The same presigned URL (same signature) pointed at another object key."""
    parts = urlsplit(url)
    bucket = parts.path.strip("/").split("/")[0]
    return urlunsplit((parts.scheme, parts.netloc, f"/{bucket}/{key}", parts.query, ""))


def test_a_download_url_opens_only_its_own_object(
    client: Client, tokens: Tokens, documents: VictimDocuments
) -> None:
    # Given clinic-b's own stored document and the download URL clinic-a was handed
    auth = bearer(tokens.user)
    own = client.call(
        "POST",
        f"{base(ATTACKER)}/DocumentReference",
        auth,
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "content": [
                {"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"clinic-b").decode()}}
            ],
        },
    ).document
    own_download = client.call("GET", f"{base(ATTACKER)}/Binary/{own['id']}", auth).headers["Location"]
    victim_key = urlsplit(documents.download_url).path.split("/", 2)[2]
    own_key = urlsplit(own_download).path.split("/", 2)[2]
    # When either URL is pointed at the other tenant's key
    into_victim = requests.get(retarget(own_download, victim_key), timeout=30)
    into_attacker = requests.get(retarget(documents.download_url, own_key), timeout=30)
    # Then S3 refuses both; each URL still opens its own object
    assert into_victim.status_code == 403 and b"SignatureDoesNotMatch" in into_victim.content
    assert into_attacker.status_code == 403
    assert requests.get(documents.download_url, timeout=30).content == PDF


def test_an_upload_url_cannot_write_another_key(
    client: Client, tokens: Tokens, documents: VictimDocuments
) -> None:
    # Given the upload URL clinic-a was handed for its pending document
    other_key = f"{ATTACKER}/{NEVER}/{hashlib.sha256(b'x').hexdigest()}"
    headers = {k: v for k, v in documents.upload_headers.items() if k != "Content-Length"}
    body = PDF + b"% pending\n"
    # When it is used for another key (in another tenant's prefix)
    reply = requests.put(retarget(documents.upload_url, other_key), data=body, headers=headers, timeout=30)
    # Then S3 refuses it, and clinic-a's document still waits for its own upload
    assert reply.status_code == 403 and b"SignatureDoesNotMatch" in reply.content
    pending = client.call(
        "GET", f"{base(VICTIM)}/DocumentReference/{documents.pending}", bearer(tokens.victim)
    )
    assert pending.document["docStatus"] == "preliminary"


def test_clinic_b_writes_with_clinic_a_ids_do_not_touch_clinic_a(
    client: Client, tokens: Tokens, documents: VictimDocuments
) -> None:
    # When clinic-b PUTs documents under clinic-a's ids (REST and transaction, inline data)
    auth = bearer(tokens.system)
    forged = {"contentType": "text/plain", "data": base64.b64encode(b"forged").decode()}
    for victim_id in (documents.final, documents.pending):
        body = {
            "resourceType": "DocumentReference",
            "id": victim_id,
            "status": "current",
            "content": [{"attachment": forged}],
        }
        client.call("PUT", f"{base(ATTACKER)}/DocumentReference/{victim_id}", auth, body)
    # Then clinic-a's documents and bytes are what clinic-a stored
    victim_auth = bearer(tokens.victim)
    final = client.call("GET", f"{base(VICTIM)}/DocumentReference/{documents.final}", victim_auth).document
    assert final["meta"]["versionId"] == "1" and final["docStatus"] == "final"
    pending = client.call(
        "GET", f"{base(VICTIM)}/DocumentReference/{documents.pending}", victim_auth
    ).document
    assert pending["meta"]["versionId"] == "1" and pending["docStatus"] == "preliminary"
    location = client.call("GET", f"{base(VICTIM)}/Binary/{documents.final}", victim_auth).headers["Location"]
    assert requests.get(location, timeout=30).content == PDF
    assert json.loads(json.dumps(final))["content"][0]["attachment"]["size"] == len(PDF)
