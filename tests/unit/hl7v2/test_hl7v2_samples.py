"""Every externally written message under ../shared/data/hl7v2/ gets a sensible ACK.

Sensible means: an ACK for each message the file holds, naming it (MSA-2 = its MSH-10); AA for a
supported message type that maps; AR naming the type for one that is not supported; AR with HTTP
400 and a reason for what cannot be read; never a 5xx. Files are used exactly as they are.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hl7_support import LAB_SCOPE, SHARED_DATA, Endpoint, endpoint

from ehr.hl7v2 import er7
from ehr.hl7v2.mapping import MAPPERS

FOLDER = SHARED_DATA / "hl7v2"
FILES = sorted(FOLDER.glob("*.hl7")) if FOLDER.is_dir() else []

# Messages of supported types that a sender must fix (AE), with the reason the ACK must give.
EXPECTED_ERRORS: dict[str, str] = {}


@pytest.fixture(scope="module")
def lab(auth_settings, issuer) -> Endpoint:
    return endpoint(auth_settings, issuer.mint(tenant="acme-lab", scope=LAB_SCOPE))


def _messages(path: Path) -> list[er7.Message | None]:
    texts, _ = er7.split_messages(er7.decode(path.read_bytes()))
    out: list[er7.Message | None] = []
    for text in texts:
        try:
            out.append(er7.parse(text))
        except er7.Er7Error:
            out.append(None)
    return out


@pytest.mark.skipif(not FILES, reason="shared HL7 v2 samples not present")
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_each_shared_sample_gets_a_sensible_ack(lab: Endpoint, path: Path) -> None:
    # Given a message as an external system wrote it
    expected = _messages(path)
    lab.ledger.entries.clear()  # samples from one source reuse control ids (MSG00001)
    # When it is posted
    reply = lab.post(path.read_bytes())
    # Then no 5xx, and one ACK per message, in order
    assert reply.status < 500, reply.text
    msas = reply.all("MSA")
    assert len(msas) == len(expected), reply.text
    for message, msa in zip(expected, msas, strict=True):
        code = msa[1]
        if message is None:
            assert code == "AR"
            assert reply.status == 400
            assert len(msa) > 3 and msa[3], "an unreadable message is rejected with a reason"
            continue
        assert msa[2] == message.encoding.escape_text(message.control_id)
        supported = (message.message_type, message.trigger_event) in MAPPERS
        if not supported:
            assert code == "AR", reply.text
            assert len(msa) > 3 and msa[3], "a rejection gives its reason"
        elif path.name in EXPECTED_ERRORS:
            assert code == "AE", reply.text
            assert EXPECTED_ERRORS[path.name] in reply.text
        else:
            assert code == "AA", reply.text
