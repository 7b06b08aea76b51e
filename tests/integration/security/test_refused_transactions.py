"""A transaction the server refuses leaves nothing behind.

A transaction is all or nothing (docs/fhir-api.md): when the answer is an error, no entry may have
been written, or a client (and the audit trail, which records the refusal) is told that nothing
happened while data changed. Found by the attack matrix's transaction attempts: GET entries used
to be read after the commit, so a failing one answered 404 or 403 over writes that stayed.
"""

from __future__ import annotations

import uuid

import pytest

from infra.local.issuer import DevIssuer
from tests.integration.security.support import VICTIM, Client, base, bearer


@pytest.mark.parametrize(
    ("scope", "read", "status"),
    [
        ("user/*.cruds", f"Patient/{uuid.uuid4()}", 404),
        ("user/Patient.cruds", f"Observation/{uuid.uuid4()}", 403),
    ],
    ids=["unknown id", "scope does not reach it"],
)
def test_a_transaction_refused_because_of_a_read_entry_writes_nothing(
    client: Client, issuer: DevIssuer, scope: str, read: str, status: int
) -> None:
    # Given a transaction that creates a patient and reads something it cannot have
    authorization = bearer(issuer.mint(tenant=VICTIM, scope=scope))
    marker = f"refused-{uuid.uuid4().hex}"
    entries = [
        {
            "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": marker}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {"request": {"method": "GET", "url": read}},
    ]
    # When it is posted
    reply = client.bundle(VICTIM, authorization, "transaction", entries)
    # Then it is refused, and the patient was not created
    assert reply.status == status, reply.text
    found = client.call("GET", f"{base(VICTIM)}/Patient?identifier=urn:test|{marker}", authorization)
    assert found.status == 200 and not found.document.get("entry"), found.text[:500]
