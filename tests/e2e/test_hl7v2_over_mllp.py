"""A lab's interface engine talks MLLP to `ehr mllp-bridge`, which talks HTTP to `ehr local`.

Both are the real commands as subprocesses; the client is python-hl7's MLLP client. The clinic
then reads the result through the FHIR API.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
import pytest
import requests

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bridge(local_server: Any, tmp_path: Path) -> Iterator[int]:
    token_file = tmp_path / "lab.token"
    token_file.write_text(local_server.token("--tenant", "acme-lab", "--scope", "system/*.cruds"))
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "ehr"),
            "mllp-bridge",
            "--listen",
            str(port),
            "--target",
            f"{local_server.base}/tenants/acme-lab/hl7v2",
            "--token-file",
            str(token_file),
        ],
        env=local_server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready = process.stdout.readline()
    assert ready.startswith("MLLP bridge listening"), ready
    yield port
    process.terminate()
    process.wait(timeout=20)


async def _send(port: int, messages: list[str]) -> list[hl7.Message]:
    reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port)
    answers = []
    try:
        for message in messages:
            writer.writemessage(hl7.parse(message))
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.readmessage(), timeout=60))
    finally:
        writer.close()
    return answers


def _oru(control_id: str, mrn: str, filler: str) -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|ACMELAB|ACME|EHR|CLINIC|20240102030405||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
            f"PID|1||{mrn}^^^GHH^MR||MLLPPATIENT^TEST||19700101|M",
            f"OBR|1|P-{filler}^EHR|{filler}^ACME|2345-7^Glucose^LN|||20240102010000||||||||||||||||||F",
            "OBX|1|NM|2345-7^Glucose^LN||99|mg/dL|70-105|N|||F|||20240102010000",
        ]
    )


def test_results_sent_over_mllp_are_acknowledged_and_charted(
    local_server: Any, bridge: int, http: requests.Session
) -> None:
    mrn, filler = uuid.uuid4().hex[:10], uuid.uuid4().hex[:8]
    messages = [_oru(f"M-{filler}-1", mrn, filler), _oru(f"M-{filler}-1", mrn, filler)]  # a resend too
    acks = asyncio.run(_send(bridge, messages))
    assert [str(a.segment("MSA")[1]) for a in acks] == ["AA", "AA"]
    assert [str(a.segment("MSA")[2]) for a in acks] == [f"M-{filler}-1"] * 2
    assert str(acks[0]) == str(acks[1])  # the resend got the original ACK
    token = local_server.token("--tenant", "acme-lab", "--scope", "system/*.rs")
    reply = http.get(
        f"{local_server.base}/tenants/acme-lab/fhir/Observation",
        params={"patient.identifier": mrn},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert reply.status_code == 200
    observations = [e["resource"] for e in reply.json().get("entry", [])]
    assert len(observations) == 1
    assert observations[0]["valueQuantity"]["value"] == 99
