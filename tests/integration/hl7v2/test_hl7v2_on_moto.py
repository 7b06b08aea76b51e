"""The HL7 v2 endpoint behind the local API Gateway: real handler, DynamoDB and S3 (KMS) on moto.

What a lab partner sees (ACKs over HTTP) and what a clinic then reads through the FHIR API.
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from typing import Any

import boto3
import pytest

from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer
from infra.local.platform import LocalPlatform

ER7 = "x-application/hl7-v2+er7"
LAB_SCOPE = "system/*.cruds"


def post(gateway: LocalGateway, token: str, body: bytes, *, tenant: str = "acme-lab") -> tuple[int, str]:
    result = gateway.handle(
        "POST",
        f"/tenants/{tenant}/hl7v2",
        headers={"Authorization": f"Bearer {token}", "Content-Type": ER7, "Host": "localhost"},
        body=body,
    )
    return result.status, result.body.decode("utf-8")


def get(gateway: LocalGateway, token: str, path: str, *, tenant: str = "acme-lab") -> tuple[int, Any]:
    result = gateway.handle(
        "GET",
        f"/tenants/{tenant}/fhir/{path}",
        headers={"Authorization": f"Bearer {token}", "Host": "localhost"},
        body=b"",
    )
    return result.status, json.loads(result.body or b"{}")


def msa(ack: str) -> list[str]:
    return next(s.split("|") for s in ack.split("\r") if s.startswith("MSA"))


def oru(control_id: str, mrn: str, filler: str, value: str = "182", status: str = "F") -> bytes:
    return "\r".join(
        [
            f"MSH|^~\\&|ACMELAB|ACME|EHR|CLINIC|20240102030405||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
            f"PID|1||{mrn}^^^GHH^MR||LABPATIENT^TEST||19700101|M",
            f"OBR|1|PLAC-{filler}^EHR|{filler}^ACME|2345-7^Glucose^LN|||20240102010000|||||||||"
            f"||||||20240102030000|||{status}",
            f"OBX|1|NM|2345-7^Glucose^LN||{value}|mg/dL|70-105|H|||{status}|||20240102010000",
        ]
    ).encode()


@pytest.fixture(scope="module")
def lab_token(issuer: DevIssuer) -> str:
    return issuer.mint(tenant="acme-lab", scope=LAB_SCOPE)


def test_a_lab_result_is_acknowledged_and_readable_through_the_fhir_api(
    gateway: LocalGateway, lab_token: str
) -> None:
    mrn, filler = uuid.uuid4().hex[:10], uuid.uuid4().hex[:8]
    status, ack = post(gateway, lab_token, oru(f"ORU-{filler}", mrn, filler))
    assert status == 200, ack
    assert msa(ack)[1:3] == ["AA", f"ORU-{filler}"]
    status, bundle = get(
        gateway, lab_token, f"Observation?patient.identifier={mrn}&code=http://loinc.org|2345-7"
    )
    assert status == 200
    observations = [e["resource"] for e in bundle.get("entry", [])]
    assert len(observations) == 1
    assert observations[0]["valueQuantity"]["value"] == 182
    # a correction of the same result makes a new version, not a second Observation
    status, ack = post(gateway, lab_token, oru(f"ORU-{filler}-C", mrn, filler, value="150", status="C"))
    assert msa(ack)[1] == "AA", ack
    status, bundle = get(gateway, lab_token, f"Observation?patient.identifier={mrn}")
    corrected = [
        e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "Observation"
    ]
    assert len(corrected) == 1
    assert corrected[0]["status"] == "corrected"
    assert corrected[0]["valueQuantity"]["value"] == 150
    assert corrected[0]["meta"]["versionId"] == "2"


def test_a_resend_on_dynamodb_returns_the_original_ack(gateway: LocalGateway, lab_token: str) -> None:
    mrn, filler = uuid.uuid4().hex[:10], uuid.uuid4().hex[:8]
    message = oru(f"R-{filler}", mrn, filler)
    first = post(gateway, lab_token, message)
    again = post(gateway, lab_token, message)
    assert first[0] == again[0] == 200
    assert again[1] == first[1]
    _, bundle = get(gateway, lab_token, f"Observation?patient.identifier={mrn}")
    assert [e["resource"]["meta"]["versionId"] for e in bundle.get("entry", [])] == ["1"]


def test_the_raw_message_is_archived_under_the_tenant_with_kms(
    gateway: LocalGateway, lab_token: str, platform: LocalPlatform
) -> None:
    mrn, filler = uuid.uuid4().hex[:10], uuid.uuid4().hex[:8]
    message = oru(f"A-{filler}", mrn, filler)
    status, _ = post(gateway, lab_token, message)
    assert status == 200
    _, bundle = get(gateway, lab_token, f"Observation?patient.identifier={mrn}")
    observation = bundle["entry"][0]["resource"]
    _, provenance = get(gateway, lab_token, f"Provenance?target=Observation/{observation['id']}")
    source = provenance["entry"][0]["resource"]["entity"][0]["what"]["display"]
    assert platform.resources is not None
    s3 = boto3.client("s3", endpoint_url=platform.resources.s3_endpoint or None)
    stored = s3.get_object(Bucket=platform.resources.documents_bucket, Key=f"acme-lab/{source}")
    assert stored["Body"].read() == message.decode().encode()
    assert stored["ServerSideEncryption"] == "aws:kms"


def test_another_tenants_token_cannot_post_to_the_labs_endpoint(
    gateway: LocalGateway, issuer: DevIssuer
) -> None:
    token = issuer.mint(tenant="clinic-b", scope=LAB_SCOPE)
    status, body = post(gateway, token, oru("X-1", "x", "x"))
    assert status == 403
    assert json.loads(body)["resourceType"] == "OperationOutcome"


def test_a_one_megabyte_report_form_is_filed_as_a_document_and_served(
    gateway: LocalGateway, lab_token: str
) -> None:
    # Given an ORU whose OBX-5 carries a 1 MB PDF (base64, about 1.3 MB on the wire)
    mrn, filler = uuid.uuid4().hex[:10], uuid.uuid4().hex[:8]
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 4096
    payload = base64.b64encode(pdf).decode()
    message = (
        oru(f"ED-{filler}", mrn, filler).decode()
        + f"\rOBX|2|ED|11502-2^Lab report^LN||LAB^AP^PDF^Base64^{payload}||||||F"
    )
    # When the lab sends it
    status, ack = post(gateway, lab_token, message.encode())
    # Then it is accepted, and the report's presented form is a document whose bytes come back
    assert status == 200, ack[:500]
    assert msa(ack)[1] == "AA", ack[:500]
    _, bundle = get(gateway, lab_token, f"DiagnosticReport?patient.identifier={mrn}")
    form = bundle["entry"][0]["resource"]["presentedForm"][0]
    assert form["size"] == len(pdf)
    assert "data" not in form
    download = gateway.handle(
        "GET",
        f"/tenants/acme-lab/fhir/{form['url']}",
        headers={"Authorization": f"Bearer {lab_token}", "Host": "localhost"},
        body=b"",
    )
    assert download.status == 302
    fetched = urllib.request.urlopen(download.headers["Location"], timeout=30).read()
    assert fetched == pdf
