"""Outbound ORM^O01 (v2.5.1): built from FHIR resources, read back by two independent parsers.

Every message is parsed with hl7apy (strict: data types, lengths, dates; each segment validated
against the 2.5.1 definitions) and with python-hl7; the assertions are on the values a lab
would read. Shared samples from ../shared/data are used as they are; small obviously fake
resources cover the cases the samples do not.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hl7apy.validation import Validator

from ehr.hl7v2.orm import (
    OrderEnvelope,
    OrderResources,
    OrmBuildError,
    build_cancel_order,
    build_new_order,
    placer_order_number,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
EXAMPLES = SHARED_DATA / "fhir-examples"

SENT_AT = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)


def envelope(**overrides: Any) -> OrderEnvelope:
    values: dict[str, Any] = {
        "sending_facility": "clinic-a",
        "receiving_facility": "acme-lab",
        "message_control_id": "ORM-000123",
        "clock": lambda: SENT_AT,
    }
    return OrderEnvelope(**(values | overrides))


def sample(name: str) -> dict[str, Any]:
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"shared sample not present: {name}")
    return json.loads(path.read_text(encoding="utf-8"))


def a_patient(**overrides: Any) -> dict[str, Any]:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "fake-1",
        "identifier": [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                },
                "system": "urn:oid:2.16.840.1.113883.19.5",
                "value": "MRN-0001",
            }
        ],
        "name": [{"use": "official", "family": "Testpatient", "given": ["Fakeperson"]}],
        "gender": "female",
        "birthDate": "1990-01-01",
    }
    return patient | overrides


def a_service_request(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": "sr-1",
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        "subject": {"reference": "Patient/fake-1"},
        "authoredOn": "2025-03-14T09:00:00-05:00",
    }
    return request | overrides


def a_fake_order(**overrides: Any) -> OrderResources:
    values: dict[str, Any] = {"service_request": a_service_request(), "patient": a_patient()}
    return OrderResources(**(values | overrides))


def strict_hl7apy(er7: str) -> Any:
    """hl7apy, strict: each leaf checked on parse, each segment validated against HL7 v2.5.1."""
    message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    segments = list(_segments(message))
    assert [s.name for s in segments] == [line[:3] for line in er7.split("\r")]  # none dropped
    for segment in segments:
        assert Validator.validate(segment)
    return message


def _segments(element: Any) -> Any:
    for child in element.children:
        if child.classname == "Group":
            yield from _segments(child)
        elif child.classname == "Segment":
            yield child


def order_of(message: Any) -> Any:
    return message.orm_o01_order


def obr_of(message: Any) -> Any:
    return message.orm_o01_order.orm_o01_order_detail.orm_o01_obrrqdrq1rxoodsodt_suppgrp.obr


# --- built from the shared samples, read back by both parsers ---------------------------------


def test_us_core_cbc_order_round_trips_through_hl7apy_and_python_hl7():
    # Given the US Core CBC order and its patient (Patient/example), as published
    order = OrderResources(
        service_request=sample("us-core__servicerequest-cbc.json"),
        patient=sample("fhir-test-cases__patient-example.json"),
    )

    # When the new-order message is built
    er7 = build_new_order(envelope(), order)

    # Then hl7apy (strict, 2.5.1) reads the placer number, the LOINC test and the patient's MRN
    strict = strict_hl7apy(er7)
    orc, obr, pid = order_of(strict).orc, obr_of(strict), strict.orm_o01_patient.pid
    assert orc.orc_1.to_er7() == "NW"
    assert orc.orc_2.to_er7() == obr.obr_2.to_er7() == "cbc^clinic-a"
    assert (obr.obr_4.ce_1.to_er7(), obr.obr_4.ce_3.to_er7()) == ("58410-2", "LN")
    assert pid.pid_3.cx_1.to_er7() == "12345"
    assert pid.pid_3.cx_4.hd_2.to_er7() == "1.2.36.146.595.217.0.1"
    assert pid.pid_3.cx_4.hd_3.to_er7() == "ISO"
    # And python-hl7 reads the same values
    parsed = hl7.parse(er7)
    assert parsed["ORC.F2.R1.C1"] == parsed["OBR.F2.R1.C1"] == "cbc"
    assert parsed["ORC.F2.R1.C2"] == "clinic-a"
    assert parsed["OBR.F4.R1.C1"] == "58410-2"
    assert parsed["OBR.F4.R1.C3"] == "LN"
    assert parsed["PID.F3.R1.C1"] == "12345"
    assert parsed["PID.F3.R1.C4.S2"] == "1.2.36.146.595.217.0.1"
    assert parsed["PID.F3.R1.C4.S3"] == "ISO"
    assert parsed["PID.F3.R1.C5"] == "MR"
    # And the demographics and times a lab needs are there
    assert parsed["PID.F5.R1.C1"] == "Chalmers"
    assert parsed["PID.F5.R1.C2"] == "Peter"
    assert parsed["PID.F7"] == "19741225"
    assert parsed["PID.F8"] == "M"
    assert parsed["PID.F11.R1.C3"] == "PleasantVille"
    assert parsed["PID.F13.R1.C12"] == "(03) 3410 5613"  # mobile; the old number is left out
    assert parsed["OBR.F7"] == "20241013105938-0800"  # authoredOn, offset kept
    assert parsed["ORC.F9"] == "20241013105938-0800"
    assert parsed["PV1.F2"] == "O"


def test_spec_ft4_order_with_requester_and_specimen_round_trips():
    # Given the R4 spec's free-T4 order, its patient, requester and serum specimen, as published
    order = OrderResources(
        service_request=sample("fhir-r4-spec__servicerequest-example-ft4.json"),
        patient=sample("fhir-r4-spec__patient-example-b.json"),
        practitioner=sample("fhir-test-cases__practitioner-example.json"),
        specimen=sample("fhir-r4-spec__specimen-example-serum.json"),
    )

    # When the new-order message is built
    er7 = build_new_order(envelope(), order)

    # Then both parsers read the same placer number, LOINC code and patient identifier
    strict = strict_hl7apy(er7)
    parsed = hl7.parse(er7)
    obr, pid = obr_of(strict), strict.orm_o01_patient.pid
    assert obr.obr_2.ei_1.to_er7() == parsed["OBR.F2.R1.C1"] == parsed["ORC.F2.R1.C1"] == "ft4"
    assert obr.obr_4.ce_1.to_er7() == parsed["OBR.F4.R1.C1"] == "3024-7"
    assert obr.obr_4.ce_3.to_er7() == parsed["OBR.F4.R1.C3"] == "LN"
    assert pid.pid_3.cx_1.to_er7() == parsed["PID.F3.R1.C1"] == "123456"
    assert pid.pid_3.cx_4.hd_2.to_er7() == parsed["PID.F3.R1.C4.S2"] == "0.1.2.3.4.5.6.7"
    assert pid.pid_3.cx_4.hd_3.to_er7() == parsed["PID.F3.R1.C4.S3"] == "ISO"
    assert parsed["PID.F8"] == "O"  # gender "other"
    # And the ordering provider (ORC-12 = OBR-16) keeps its non-OID system as a URI authority
    for field in ("ORC.F12", "OBR.F16"):
        assert parsed[f"{field}.R1.C1"] == "23"
        assert parsed[f"{field}.R1.C2"] == "Careful"
        assert parsed[f"{field}.R1.C3"] == "Adam"
        assert parsed[f"{field}.R1.C6"] == "Dr"
        assert parsed[f"{field}.R1.C9.S2"] == "http://www.acme.org/practitioners"
        assert parsed[f"{field}.R1.C9.S3"] == "URI"
    # And the specimen rides in OBR (ORM^O01 2.5.1 has no SPM): type in OBR-15, collected in OBR-7
    assert parsed["OBR.F15.R1.C1.S1"] == "119364003"
    assert parsed["OBR.F15.R1.C1.S3"] == "SCT"
    assert parsed["OBR.F7"] == "20150816064017+0000"
    # And the display's zero-width space is sent as UTF-8, declared in MSH-18
    assert parsed["MSH.F18"] == "UNICODE UTF-8"


# --- placer order number -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {
                "identifier": [
                    {
                        "system": "urn:oid:2.16.840.1.113883.19.6",
                        "value": "FILLER-9",
                        "type": {"coding": [{"code": "FILL"}]},
                    },
                    {
                        "system": "urn:oid:2.16.840.1.113883.19.7",
                        "value": "PLAC-42",
                        "type": {
                            "coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}
                            ]
                        },
                    },
                ],
                "requisition": {"value": "REQ-7"},
            },
            "PLAC-42^clinic-a^2.16.840.1.113883.19.7^ISO",
        ),
        ({"requisition": {"system": "http://clinic.example/req", "value": "REQ-7"}}, "REQ-7^clinic-a"),
        ({}, "sr-1^clinic-a"),
    ],
    ids=["PLAC identifier", "requisition", "id in the tenant namespace"],
)
def test_placer_order_number_comes_from_plac_then_requisition_then_the_id(extra, expected):
    # Given a request with (or without) a placer identifier or requisition
    order = a_fake_order(service_request=a_service_request(**extra))

    # When the order is built
    parsed = hl7.parse(build_new_order(envelope(), order))

    # Then ORC-2 and OBR-2 carry the same placer order number
    assert str(parsed.segment("ORC")[2]) == str(parsed.segment("OBR")[2]) == expected
    assert placer_order_number(order.service_request, namespace="clinic-a").value == expected.split("^")[0]


# --- escaping ------------------------------------------------------------------------------------


def test_a_name_with_component_and_subcomponent_separators_is_escaped():
    # Given a patient whose family name holds ^ and whose given name holds &
    patient = a_patient(name=[{"use": "official", "family": "Fake^Name", "given": ["Ann&Bea", "Q"]}])

    # When the order is built
    er7 = build_new_order(envelope(), a_fake_order(patient=patient))

    # Then the separators are escaped, and the name's components stay where they belong
    strict = strict_hl7apy(er7)
    xpn = strict.orm_o01_patient.pid.pid_5
    assert xpn.xpn_1.to_er7() == "Fake\\S\\Name"
    assert xpn.xpn_2.to_er7() == "Ann\\T\\Bea"
    assert xpn.xpn_3.to_er7() == "Q"
    parsed = hl7.parse(er7)
    assert parsed["PID.F5.R1.C1"] == "Fake^Name"
    assert parsed["PID.F5.R1.C2"] == "Ann&Bea"
    assert parsed["PID.F5.R1.C3"] == "Q"


def test_notes_become_nte_segments_with_every_delimiter_escaped():
    # Given a request with two notes, one using every ER7 delimiter and a line break
    note = "Fasting | 12h ~ water only \\ see A&B^C\nCall before 9"
    request = a_service_request(note=[{"text": note}, {"text": "Second note"}])

    # When the order is built
    er7 = build_new_order(envelope(), a_fake_order(service_request=request))

    # Then each note is one NTE after the OBR, and reads back as written
    assert [line[:3] for line in er7.split("\r")][-3:] == ["OBR", "NTE", "NTE"]
    strict = strict_hl7apy(er7)
    notes = strict.orm_o01_order.orm_o01_order_detail.children.get("NTE")
    assert len(notes) == 2  # hl7apy places both in the order detail, after the OBR
    # (hl7apy knows no formatting commands: its to_er7() would escape the line break again)
    assert er7.split("\r")[-2] == (
        "NTE|1|P|Fasting \\F\\ 12h \\R\\ water only \\E\\ see A\\T\\B\\S\\C\\.br\\Call before 9"
    )
    parsed = hl7.parse(er7)
    nte = parsed.segments("NTE")
    assert [str(s[1]) for s in nte] == ["1", "2"]
    assert parsed["NTE.F3"] == "Fasting | 12h ~ water only \\ see A&B^C\rCall before 9"  # \.br\ read as CR
    assert parsed.unescape(str(nte[1][3])) == "Second note"


# --- cancellation ----------------------------------------------------------------------------------


def test_cancellation_has_order_control_ca_and_the_same_placer_number():
    # Given an order that was sent
    order = OrderResources(
        service_request=sample("fhir-r4-spec__servicerequest-example-ft4.json"),
        patient=sample("fhir-r4-spec__patient-example-b.json"),
    )
    sent = hl7.parse(build_new_order(envelope(), order))

    # When it is cancelled
    er7 = build_cancel_order(envelope(message_control_id="ORM-000124"), order, reason="Duplicate order")

    # Then ORC-1 is CA, the placer number and test are the ones sent, and the reason is in ORC-16
    strict = strict_hl7apy(er7)
    assert order_of(strict).orc.orc_1.to_er7() == "CA"
    cancel = hl7.parse(er7)
    assert cancel["ORC.F1"] == "CA"
    assert str(cancel.segment("ORC")[2]) == str(sent.segment("ORC")[2]) == "ft4^clinic-a"
    assert str(cancel.segment("OBR")[2]) == str(sent.segment("OBR")[2])
    assert cancel["OBR.F4.R1.C1"] == "3024-7"
    assert cancel["ORC.F16.R1.C2"] == "Duplicate order"
    assert cancel["MSH.F10"] == "ORM-000124"


def test_a_revoked_request_can_be_cancelled_but_not_sent_as_new():
    # Given a request the clinician revoked
    order = a_fake_order(service_request=a_service_request(status="revoked"))

    # When it is sent as new, it is refused; as a cancellation, it is built with status CA
    with pytest.raises(OrmBuildError, match=r"ServiceRequest/sr-1: status is 'revoked'"):
        build_new_order(envelope(), order)
    parsed = hl7.parse(build_cancel_order(envelope(), order))
    assert (parsed["ORC.F1"], parsed["ORC.F5"]) == ("CA", "CA")


# --- priority ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("stat", "S"), ("asap", "A"), ("urgent", "A"), ("routine", "R"), (None, "R")],
)
def test_priority_maps_to_obr_27_component_6(priority, expected):
    # Given a request with that priority (none means routine in FHIR)
    request = a_service_request(**({"priority": priority} if priority else {}))

    # When the order is built
    er7 = build_new_order(envelope(), a_fake_order(service_request=request))

    # Then OBR-27.6 (TQ priority) holds the HL7 table 0027 code
    assert obr_of(strict_hl7apy(er7)).obr_27.tq_6.to_er7() == expected
    assert hl7.parse(er7)["OBR.F27.R1.C6"] == expected


# --- codes ------------------------------------------------------------------------------------------


def test_loinc_is_the_primary_code_and_other_systems_keep_a_local_name():
    # Given a request coded locally first and in LOINC second
    request = a_service_request(
        code={
            "coding": [
                {
                    "system": "http://acme.example/lab-compendium",
                    "code": "GLU1",
                    "display": "Glucose, fasting",
                },
                {"system": "http://loinc.org", "code": "1558-6", "display": "Fasting glucose"},
            ]
        }
    )

    # When built for a lab that calls the compendium 99ACME, and for one with no agreed name
    named = hl7.parse(
        build_new_order(
            envelope(coding_systems={"http://acme.example/lab-compendium": "99ACME"}),
            a_fake_order(service_request=request),
        )
    )
    unnamed = hl7.parse(build_new_order(envelope(), a_fake_order(service_request=request)))

    # Then LOINC is OBR-4's identifier and the local code its alternate
    assert [named[f"OBR.F4.R1.C{n}"] for n in range(1, 7)] == [
        "1558-6",
        "Fasting glucose",
        "LN",
        "GLU1",
        "Glucose, fasting",
        "99ACME",
    ]
    assert unnamed["OBR.F4.R1.C6"] == "L"


def test_a_snomed_coded_request_is_sent_with_system_sct():
    # Given a request coded in SNOMED CT only
    request = a_service_request(
        code={
            "coding": [
                {"system": "http://snomed.info/sct", "code": "26604007", "display": "Complete blood count"}
            ]
        }
    )

    # When built, Then OBR-4 names the system SCT
    parsed = hl7.parse(build_new_order(envelope(), a_fake_order(service_request=request)))
    assert (parsed["OBR.F4.R1.C1"], parsed["OBR.F4.R1.C3"]) == ("26604007", "SCT")


@pytest.mark.parametrize(
    "code",
    [None, {"text": "Blood sugar"}, {"coding": [{"system": "http://loinc.org", "display": "Glucose"}]}],
    ids=["no code", "text only", "coding without a code"],
)
def test_a_request_without_a_coded_test_is_refused(code):
    # Given a request whose test is not coded
    request = a_service_request()
    if code is None:
        del request["code"]
    else:
        request["code"] = code

    # When the order is built, Then the error names the request and what is missing
    with pytest.raises(OrmBuildError) as raised:
        build_new_order(envelope(), a_fake_order(service_request=request))
    assert raised.value.subject == "ServiceRequest/sr-1"
    assert "code has no coding with a code" in str(raised.value)


def test_a_patient_without_an_identifier_is_refused():
    # Given a patient with no identifier value (only an old one)
    patient = a_patient(identifier=[{"use": "old", "system": "urn:oid:1.2.3", "value": "OLD-1"}])

    # When the order is built, Then the error names the patient and PID-3, not the patient's name
    with pytest.raises(OrmBuildError, match=r"^Patient/fake-1: has no identifier") as raised:
        build_new_order(envelope(), a_fake_order(patient=patient))
    assert "PID-3" in raised.value.reason
    assert "Testpatient" not in str(raised.value)


def test_resources_of_another_patient_are_refused():
    # Given the CBC order (for Patient/example) with a different patient (Patient/pat2)
    order = OrderResources(
        service_request=sample("us-core__servicerequest-cbc.json"),
        patient=sample("fhir-r4-spec__patient-example-b.json"),
    )

    # When the order is built, Then it is refused before anything is sent
    with pytest.raises(
        OrmBuildError, match=r"ServiceRequest/cbc: subject refers to Patient/example, not Patient/pat2"
    ):
        build_new_order(envelope(), order)


def test_a_specimen_collected_for_another_request_is_refused():
    # Given the CBC order and the fhir-test-cases specimen, which was taken for ServiceRequest/example
    order = OrderResources(
        service_request=sample("us-core__servicerequest-cbc.json"),
        patient=sample("fhir-test-cases__patient-example.json"),
        specimen=sample("fhir-test-cases__specimen-example.json"),
    )

    # When the order is built, Then the mismatch is named
    with pytest.raises(OrmBuildError, match=r"^Specimen/101: was collected for another request"):
        build_new_order(envelope(), order)


def test_a_value_too_long_for_hl7_is_refused_without_quoting_it():
    # Given a family name longer than an HL7 ST value may be (199 characters)
    patient = a_patient(name=[{"family": "Testpatient" * 20, "given": ["Fakeperson"]}])

    # When the order is built, Then hl7apy's 2.5.1 check refuses it, naming the segment only
    with pytest.raises(
        OrmBuildError, match=r"PID \(segment 2\) has a value HL7 v2\.5\.1 does not allow"
    ) as raised:
        build_new_order(envelope(), a_fake_order(patient=patient))
    assert "Testpatient" not in str(raised.value)


def test_a_practitioner_role_orders_with_its_practitioner_and_phone():
    # Given a request made by the spec's PractitionerRole, given with its Practitioner
    request = a_service_request(requester={"reference": "PractitionerRole/example"})
    order = a_fake_order(
        service_request=request,
        practitioner_role=sample("fhir-test-cases__practitionerrole-example.json"),
        practitioner=sample("fhir-test-cases__practitioner-example.json"),
    )

    # When the order is built
    parsed = hl7.parse(build_new_order(envelope(), order))

    # Then the person orders (ORC-12, OBR-16) and the role's work phone is the call-back number
    assert (parsed["ORC.F12.R1.C1"], parsed["ORC.F12.R1.C2"]) == ("23", "Careful")
    assert parsed["OBR.F16.R1.C2"] == "Careful"
    assert (parsed["ORC.F14.R1.C2"], parsed["ORC.F14.R1.C12"]) == ("WPN", "(03) 5555 6473")


def test_a_practitioner_role_without_its_practitioner_is_refused():
    request = a_service_request(requester={"reference": "PractitionerRole/example"})
    order = a_fake_order(
        service_request=request, practitioner_role=sample("fhir-test-cases__practitionerrole-example.json")
    )
    with pytest.raises(OrmBuildError, match=r"^PractitionerRole/example: was given without its Practitioner"):
        build_new_order(envelope(), order)


# --- MSH, PV1, IN1 ----------------------------------------------------------------------------------


def test_msh_carries_the_envelope_the_version_and_the_injected_clock_in_utc():
    # Given an envelope for a test system whose clock runs in UTC+2
    clock = lambda: datetime(2025, 3, 14, 17, 9, 26, tzinfo=timezone(timedelta(hours=2)))  # noqa: E731
    env = envelope(message_control_id="CTRL-42", processing_id="T", receiving_application="LIS", clock=clock)

    # When the order is built
    er7 = build_new_order(env, a_fake_order())

    # Then MSH says who sends what to whom, when (UTC), under which control id and version
    msh = strict_hl7apy(er7).msh
    assert msh.msh_10.to_er7() == "CTRL-42"
    assert msh.msh_12.to_er7() == "2.5.1"
    assert msh.msh_9.to_er7() == "ORM^O01^ORM_O01"
    parsed = hl7.parse(er7)
    assert parsed["MSH.F10"] == "CTRL-42"
    assert parsed["MSH.F12"] == "2.5.1"
    assert parsed["MSH.F7"] == "20250314150926+0000"
    assert parsed["MSH.F11"] == "T"
    assert [parsed[f"MSH.F{n}"] for n in (3, 4, 5, 6)] == ["EHR", "clinic-a", "LIS", "acme-lab"]
    assert parsed["MSH.F18"] == ""  # plain ASCII needs no character set


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"processing_id": "X"}, "processing_id"),
        ({"message_control_id": "x" * 21}, "message_control_id"),
        ({"message_control_id": "a|b"}, "message_control_id"),
        ({"sending_facility": "a-tenant-name-longer-than-twenty"}, "sending_facility"),
    ],
)
def test_an_unusable_envelope_is_refused(overrides, reason):
    with pytest.raises(OrmBuildError, match=reason) as raised:
        envelope(**overrides)
    assert raised.value.subject == "OrderEnvelope"


def test_a_naive_clock_is_refused():
    with pytest.raises(OrmBuildError, match="naive datetime"):
        build_new_order(envelope(clock=lambda: datetime(2025, 3, 14, 15, 9, 26)), a_fake_order())


def test_encounter_class_fills_pv1_2():
    # Given the spec's emergency encounter (now inpatient) for Patient/example, and a request in it
    encounter = sample("fhir-r4-spec__encounter-example-emerg.json")
    request = a_service_request(
        subject={"reference": "Patient/example"}, encounter={"reference": "Encounter/emerg"}
    )
    order = OrderResources(
        service_request=request, patient=sample("fhir-test-cases__patient-example.json"), encounter=encounter
    )

    # When the order is built, Then PV1-2 is the patient class of the encounter's current class (IMP)
    er7 = build_new_order(envelope(), order)
    assert strict_hl7apy(er7).orm_o01_patient.orm_o01_patient_visit.pv1.pv1_2.to_er7() == "I"


def test_coverage_and_payer_add_an_in1_segment():
    # Given the patient's own coverage with a payer organisation
    coverage = {
        "resourceType": "Coverage",
        "id": "cov-1",
        "status": "active",
        "beneficiary": {"reference": "Patient/fake-1"},
        "relationship": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}
            ]
        },
        "subscriberId": "SUB-778",
        "period": {"start": "2025-01-01"},
        "payor": [{"reference": "Organization/payer-1"}],
        "class": [
            {"type": {"coding": [{"code": "plan"}]}, "value": "PLAN-GOLD", "name": "Gold & Silver Plan"},
            {"type": {"coding": [{"code": "group"}]}, "value": "GRP-12", "name": "Fake Employer"},
        ],
    }
    payer = {
        "resourceType": "Organization",
        "id": "payer-1",
        "name": "Fake Mutual Insurance",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.9", "value": "PAYER-55"}],
    }

    # When the order is built
    er7 = build_new_order(envelope(), a_fake_order(coverage=coverage, payer=payer))

    # Then IN1 (in the patient group, after PV1) carries plan, company, group, policy and insured
    strict = strict_hl7apy(er7)
    in1 = strict.orm_o01_patient.orm_o01_insurance.in1
    assert in1.in1_3.cx_1.to_er7() == "PAYER-55"
    parsed = hl7.parse(er7)
    assert [line[:3] for line in er7.split("\r")] == ["MSH", "PID", "PV1", "IN1", "ORC", "OBR"]
    assert parsed["IN1.F2.R1.C1"] == "PLAN-GOLD"
    assert parsed["IN1.F2.R1.C2"] == "Gold & Silver Plan"
    assert parsed["IN1.F3.R1.C4.S2"] == "2.16.840.1.113883.19.9"
    assert parsed["IN1.F4"] == "Fake Mutual Insurance"
    assert parsed["IN1.F8"] == "GRP-12"
    assert parsed["IN1.F12"] == "20250101"
    assert parsed["IN1.F16.R1.C1"] == "Testpatient"
    assert parsed["IN1.F17.R1.C1"] == "SEL"
    assert parsed["IN1.F36"] == "SUB-778"


def test_non_ascii_text_is_declared_as_utf8():
    # Given a patient whose name is not plain ASCII
    patient = a_patient(name=[{"family": "Testpatiënt", "given": ["Zoë"]}])

    # When the order is built, Then MSH-18 declares UTF-8 and the name reads back intact
    parsed = hl7.parse(build_new_order(envelope(), a_fake_order(patient=patient)))
    assert parsed["MSH.F18"] == "UNICODE UTF-8"
    assert (parsed["PID.F5.R1.C1"], parsed["PID.F5.R1.C2"]) == ("Testpatiënt", "Zoë")


def test_the_source_resources_are_not_modified():
    # Given the shared CBC order
    request = sample("us-core__servicerequest-cbc.json")
    before = copy.deepcopy(request)

    # When an order and its cancellation are built, Then the input is as it was
    order = OrderResources(service_request=request, patient=sample("fhir-test-cases__patient-example.json"))
    build_new_order(envelope(), order)
    build_cancel_order(envelope(), order)
    assert request == before
