"""ORM^O01 / OML^O21 → ServiceRequest: what a clinician would find in the chart after an order from
another facility arrives (and after it is changed or cancelled).

Messages are built here (small, obviously fake) or read from the shared reference pairs
(Microsoft FHIR-Converter, CDC ReportStream) and raw samples; those tests skip when the shared
folder is absent. Every produced resource must validate with fhir.resources (R4B).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hl7_support import LAB_SCOPE, Endpoint, endpoint

from ehr.hl7v2 import er7
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, UnsupportedMessageError, map_message
from ehr.hl7v2.mapping.orders import map_order

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
PAIRS = SHARED / "hl7v2-to-fhir"
SAMPLES = SHARED / "hl7v2"
LOINC = "http://loinc.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

MSH = "MSH|^~\\&|CLINICEHR|NORTH CLINIC|EHR|ACME|20240101120000||ORM^O01|{id}|P|2.5.1"
PID = "PID|1||MRN-1^^^NORTH^MR||DOE^JANE||19800101|F"
PV1 = "PV1|1|O|CLINIC^1||||||||||||||||V-100^^^NORTH^VN"
PROVIDER = "1234^WELBY^MARCUS^^^DR^^^NPI"


def order_message(
    *,
    control: str = "NW",
    status: str = "",
    placer: str = "PL-1^CLINICEHR",
    code: str = "2345-7^Glucose^LN",
    extra: tuple[str, ...] = (),
    control_id: str = "ORM-1",
) -> str:
    return "\r".join(
        [
            MSH.format(id=control_id),
            PID,
            PV1,
            f"ORC|{control}|{placer}|||{status}||||20240101115500+0000|||{PROVIDER}",
            f"OBR|1|{placer}||{code}|||20240101115000+0000|||||||||{PROVIDER}|||||||||||^^^^^S",
            *extra,
        ]
    )


def ctx_for(message: er7.Message) -> MappingContext:
    return MappingContext("acme-lab", message.sending_application, message.sending_facility)


def run(text: str) -> Mapping:
    message = er7.parse(text)
    return map_message(message, ctx_for(message))


def run_file(path: Path) -> Mapping:
    if not path.is_file():
        pytest.skip(f"shared sample {path.name} is not here")
    message = er7.parse(er7.split_messages(er7.decode(path.read_bytes()))[0][0])
    return map_order(message, ctx_for(message))


def resources(mapping: Mapping, resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in mapping.bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def entry_of(mapping: Mapping, resource_type: str) -> dict[str, Any]:
    return next(e for e in mapping.bundle["entry"] if e["resource"]["resourceType"] == resource_type)


def by_full_url(mapping: Mapping, full_url: str) -> dict[str, Any]:
    return next(e["resource"] for e in mapping.bundle["entry"] if e["fullUrl"] == full_url)


def identifier_of(resource: dict[str, Any], type_code: str) -> dict[str, Any]:
    return next(i for i in resource["identifier"] if i["type"]["coding"][0]["code"] == type_code)


def expected_service_requests(name: str) -> list[dict[str, Any]]:
    bundle = json.loads((PAIRS / f"{name}.expected.json").read_text())
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest"]


def assert_valid(mapping: Mapping) -> None:
    for entry in mapping.bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# -- a new order ------------------------------------------------------------------------------


def test_a_new_lab_order_becomes_an_active_service_request_with_its_code_and_placer_number() -> None:
    # Given a new order (ORC-1 NW) for a LOINC-coded glucose test
    # When it is mapped
    mapping = run(order_message())
    # Then one ServiceRequest is an active order for that test, keyed on the placer number
    (request,) = resources(mapping, "ServiceRequest")
    assert request["status"] == "active"
    assert request["intent"] == "order"
    assert request["code"]["coding"][0] == {"system": LOINC, "code": "2345-7", "display": "Glucose"}
    placer = identifier_of(request, "PLAC")
    assert placer["value"] == "PL-1"
    assert placer["type"]["coding"][0]["system"] == V2_0203
    assert entry_of(mapping, "ServiceRequest")["request"] == {
        "method": "PUT",
        "url": f"ServiceRequest?identifier={placer['system']}|PL-1",
    }
    assert_valid(mapping)


def test_the_order_carries_category_priority_dates_requester_and_patient() -> None:
    # Given a new stat order with an ordering provider identified by NPI
    mapping = run(order_message())
    request = resources(mapping, "ServiceRequest")[0]
    # Then it is a laboratory order, stat, authored at ORC-9, for the time OBR-7 gives
    assert request["category"][0]["coding"][0]["code"] == "108252007"
    assert request["priority"] == "stat"
    assert request["authoredOn"] == "2024-01-01T11:55:00+00:00"
    assert request["occurrenceDateTime"] == "2024-01-01T11:50:00+00:00"
    # And the requester is the NPI-identified Practitioner, the subject the PID's patient
    requester = by_full_url(mapping, request["requester"]["reference"])
    assert requester["identifier"][0] == {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234"}
    patient = by_full_url(mapping, request["subject"]["reference"])
    assert patient["identifier"][0]["value"] == "MRN-1"


def test_the_visit_is_created_only_if_absent_so_an_order_never_overwrites_the_adt_encounter() -> None:
    # Given an order whose PV1 names visit V-100
    mapping = run(order_message())
    request = resources(mapping, "ServiceRequest")[0]
    # Then the ServiceRequest points at an Encounter entry that is a conditional create on the visit
    entry = next(e for e in mapping.bundle["entry"] if e["fullUrl"] == request["encounter"]["reference"])
    assert entry["request"]["method"] == "POST"
    assert "V-100" in entry["request"]["ifNoneExist"]


def test_a_local_order_code_keeps_a_local_system() -> None:
    # Given an order coded in the sender's own code table
    mapping = run(order_message(code="GLU^Glucose fasting^99LOCAL"))
    # Then the code keeps a local system of this tenant (not LOINC)
    coding = resources(mapping, "ServiceRequest")[0]["code"]["coding"][0]
    assert coding["code"] == "GLU"
    assert coding["system"].startswith("urn:ehr:hl7v2:acme-lab:cs:")


def test_notes_and_diagnoses_of_the_order_become_note_and_reason() -> None:
    # Given an order with a comment and a diagnosis
    extra = ("NTE|1||Patient fasting since 8pm", "DG1|1||E11.9^Type 2 diabetes^I10")
    mapping = run(order_message(extra=extra))
    request = resources(mapping, "ServiceRequest")[0]
    # Then the comment is a note and the diagnosis (ICD-10-CM) the reason
    assert request["note"] == [{"text": "Patient fasting since 8pm"}]
    assert request["reasonCode"][0]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/icd-10-cm",
        "code": "E11.9",
        "display": "Type 2 diabetes",
    }


def test_ask_at_order_entry_answers_become_supporting_observations() -> None:
    # Given an order with an AOE answer (fasting duration, in hours)
    extra = ("OBX|1|NM|49541-6^Fasting duration^LN||12|h^hours^UCUM|||||O",)
    mapping = run(order_message(extra=extra))
    request = resources(mapping, "ServiceRequest")[0]
    # Then the answer is an Observation the order references, with its value in UCUM
    (answer_ref,) = request["supportingInfo"]
    answer = by_full_url(mapping, answer_ref["reference"])
    assert answer["code"]["coding"][0]["code"] == "49541-6"
    assert answer["valueQuantity"] == {
        "value": 12,
        "unit": "hours",
        "system": "http://unitsofmeasure.org",
        "code": "h",
    }
    assert_valid(mapping)


# -- status: order control and order status ------------------------------------------------------


@pytest.mark.parametrize(
    ("control", "status", "expected"),
    [
        ("NW", "", "active"),
        ("CA", "", "revoked"),
        ("OC", "", "revoked"),
        ("DC", "", "revoked"),
        ("HD", "", "on-hold"),
        ("RL", "", "active"),
        ("XO", "", "active"),
        ("SC", "CM", "completed"),
        ("SC", "HD", "on-hold"),
        ("SC", "CA", "revoked"),
        ("NW", "IP", "active"),
        ("SC", "ER", "entered-in-error"),
    ],
)
def test_order_control_and_order_status_set_the_service_request_status(
    control: str, status: str, expected: str
) -> None:
    # Given an order group with ORC-1 (order control) and ORC-5 (order status)
    mapping = run(order_message(control=control, status=status))
    # Then ORC-5 decides the status when present, else ORC-1
    assert resources(mapping, "ServiceRequest")[0]["status"] == expected


def test_a_status_change_without_a_status_is_kept_active_with_a_warning() -> None:
    # Given ORC-1 SC (status changed) that does not say the new status
    mapping = run(order_message(control="SC"))
    # Then the order stays active and the ACK warns about ORC-5
    assert resources(mapping, "ServiceRequest")[0]["status"] == "active"
    assert any(w.segment == "ORC" and w.field == 5 for w in mapping.warnings)


def test_a_cancel_without_order_detail_only_patches_the_status_of_the_same_order() -> None:
    # Given a cancellation that carries only the ORC (no OBR), as placers usually send it
    text = "\r".join([MSH.format(id="ORM-2"), PID, "ORC|CA|PL-1^CLINICEHR"])
    mapping = run(text)
    # Then the only entry is a conditional JSON Patch setting the order's status to revoked
    (entry,) = mapping.bundle["entry"]
    new_order = entry_of(run(order_message()), "ServiceRequest")
    assert entry["request"] == {"method": "PATCH", "url": new_order["request"]["url"]}
    assert entry["resource"]["contentType"] == "application/json-patch+json"
    operations = json.loads(base64.b64decode(entry["resource"]["data"]))
    assert operations == [{"op": "replace", "path": "/status", "value": "revoked"}]


def test_an_unknown_order_control_is_refused_naming_orc_1() -> None:
    # Given an ORC-1 value that is not an order control
    with pytest.raises(MappingError) as raised:
        run(order_message(control="ZZ"))
    # Then the sender is told which field and that it is a table value problem
    assert (raised.value.segment, raised.value.field, raised.value.code) == ("ORC", 1, "103")


def test_an_order_status_outside_table_0038_falls_back_to_order_control_with_a_warning() -> None:
    # Given ORC-5 filled with an order control code by mistake (as a real sample does)
    mapping = run(order_message(control="CA", status="NW"))
    # Then ORC-1 decides and the ACK warns about ORC-5
    assert resources(mapping, "ServiceRequest")[0]["status"] == "revoked"
    assert any(w.field == 5 for w in mapping.warnings)


# -- keys and replays ----------------------------------------------------------------------------


def test_a_replay_maps_to_the_same_entries() -> None:
    # Given the same order mapped twice
    first, second = run(order_message()), run(order_message())
    # Then the fullUrls and conditional urls are the same (the processor writes new versions)
    assert [(e["fullUrl"], e["request"]) for e in first.bundle["entry"]] == [
        (e["fullUrl"], e["request"]) for e in second.bundle["entry"]
    ]


def test_an_order_update_targets_the_same_service_request() -> None:
    # Given a new order and a later change of the same placer number with another test
    new = entry_of(run(order_message()), "ServiceRequest")
    changed = entry_of(
        run(order_message(control="XO", code="2339-0^Glucose^LN", control_id="ORM-9")), "ServiceRequest"
    )
    # Then both upsert the same ServiceRequest
    assert changed["request"]["url"] == new["request"]["url"]
    assert changed["resource"]["code"]["coding"][0]["code"] == "2339-0"


def test_an_order_without_placer_or_filler_number_is_refused() -> None:
    # Given an order without any order number
    with pytest.raises(MappingError) as raised:
        run(order_message(placer=""))
    # Then the sender is told the placer order number is missing
    assert raised.value.field == 2
    assert raised.value.code == "101"


def test_an_order_without_pid_is_refused() -> None:
    # Given an order message without a PID
    text = order_message().replace(PID + "\r", "")
    with pytest.raises(MappingError) as raised:
        run(text)
    # Then the sender is told the patient is missing
    assert raised.value.segment == "PID"


def test_end_to_end_a_cancel_revokes_the_stored_order_and_keeps_its_code(auth_settings, issuer) -> None:
    # Given a lab endpoint that received a new order
    lab: Endpoint = endpoint(auth_settings, issuer.mint(tenant="acme-lab", scope=LAB_SCOPE))
    assert lab.post(order_message()).code == "AA"
    # When the placer cancels it with an ORC only
    ack = lab.post("\r".join([MSH.format(id="ORM-2"), PID, "ORC|CA|PL-1^CLINICEHR"]))
    # Then the one stored ServiceRequest is revoked and still says what was ordered
    assert ack.code == "AA"
    (stored,) = lab.search("acme-lab", "ServiceRequest", "identifier=PL-1")
    assert stored["status"] == "revoked"
    assert stored["code"]["coding"][0]["code"] == "2345-7"


def test_end_to_end_cancelling_an_unknown_order_is_an_error(auth_settings, issuer) -> None:
    # Given a lab endpoint that never received order PL-404
    lab: Endpoint = endpoint(auth_settings, issuer.mint(tenant="acme-lab", scope=LAB_SCOPE))
    # When a cancellation for it arrives
    ack = lab.post("\r".join([MSH.format(id="ORM-3"), PID, "ORC|CA|PL-404^CLINICEHR"]))
    # Then the sender gets an application error and nothing is stored
    assert ack.code == "AE"
    assert lab.search("acme-lab", "ServiceRequest", "identifier=PL-404") == []


# -- the reference pairs and samples --------------------------------------------------------------


def test_orm_with_two_orders_matches_the_reference_codes_and_placer_numbers() -> None:
    # Given Microsoft's ORM-O01-03 (two ORC/OBR groups)
    mapping = run_file(PAIRS / "msft-fhir-converter__ORM-O01-03.hl7")
    expected = expected_service_requests("msft-fhir-converter__ORM-O01-03")
    # Then the orders, their LOINC codes and placer/filler numbers are the reference's
    ours = {
        (identifier_of(r, "PLAC")["value"], r["code"]["coding"][0]["code"])
        for r in resources(mapping, "ServiceRequest")
    }
    theirs = {(identifier_of(r, "PLAC")["value"], r["code"]["coding"][0]["code"]) for r in expected}
    assert ours == theirs
    assert all(
        r["status"] == "active" and r["intent"] == "order" for r in resources(mapping, "ServiceRequest")
    )
    assert_valid(mapping)


def test_orm_o01_01_matches_the_reference_status_code_identifiers_and_authored_on() -> None:
    # Given Microsoft's ORM-O01-01
    mapping = run_file(PAIRS / "msft-fhir-converter__ORM-O01-01.hl7")
    (ours,) = resources(mapping, "ServiceRequest")
    (theirs,) = expected_service_requests("msft-fhir-converter__ORM-O01-01")
    # Then status, code, placer and filler numbers agree; authoredOn is the same instant
    assert ours["status"] == theirs["status"]
    assert ours["code"]["coding"][0]["code"] == theirs["code"]["coding"][0]["code"]
    assert ours["code"]["coding"][0]["system"] == theirs["code"]["coding"][0]["system"]
    assert identifier_of(ours, "PLAC")["value"] == identifier_of(theirs, "PLAC")["value"]
    assert identifier_of(ours, "FILL")["value"] == identifier_of(theirs, "FILL")["value"]
    assert ours["authoredOn"] == "2021-10-20T11:26:00+02:15"  # = their 2021-10-20T14:41:00+05:30
    assert_valid(mapping)


def test_oml_o21_maps_order_specimen_and_priority_like_the_reference() -> None:
    # Given Microsoft's OML-O21-01 (TQ1 priority R, SPM serum specimen)
    mapping = run_file(PAIRS / "msft-fhir-converter__OML-O21-01.hl7")
    (ours,) = resources(mapping, "ServiceRequest")
    theirs = next(r for r in expected_service_requests("msft-fhir-converter__OML-O21-01") if "code" in r)
    # Then code, priority and the order number agree with the reference
    assert ours["code"]["coding"][0]["code"] == theirs["code"]["coding"][0]["code"] == "57698-3"
    assert ours["priority"] == theirs["priority"] == "routine"
    assert identifier_of(ours, "PLAC")["value"] == "1101"
    # And the specimen is a Specimen of type serum that points back at the order
    (specimen_ref,) = ours["specimen"]
    specimen = by_full_url(mapping, specimen_ref["reference"])
    assert specimen["type"]["coding"][0]["code"] == "ASERU"
    assert specimen["request"][0]["reference"] == entry_of(mapping, "ServiceRequest")["fullUrl"]
    assert_valid(mapping)


def test_reportstream_newborn_screening_order_has_one_request_with_its_aoe_answers() -> None:
    # Given ReportStream's ORM sample: one ORC, two OBR with the same placer number, 12 AOE OBX
    mapping = run_file(PAIRS / "cdc-reportstream__sample_orm_20230809-001.hl7")
    # Then, as in the reference, there is one ServiceRequest with the first OBR's code
    (ours,) = resources(mapping, "ServiceRequest")
    assert ours["code"]["coding"][0] == {
        "system": LOINC,
        "code": "54089-8",
        "display": "Newborn screening panel American Health Information Community (AHIC)",
    }
    assert identifier_of(ours, "PLAC") == {
        "system": "urn:oid:1.2.840.114350.1.13.145.2.7.2.695071",
        "value": "421832901",
        "type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
    }
    # And the repeated order number is reported, and the 12 answers support the order
    assert any(w.segment == "OBR" for w in mapping.warnings)
    assert len(ours["supportingInfo"]) == 12
    weight = by_full_url(mapping, ours["supportingInfo"][0]["reference"])
    assert weight["code"]["coding"][0]["code"] == "8339-4"
    assert weight["valueQuantity"]["value"] == 1769.859285
    assert_valid(mapping)


def test_orc_numbers_win_over_obr_numbers_as_in_the_reference() -> None:
    # Given ReportStream's field-level pair with different ORC-2/3 and OBR-2/3 (a patient id added:
    # the pair has none, and an order needs its patient)
    path = (
        PAIRS
        / "field-level"
        / "cdc-reportstream__orc_obr-to-servicerequest_diagnosticreport-prefers-orc-for-identifiers.hl7"
    )
    if not path.is_file():
        pytest.skip("shared pair absent")
    text = er7.decode(path.read_bytes()).replace("PID|1", "PID|1||P-1^^^TEST^MR", 1)
    message = er7.parse(text)
    mapping = map_order(message, ctx_for(message))
    # Then the placer and filler identifiers are ORC's
    (ours,) = resources(mapping, "ServiceRequest")
    assert identifier_of(ours, "PLAC")["value"] == "ORC Placer Identifier"
    assert identifier_of(ours, "FILL")["value"] == "ORC Filler Identifier"


def test_obr_fields_give_code_requester_and_reasons_as_in_the_reference() -> None:
    # Given ReportStream's pair with every OBR field populated (a patient id added)
    path = (
        PAIRS
        / "field-level"
        / "cdc-reportstream__orc_obr-to-servicerequest_diagnosticreport-obr-populated.hl7"
    )
    if not path.is_file():
        pytest.skip("shared pair absent")
    text = er7.decode(path.read_bytes()).replace("PID|1", "PID|1||P-1^^^TEST^MR", 1)
    message = er7.parse(text)
    mapping = map_order(message, ctx_for(message))
    (ours,) = resources(mapping, "ServiceRequest")
    # Then the code, the OBR-31 reasons and the OBR-16 requester are there
    assert ours["code"]["coding"][0]["code"] == "123"
    assert [r["coding"][0]["display"] for r in ours["reasonCode"]] == ["ReasonForStudy", "ReasonForStudy2"]
    assert by_full_url(mapping, ours["requester"]["reference"])["name"][0]["family"] == "Ordering"
    assert_valid(mapping)


def test_nte_escape_sequences_are_decoded_into_readable_notes() -> None:
    # Given the HL7-dotnetcore ORM whose NTEs use \.br\, \H\ \N\ and \X0D\\X0A\
    mapping = run_file(SAMPLES / "hl7-dotnetcore__Sample-ORM__escapes.hl7")
    notes = [n["text"] for n in resources(mapping, "ServiceRequest")[0]["note"]]
    # Then the notes are plain lines, with no escape sequence left
    assert notes == [
        "some text\nsome text after new line\nissue Efferent-Health#82",
        "some text\nsome text after new line\nissue Efferent-Health#81",
    ]


def test_a_sample_with_a_bom_and_a_misused_order_status_still_maps() -> None:
    # Given Microsoft's LAB-ORM-1 (UTF-8 BOM, LF line ends, ORC-5 holding "NW")
    mapping = run_file(SAMPLES / "msft-fhir-converter__LAB-ORM-1__ORM_O01.hl7")
    (ours,) = resources(mapping, "ServiceRequest")
    # Then the hemogram order is active, with its hematology section kept in the category
    assert ours["status"] == "active"
    assert ours["code"]["coding"][0]["code"] == "24317-0"
    assert {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM"} in ours["category"][0][
        "coding"
    ]
    assert_valid(mapping)


def test_a_supply_order_is_refused_as_not_an_observation_request() -> None:
    # Given Microsoft's ORM-O01-05, whose only order is a supply request (RQD)
    path = PAIRS / "msft-fhir-converter__ORM-O01-05.hl7"
    with pytest.raises(MappingError) as raised:
        run_file(path)
    # Then it is refused (nothing would be stored), and the ACK says why
    assert raised.value.code == "200"
    assert "observation request" in raised.value.reason


def test_a_diet_order_message_is_unsupported_by_the_dispatcher() -> None:
    # Given HAPI's OMD^O03 diet order
    path = SAMPLES / "hapi-hl7v2__omd_o03__diet_order.hl7"
    if not path.is_file():
        pytest.skip("shared sample absent")
    # When the dispatcher looks for a mapper, then it answers unsupported (ACK AR)
    with pytest.raises(UnsupportedMessageError):
        run(er7.decode(path.read_bytes()))


@pytest.mark.parametrize(
    "name",
    [
        "msft-fhir-converter__ORM-O01-01",
        "msft-fhir-converter__ORM-O01-03",
        "msft-fhir-converter__OML-O21-01",
        "msft-fhir-converter__MDHHS-OML-O21-1",
        "cdc-reportstream__sample_orm_20230809-001",
    ],
)
def test_every_resource_mapped_from_a_reference_pair_is_valid_r4(name: str) -> None:
    # Given a reference input, when it is mapped, then the whole transaction would be accepted
    mapping = run_file(PAIRS / f"{name}.hl7")
    assert resources(mapping, "ServiceRequest")
    assert_valid(mapping)
