"""ADT^A01/A03/A04/A08/A31 and A40 → FHIR transaction Bundles (ehr.hl7v2.mapping.adt)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from ehr.fhir.bundles import BundleProcessor
from ehr.fhir.cursors import CursorCodec
from ehr.fhir.outcome import OperationOutcomeError
from ehr.fhir.searching import SearchEngine
from ehr.fhir.service import FhirService
from ehr.fhir.validation.api import validate_bundle
from ehr.hl7v2 import er7
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, map_message
from ehr.hl7v2.mapping.adt import map_adt, map_adt_merge, patient_entry
from ehr.store.memory import InMemoryRecordStore

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
PAIRS = DATA / "hl7v2-to-fhir"
SAMPLES = DATA / "hl7v2"
needs_data = pytest.mark.skipif(not PAIRS.is_dir(), reason="the shared HL7 v2 samples are not present")

MSH = "MSH|^~\\&|ADT1|GOOD HEALTH|EHR|EHR|20240101120000+0000||ADT^{event}|MSG{event}|P|2.5.1"


def parse(text: str) -> er7.Message:
    return er7.parse(er7.split_messages(er7.decode(text))[0][0])


def context(message: er7.Message) -> MappingContext:
    return MappingContext(
        "tenant-a", message.sending_application, message.sending_facility, datetime(2024, 1, 1, tzinfo=UTC)
    )


def run(text: str) -> Mapping:
    message = parse(text)
    return map_message(message, context(message))


def adt(event: str, *segments: str) -> str:
    return "\r".join([MSH.format(event=event), *segments])


def from_file(path: Path) -> Mapping:
    message = parse(path.read_bytes().decode("utf-8", "replace"))
    return map_message(message, context(message))


def of_type(mapping: Mapping, resource_type: str) -> list[dict[str, Any]]:
    return [e for e in mapping.bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def one(mapping: Mapping, resource_type: str) -> dict[str, Any]:
    entries = of_type(mapping, resource_type)
    assert len(entries) == 1, [e["request"]["url"] for e in entries]
    return entries[0]


def assert_valid(mapping: Mapping) -> None:
    validate_bundle(mapping.bundle)
    for entry in mapping.bundle["entry"]:
        body = entry["resource"]
        get_fhir_model_class(body["resourceType"]).model_validate(body)


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields (HL7 numbering) and the others empty."""
    values = [fields.get(n, "") for n in range(1, max(fields) + 1)]
    return "|".join([name, *values])


PID = segment(
    "PID",
    {
        1: "1",
        3: "12345^^^HOSP&1.2.3.4&ISO^MR",
        5: "DOE^JANE^Q",
        7: "19800115",
        8: "F",
        11: "1 MAIN ST^^SPRINGFIELD^IL^62701",
        13: "555-1234^PRN^PH",
    },
)
VISIT = {
    1: "1",
    2: "I",
    3: "W1^101^A^HOSP",
    10: "MED",
    19: "V100^^^HOSP&1.2.3.4&ISO^VN",
    44: "20240101080000+0000",
}
PV1 = segment("PV1", VISIT)


def pv1(**changes: str) -> str:
    """PV1 with fields replaced: ``pv1(f2="O", f45="...")``."""
    return segment("PV1", VISIT | {int(k[1:]): v for k, v in changes.items()})


# -- Patient -------------------------------------------------------------------------------------


def test_patient_is_upserted_on_its_mr_identifier_with_the_oid_as_system() -> None:
    # Given an A01 whose PID-3 carries an MR number assigned by an OID authority
    mapping = run(adt("A01", PID, PV1))
    # Then the Patient is a conditional PUT on that identifier, urn:oid system
    patient = one(mapping, "Patient")
    assert patient["request"] == {"method": "PUT", "url": "Patient?identifier=urn:oid:1.2.3.4|12345"}
    assert patient["fullUrl"].startswith("urn:uuid:")
    body = patient["resource"]
    assert body["identifier"][0]["system"] == "urn:oid:1.2.3.4"
    assert body["name"] == [{"family": "DOE", "given": ["JANE", "Q"]}]
    assert (body["birthDate"], body["gender"]) == ("1980-01-15", "female")
    assert body["address"][0]["city"] == "SPRINGFIELD"
    assert body["telecom"] == [{"system": "phone", "value": "555-1234", "use": "home"}]


def test_mr_identifier_is_the_key_even_when_not_first_and_repeats_are_kept_once() -> None:
    # Given PID-3 with an SSN first, then the MR, then the MR again
    pid = "PID|1||999-11-2222^^^SSA^SS~777^^^HOSP^MR~777^^^HOSP^MR||ROE^RICHARD"
    mapping = run(adt("A04", pid))
    patient = one(mapping, "Patient")
    # Then the upsert key is the MR identifier and each identifier appears once
    assert patient["request"]["url"] == "Patient?identifier=urn:ehr:hl7v2:tenant-a:id:hosp|777"
    assert [i["value"] for i in patient["resource"]["identifier"]] == ["999-11-2222", "777"]


def test_identifier_without_authority_is_scoped_to_the_sending_facility() -> None:
    mapping = run(adt("A04", "PID|1||555^^^^MR||ROE^RICHARD"))
    assert one(mapping, "Patient")["request"]["url"] == (
        "Patient?identifier=urn:ehr:hl7v2:tenant-a:id:good-health|555"
    )


def test_escape_sequences_in_names_are_decoded() -> None:
    # Given a family name with an escaped & (\T\) and a given name with an escaped ^ (\S\)
    mapping = run(adt("A08", "PID|1||1^^^HOSP^MR||O\\T\\BRIEN^MARY\\S\\ANN"))
    # Then the Patient's name carries the characters themselves
    assert one(mapping, "Patient")["resource"]["name"] == [{"family": "O&BRIEN", "given": ["MARY^ANN"]}]


def test_explicit_nulls_leave_the_element_out_of_the_replacing_patient() -> None:
    # Given "" (HL7's "delete this value") in sex, address and phone
    mapping = run(adt("A08", 'PID|1||1^^^HOSP^MR||DOE^JOHN||19700101|""|||""||""'))
    body = one(mapping, "Patient")["resource"]
    # Then those elements are absent: the PUT replaces the stored Patient, so the value is deleted
    assert "gender" not in body and "address" not in body and "telecom" not in body
    assert body["birthDate"] == "1970-01-01"


def test_alias_death_marital_status_and_language_are_mapped() -> None:
    pid = segment(
        "PID",
        {
            3: "1^^^HOSP^MR",
            5: "DOE^JOHN",
            9: "SMITH^JOHNNY",
            15: "eng^English^HL70296",
            16: "M^Married",
            29: "200401021230+0100",
            30: "Y",
        },
    )
    body = one(run(adt("A08", pid)), "Patient")["resource"]
    assert body["maritalStatus"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
        "code": "M",
        "display": "Married",
    }
    assert body["communication"][0]["language"]["coding"] == [{"system": "urn:ietf:bcp:47", "code": "en"}]
    assert body["deceasedDateTime"] == "2004-01-02T12:30:00+01:00"
    assert body["name"][1] == {"family": "SMITH", "given": ["JOHNNY"]}


def test_missing_pid3_is_a_mapping_error_at_pid3() -> None:
    with pytest.raises(MappingError) as caught:
        run(adt("A01", "EVN|A01|20240101", "PID|1||^^^HOSP^MR||DOE^JANE", PV1))
    assert (caught.value.segment, caught.value.position, caught.value.field, caught.value.code) == (
        "PID",
        3,
        3,
        "101",
    )


def test_missing_pid_segment_is_a_mapping_error() -> None:
    with pytest.raises(MappingError) as caught:
        run(adt("A01", PV1))
    assert caught.value.segment == "PID"


def test_patient_entry_is_usable_by_other_mappers() -> None:
    message = parse(adt("A01", PID))
    entry = patient_entry(message, context(message))
    assert entry["request"]["url"] == "Patient?identifier=urn:oid:1.2.3.4|12345"
    assert entry["resource"]["resourceType"] == "Patient"


# -- Encounter -----------------------------------------------------------------------------------


def test_a01_encounter_is_in_progress_inpatient_keyed_on_the_visit_number() -> None:
    mapping = run(adt("A01", PID, PV1))
    encounter = one(mapping, "Encounter")
    body = encounter["resource"]
    assert encounter["request"]["url"] == "Encounter?identifier=urn:oid:1.2.3.4|V100"
    assert body["status"] == "in-progress"
    assert body["class"]["code"] == "IMP"
    assert body["period"] == {"start": "2024-01-01T08:00:00+00:00"}
    assert body["subject"]["reference"] == one(mapping, "Patient")["fullUrl"]
    assert_valid(mapping)


def test_a03_encounter_is_finished_with_the_discharge_time() -> None:
    body = one(run(adt("A03", PID, pv1(f45="20240105170000+0000"))), "Encounter")["resource"]
    assert body["status"] == "finished"
    assert body["period"]["end"] == "2024-01-05T17:00:00+00:00"
    assert body["location"][0]["status"] == "completed"


@pytest.mark.parametrize(("event", "klass", "status"), [("A04", "O", "arrived"), ("A08", "P", "planned")])
def test_registration_and_update_statuses(event: str, klass: str, status: str) -> None:
    body = one(run(adt(event, PID, pv1(f2=klass))), "Encounter")["resource"]
    assert body["status"] == status


@pytest.mark.parametrize(
    ("code", "act"), [("I", "IMP"), ("O", "AMB"), ("E", "EMER"), ("P", "PRENC"), ("R", "AMB"), ("B", "IMP")]
)
def test_patient_class_maps_to_v3_act_code(code: str, act: str) -> None:
    body = one(run(adt("A01", PID, pv1(f2=code))), "Encounter")["resource"]
    assert body["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": act,
        "display": body["class"]["display"],
    }


def test_unknown_patient_class_is_unknown_with_a_warning() -> None:
    mapping = run(adt("A01", PID, pv1(f2="ZZ")))
    assert one(mapping, "Encounter")["resource"]["class"]["code"] == "UNK"
    assert [(w.segment, w.field) for w in mapping.warnings] == [("PV1", 2)]


def test_location_is_an_upserted_location_referenced_by_the_encounter() -> None:
    mapping = run(adt("A01", PID, PV1))
    location = one(mapping, "Location")
    assert location["resource"]["identifier"][0]["value"] == "W1^101^A^HOSP"
    assert location["resource"]["physicalType"]["coding"][0]["code"] == "bd"
    assert location["request"]["url"].startswith("Location?identifier=")
    encounter = one(mapping, "Encounter")["resource"]
    assert encounter["location"][0]["location"]["reference"] == location["fullUrl"]


def test_attending_doctor_is_an_upserted_practitioner_participant_atnd() -> None:
    doctor = " 1234^WELBY^MARCUS^^^DR^^^NPI"
    mapping = run(adt("A01", PID, pv1(f7=doctor, f17=doctor)))
    practitioner = one(mapping, "Practitioner")  # attending and admitting: one entry
    assert practitioner["resource"]["identifier"] == [
        {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234"}
    ]
    participants = one(mapping, "Encounter")["resource"]["participant"]
    assert [p["type"][0]["coding"][0]["code"] for p in participants] == ["ATND", "ADM"]
    assert participants[0]["individual"]["reference"] == practitioner["fullUrl"]


def test_doctor_without_an_id_is_a_display_only_participant() -> None:
    mapping = run(adt("A01", PID, pv1(f7="^MOUSE^MICKEY^^^DR")))
    assert of_type(mapping, "Practitioner") == []
    participant = one(mapping, "Encounter")["resource"]["participant"][0]
    assert participant["individual"] == {"display": "DR MICKEY MOUSE"}


def test_without_visit_number_the_encounter_key_is_derived_from_patient_and_admit_time() -> None:
    visit = pv1(f2="E", f19="")
    first, replay = run(adt("A04", PID, visit)), run(adt("A04", PID, visit))
    encounter = one(first, "Encounter")
    assert encounter["request"]["url"] == one(replay, "Encounter")["request"]["url"]
    assert "12345" not in encounter["request"]["url"]  # a hash, not the MRN
    assert [(w.segment, w.field) for w in first.warnings] == [("PV1", 19)]


def test_without_visit_number_or_admit_time_no_encounter_is_written() -> None:
    mapping = run(adt("A04", PID, "PV1|1|O"))
    assert of_type(mapping, "Encounter") == []
    assert [(w.segment, w.field) for w in mapping.warnings] == [("PV1", 19)]


def test_a31_maps_demographics_only() -> None:
    mapping = run(adt("A31", PID, PV1))
    assert [e["resource"]["resourceType"] for e in mapping.bundle["entry"]] == ["Patient"]


def test_a_replay_maps_to_the_same_bundle() -> None:
    assert run(adt("A01", PID, PV1)).bundle == run(adt("A01", PID, PV1)).bundle


# -- A40 merge -----------------------------------------------------------------------------------


def test_a40_upserts_the_survivor_and_patches_the_prior_patient() -> None:
    mapping = run(adt("A40", "EVN|A40|20240101", PID, "MRG|999^^^HOSP&1.2.3.4&ISO^MR"))
    survivor, prior = mapping.bundle["entry"]
    assert survivor["request"] == {"method": "PUT", "url": "Patient?identifier=urn:oid:1.2.3.4|12345"}
    assert survivor["resource"]["link"] == [{"other": {"reference": prior["fullUrl"]}, "type": "replaces"}]
    assert prior["request"] == {"method": "PATCH", "url": "Patient?identifier=urn:oid:1.2.3.4|999"}
    patch = json.loads(base64.b64decode(prior["resource"]["data"]))
    assert patch == [
        {"op": "add", "path": "/active", "value": False},
        {
            "op": "add",
            "path": "/link",
            "value": [{"other": {"reference": survivor["fullUrl"]}, "type": "replaced-by"}],
        },
    ]
    assert mapping.merges == [
        ("Patient?identifier=urn:oid:1.2.3.4|12345", "Patient?identifier=urn:oid:1.2.3.4|999")
    ]
    assert_valid(mapping)


def test_a40_without_mrg_is_a_mapping_error() -> None:
    with pytest.raises(MappingError) as caught:
        run(adt("A40", "EVN|A40|20240101", PID))
    assert caught.value.segment == "MRG"


def test_a40_with_empty_mrg1_is_a_mapping_error_at_mrg1() -> None:
    with pytest.raises(MappingError) as caught:
        run(adt("A40", PID, "MRG|"))
    assert (caught.value.segment, caught.value.field, caught.value.code) == ("MRG", 1, "101")


def test_a40_merging_a_patient_into_itself_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        run(adt("A40", PID, "MRG|12345^^^HOSP&1.2.3.4&ISO^MR"))


# -- through the FHIR transaction processor (in memory) ------------------------------------------


@pytest.fixture
def server() -> tuple[BundleProcessor, SearchEngine]:
    store = InMemoryRecordStore()
    search = SearchEngine(store, CursorCodec(b"k" * 32))
    return BundleProcessor(FhirService(store), search), search


def commit(server: tuple[BundleProcessor, SearchEngine], text: str) -> None:
    server[0].process("tenant-a", run(text).bundle, base="https://ehr.example/fhir")


def stored(server: tuple[BundleProcessor, SearchEngine], resource_type: str) -> list[dict[str, Any]]:
    found = server[1].search("tenant-a", resource_type, {}, base="https://ehr.example/fhir", strict=False)
    return [e["resource"] for e in found.bundle.get("entry", [])]


def test_replayed_admit_then_discharge_keep_one_patient_and_one_finished_encounter(server: Any) -> None:
    commit(server, adt("A01", PID, PV1))
    commit(server, adt("A01", PID, PV1))
    commit(server, adt("A03", PID, pv1(f45="20240105170000+0000")))
    patients, encounters = stored(server, "Patient"), stored(server, "Encounter")
    assert len(patients) == 1 and len(encounters) == 1
    assert encounters[0]["status"] == "finished"
    assert encounters[0]["subject"]["reference"] == f"Patient/{patients[0]['id']}"


def test_merge_marks_the_prior_patient_replaced_by_the_survivor(server: Any) -> None:
    commit(server, adt("A04", "PID|1||999^^^HOSP&1.2.3.4&ISO^MR||DOE^J"))
    commit(server, adt("A40", PID, "MRG|999^^^HOSP&1.2.3.4&ISO^MR"))
    by_mrn = {p["identifier"][0]["value"]: p for p in stored(server, "Patient")}
    prior, survivor = by_mrn["999"], by_mrn["12345"]
    assert prior["active"] is False
    assert prior["name"] == [{"family": "DOE", "given": ["J"]}]  # the prior record's data is kept
    assert prior["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert survivor["link"] == [{"other": {"reference": f"Patient/{prior['id']}"}, "type": "replaces"}]


def test_merge_of_an_unknown_prior_patient_writes_nothing(server: Any) -> None:
    with pytest.raises(OperationOutcomeError) as caught:
        commit(server, adt("A40", PID, "MRG|404^^^HOSP&1.2.3.4&ISO^MR"))
    assert caught.value.status == 404
    assert stored(server, "Patient") == []


# -- shared samples ------------------------------------------------------------------------------


ADT_FILES = sorted(
    [p for p in PAIRS.glob("*ADT*.hl7")] + [p for p in SAMPLES.glob("*.hl7") if "adt" in p.name.lower()]
    if PAIRS.is_dir()
    else []
)
MAPPED = {"A01", "A03", "A04", "A08", "A31", "A40"}


@needs_data
@pytest.mark.parametrize("path", ADT_FILES, ids=[p.stem for p in ADT_FILES])
def test_shared_adt_samples_map_to_valid_bundles(path: Path) -> None:
    message = parse(path.read_bytes().decode("utf-8", "replace"))
    if message.message_type != "ADT" or message.trigger_event not in MAPPED:
        pytest.skip(f"ADT^{message.trigger_event} has no mapper")
    mapper = map_adt_merge if message.trigger_event == "A40" else map_adt
    mapping = mapper(message, context(message))
    assert one(mapping, "Patient")["request"]["url"].startswith("Patient?identifier=")
    assert_valid(mapping)


@needs_data
def test_reference_a01_maps_patient_encounter_and_practitioners() -> None:
    mapping = from_file(PAIRS / "msft-fhir-converter__ADT-A01-02.hl7")
    encounter = one(mapping, "Encounter")["resource"]
    assert encounter["class"]["code"] == "PRENC"
    assert encounter["identifier"][0]["value"] == "40007716"
    assert {p["type"][0]["coding"][0]["code"] for p in encounter["participant"]} == {
        "ATND",
        "REF",
        "CON",
        "ADM",
        "PART",
    }
    assert one(mapping, "Patient")["resource"]["name"][0]["family"] == "EVERYMAN"


@needs_data
def test_cerner_sample_explicit_null_consultant_is_not_a_participant() -> None:
    mapping = from_file(SAMPLES / "python-hl7__sample_msh__ADT_A01_cerner_style.hl7")
    codes = [p["type"][0]["coding"][0]["code"] for p in one(mapping, "Encounter")["resource"]["participant"]]
    assert "CON" not in codes and "ATND" in codes
