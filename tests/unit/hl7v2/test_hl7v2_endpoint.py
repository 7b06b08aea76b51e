"""POST /tenants/{t}/hl7v2 as a sending system sees it: ACK codes, HTTP status, what is stored.

Runs the real pipeline, inbound service and mappers on fakes (in-memory store, ledger, archive).
"""

from __future__ import annotations

import pytest
from hl7_support import ER7, LAB_SCOPE, Endpoint, adt_a04, endpoint, sample

from ehr.hl7v2.ports import InMemoryMessageArchive


@pytest.fixture
def lab(auth_settings, issuer) -> Endpoint:
    return endpoint(auth_settings, issuer.mint(tenant="acme-lab", scope=LAB_SCOPE))


def test_an_admission_is_accepted_and_the_patient_is_stored(lab: Endpoint) -> None:
    # Given an ADT^A04 for a new patient
    # When the lab's system posts it
    ack = lab.post(adt_a04(control_id="A04-1", mrn="555"))
    # Then the ACK accepts exactly that message, in its version and delimiters
    assert ack.status == 200
    assert ack.code == "AA"
    assert ack.acked_control_id == "A04-1"
    assert ack.field("MSH", 9) == "ACK^A04^ACK"
    assert ack.field("MSH", 12) == "2.5.1"
    assert ack.field("MSH", 5) == "REGADT"  # answered to the sender
    assert ack.headers["Content-Type"].startswith(ER7)
    # And the patient is in the chart, found by the identifier the message carried
    patients = lab.search("acme-lab", "Patient", "identifier=555")
    assert len(patients) == 1
    assert patients[0]["name"][0]["family"] == "TESTPATIENT"


def test_a_resend_returns_the_original_ack_and_creates_nothing(lab: Endpoint) -> None:
    # Given a message that was processed once
    first = lab.post(adt_a04(control_id="RESEND-1", mrn="777"))
    versions_before = lab.search("acme-lab", "Patient", "identifier=777")[0]["meta"]["versionId"]
    # When the sender sends it again (a lost ACK, a retry)
    again = lab.post(adt_a04(control_id="RESEND-1", mrn="777"))
    # Then it gets the same ACK, byte for byte, and the chart did not change
    assert again.status == 200
    assert again.text == first.text
    patients = lab.search("acme-lab", "Patient", "identifier=777")
    assert len(patients) == 1
    assert patients[0]["meta"]["versionId"] == versions_before


def test_an_update_of_the_same_patient_is_an_upsert_not_a_duplicate(lab: Endpoint) -> None:
    # Given a registered patient
    assert lab.post(adt_a04(control_id="U-1", mrn="888", family="FIRSTNAME")).code == "AA"
    # When a later message (new control id) carries a changed name for the same MRN
    assert lab.post(adt_a04(control_id="U-2", mrn="888", family="CHANGED")).code == "AA"
    # Then there is still one patient, now with the new name
    patients = lab.search("acme-lab", "Patient", "identifier=888")
    assert [p["name"][0]["family"] for p in patients] == ["CHANGED"]


def test_a_reused_control_id_with_other_content_is_an_error(lab: Endpoint) -> None:
    assert lab.post(adt_a04(control_id="DUP-1", mrn="1001")).code == "AA"
    ack = lab.post(adt_a04(control_id="DUP-1", mrn="1002"))
    assert ack.status == 200
    assert ack.code == "AE"
    assert ack.errors[0][3].startswith("205^")
    assert lab.search("acme-lab", "Patient", "identifier=1002") == []


def test_every_message_leaves_a_provenance_pointing_at_its_archived_source(lab: Endpoint) -> None:
    ack = lab.post(adt_a04(control_id="PROV-1", mrn="4242"))
    assert ack.code == "AA"
    patient = lab.search("acme-lab", "Patient", "identifier=4242")[0]
    provenance = lab.search("acme-lab", "Provenance", f"target=Patient/{patient['id']}")
    assert len(provenance) == 1
    source = provenance[0]["entity"][0]["what"]
    assert source["identifier"]["value"].endswith("|PROV-1")
    # And the archive holds the message, its ACK and what was written, under the tenant
    folder = source["display"].rsplit("/", 1)[0]
    stored = lab.archive.get("acme-lab", f"{folder}/message.hl7")
    assert stored is not None and b"PROV-1" in stored
    assert lab.archive.get("acme-lab", f"{folder}/ack.hl7") == ack.text.encode()
    assert f"Patient/{patient['id']}".encode() in (
        lab.archive.get("acme-lab", f"{folder}/result.json") or b""
    )


def test_an_unreadable_message_is_rejected_with_http_400(lab: Endpoint) -> None:
    ack = lab.post("this is not HL7")
    assert ack.status == 400
    assert ack.code == "AR"
    assert "MSH" in ack.first("ERR")[-1]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("nhapi-fuzz__PipeParser-HL7Exception__id_000064.hl7", "encoding characters"),
        ("python-hl7__sample_bad_batch__MALFORMED.hl7", "MSH"),
    ],
)
def test_broken_samples_are_rejected_with_a_reason(lab: Endpoint, name: str, reason: str) -> None:
    ack = lab.post(sample(name))
    assert ack.status == 400
    assert ack.code == "AR"
    assert reason in ack.text


def test_an_unsupported_message_type_is_rejected_naming_it(lab: Endpoint) -> None:
    ack = lab.post(sample("msft-fhir-converter__SIU-S13-01.hl7"))
    assert ack.status == 200
    assert ack.code == "AR"
    assert r"SIU\S\S13" in ack.first("MSA")[3]  # "SIU^S13", escaped as HL7 requires
    assert ack.errors[0][2] == "MSH^1^9"


def test_an_unsupported_version_is_rejected(lab: Endpoint) -> None:
    ack = lab.post(adt_a04().replace("|P|2.5.1", "|P|3.0"))
    assert ack.code == "AR"
    assert ack.errors[0][3].startswith("203^")


def test_a_missing_control_id_is_rejected(lab: Endpoint) -> None:
    ack = lab.post(adt_a04(control_id=""))
    assert ack.status == 400
    assert ack.code == "AR"
    assert ack.errors[0][2] == "MSH^1^10"


def test_a_message_that_is_not_hl7_media_type_is_refused(lab: Endpoint) -> None:
    ack = lab.post(adt_a04(), content_type="application/json")
    assert ack.status == 415
    assert ack.code == "AR"


def test_text_plain_is_accepted(lab: Endpoint) -> None:
    assert lab.post(adt_a04(control_id="TP-1", mrn="9090"), content_type="text/plain").code == "AA"


def test_a_batch_gets_one_ack_per_message_in_a_batch_envelope(lab: Endpoint) -> None:
    batch = "\r".join(
        [
            "BHS|^~\\&|REGADT|GOOD HEALTH|||20240101",
            adt_a04(control_id="B-1", mrn="b1"),
            adt_a04(control_id="B-2", mrn="b2"),
            "BTS|2",
        ]
    )
    ack = lab.post(batch)
    assert ack.status == 200
    assert ack.segments[0][0] == "BHS"
    assert [m[2] for m in ack.all("MSA")] == ["B-1", "B-2"]
    assert ack.first("BTS")[1] == "2"


def test_a_token_of_another_tenant_is_refused_before_reading_the_message(lab: Endpoint, issuer) -> None:
    other = issuer.mint(tenant="clinic-a", scope=LAB_SCOPE)
    reply = lab.post(adt_a04(control_id="X-1", mrn="x1"), token=other)
    assert reply.status == 403
    assert lab.search("acme-lab", "Patient", "identifier=x1") == []


def test_a_sender_without_write_scopes_gets_ar_and_nothing_is_stored(auth_settings, issuer) -> None:
    reader = endpoint(auth_settings, issuer.mint(tenant="acme-lab", scope="system/*.rs"))
    ack = reader.post(adt_a04(control_id="RO-1", mrn="ro1"))
    assert ack.status == 200
    assert ack.code == "AR"
    assert reader.search("acme-lab", "Patient", "identifier=ro1") == []


def test_an_archive_outage_answers_503_and_a_retry_succeeds(auth_settings, issuer) -> None:
    archive = InMemoryMessageArchive(fail=True)
    lab = endpoint(auth_settings, issuer.mint(tenant="acme-lab", scope=LAB_SCOPE), archive=archive)
    ack = lab.post(adt_a04(control_id="OUT-1", mrn="out1"))
    assert ack.status == 503
    assert ack.code == "AE"
    assert ack.headers.get("Retry-After")
    assert lab.search("acme-lab", "Patient", "identifier=out1") == []
    archive.fail = False
    assert lab.post(adt_a04(control_id="OUT-1", mrn="out1")).code == "AA"
    assert len(lab.search("acme-lab", "Patient", "identifier=out1")) == 1


def test_each_request_leaves_one_audit_record_naming_what_was_written(lab: Endpoint) -> None:
    before = len(lab.audit.records)
    lab.post(adt_a04(control_id="AUD-1", mrn="aud1"))
    records = lab.audit.records[before:]
    assert len(records) == 1
    assert records[0].subtype == "hl7v2-message"
    patient = lab.search("acme-lab", "Patient", "identifier=aud1")[0]
    assert f"Patient/{patient['id']}" in records[0].entities
    assert patient["id"] in records[0].patients


def test_a_merge_links_the_records_and_moves_references_to_the_survivor(lab: Endpoint) -> None:
    # Given two registrations of one person, the second with a visit
    assert lab.post(adt_a04(control_id="M-1", mrn="keep1")).code == "AA"
    assert lab.post(adt_a04(control_id="M-2", mrn="gone1").replace("|||V-1", "|||V-M2")).code == "AA"
    survivor = lab.search("acme-lab", "Patient", "identifier=keep1")[0]
    merged = lab.search("acme-lab", "Patient", "identifier=gone1")[0]
    visits = lab.search("acme-lab", "Encounter", f"subject=Patient/{merged['id']}")
    assert len(visits) == 1
    # When an ADT^A40 merges the second into the first
    a40 = "\r".join(
        [
            "MSH|^~\\&|REGADT|GOOD HEALTH|EHR|ACME|20240102120000||ADT^A40^ADT_A39|M-3|P|2.5.1",
            "EVN|A40|20240102120000",
            "PID|1||keep1^^^GHH^MR||TESTPATIENT^ALEX^J||19800101|F",
            "MRG|gone1^^^GHH^MR",
        ]
    )
    ack = lab.post(a40)
    # Then both records point at each other, and the visit now belongs to the survivor
    assert ack.code == "AA", ack.text
    assert "references moved" in ack.first("MSA")[3]
    merged_now = lab.search("acme-lab", "Patient", "identifier=gone1")[0]
    survivor_now = lab.search("acme-lab", "Patient", "identifier=keep1")[0]
    assert merged_now["active"] is False
    assert {"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"} in merged_now["link"]
    assert any(link["type"] == "replaces" for link in survivor_now["link"])
    assert lab.search("acme-lab", "Encounter", f"subject=Patient/{merged['id']}") == []
    moved = lab.search("acme-lab", "Encounter", f"subject=Patient/{survivor['id']}")
    assert visits[0]["id"] in {e["id"] for e in moved}
