"""VXU^V04 → Patient + Immunization per RXA (ehr.hl7v2.mapping.vxu)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from ehr.fhir.validation.api import validate_bundle
from ehr.hl7v2 import er7
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, map_message

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
NIST = DATA / "hl7v2" / "msft-fhir-converter__VXU__NIST_IZ.hl7"

MSH = "MSH|^~\\&|EHR|CLINIC|IIS|STATE|20240101||VXU^V04^VXU_V04|M1|P|2.5.1"
PID = "PID|1||90012^^^MPI^MR||WONG^ELISE||19830615|F"
ORC = "ORC|RE||F-1^IZ"


def segment(name: str, fields: dict[int, str]) -> str:
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def rxa(**changes: str) -> str:
    fields = {1: "0", 2: "1", 3: "20240105", 5: "08^HepB^CVX", 6: "0.5", 7: "mL^mL^UCUM", 20: "CP"}
    return segment("RXA", fields | {int(k[1:]): v for k, v in changes.items()})


def run(*segments: str) -> Mapping:
    message = er7.parse("\r".join([MSH, *segments]))
    ctx = MappingContext(
        "tenant-a", message.sending_application, message.sending_facility, datetime(2024, 1, 1, tzinfo=UTC)
    )
    return map_message(message, ctx)


def immunizations(mapping: Mapping) -> list[dict[str, Any]]:
    return [e for e in mapping.bundle["entry"] if e["resource"]["resourceType"] == "Immunization"]


def only(mapping: Mapping) -> dict[str, Any]:
    found = immunizations(mapping)
    assert len(found) == 1
    return found[0]["resource"]


def assert_valid(mapping: Mapping) -> None:
    validate_bundle(mapping.bundle)
    for entry in mapping.bundle["entry"]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])


def test_administered_vaccine_is_a_completed_immunization_keyed_on_the_filler_number() -> None:
    # Given one administered HepB dose with ORC-3 filler number
    mapping = run(
        PID, ORC, rxa(f15="LOT42", f17="MSD^Merck^MVX"), "RXR|C28161^Intramuscular^NCIT|LA^Left Arm^HL70163"
    )
    entry = immunizations(mapping)[0]
    body = entry["resource"]
    # Then it is upserted on ORC-3 and carries the vaccine, date, dose, lot, manufacturer, route, site
    assert entry["request"] == {
        "method": "PUT",
        "url": "Immunization?identifier=urn:ehr:hl7v2:tenant-a:id:iz|F-1",
    }
    assert body["status"] == "completed"
    assert body["vaccineCode"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/cvx",
        "code": "08",
        "display": "HepB",
    }
    assert body["occurrenceDateTime"] == "2024-01-05"
    assert body["doseQuantity"] == {
        "value": 0.5,
        "unit": "mL",
        "system": "http://unitsofmeasure.org",
        "code": "mL",
    }
    assert body["lotNumber"] == "LOT42"
    assert body["manufacturer"] == {
        "identifier": {"system": "http://terminology.hl7.org/CodeSystem/MVX", "value": "MSD"},
        "display": "Merck",
    }
    assert body["route"]["coding"][0]["code"] == "C28161"
    assert body["site"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0163"
    patient = mapping.bundle["entry"][0]
    assert body["patient"] == {"reference": patient["fullUrl"]}
    assert patient["request"]["url"] == "Patient?identifier=urn:ehr:hl7v2:tenant-a:id:mpi|90012"
    assert_valid(mapping)


def test_refusal_is_not_done_with_the_refusal_reason() -> None:
    body = only(run(PID, ORC, rxa(f6="999", f7="", f18="00^Parental decision^NIP002", f20="RE")))
    assert body["status"] == "not-done"
    assert body["statusReason"]["coding"][0]["code"] == "00"
    assert "doseQuantity" not in body  # 999: amount unknown


def test_refusal_without_reason_gets_patient_objection() -> None:
    body = only(run(PID, ORC, rxa(f20="RE")))
    assert body["statusReason"]["coding"][0]["code"] == "PATOBJ"


def test_not_administered_is_not_done() -> None:
    assert only(run(PID, ORC, rxa(f20="NA")))["status"] == "not-done"


def test_partial_administration_is_completed_and_subpotent() -> None:
    body = only(run(PID, ORC, rxa(f20="PA")))
    assert (body["status"], body["isSubpotent"]) == ("completed", True)


def test_action_code_delete_marks_the_immunization_entered_in_error() -> None:
    body = only(run(PID, ORC, rxa(f21="D")))
    assert body["status"] == "entered-in-error"


def test_historical_record_is_not_a_primary_source() -> None:
    body = only(run(PID, ORC, rxa(f9="01^Historical information^NIP001")))
    assert body["primarySource"] is False
    assert body["reportOrigin"]["coding"][0]["code"] == "01"


def test_administering_provider_is_an_upserted_practitioner_performer() -> None:
    mapping = run(PID, ORC, rxa(f10="7824^JACKSON^LILY^^^^^^NIST-PI-1"))
    practitioners = [e for e in mapping.bundle["entry"] if e["resource"]["resourceType"] == "Practitioner"]
    assert len(practitioners) == 1
    performer = only(mapping)["performer"][0]
    assert performer["function"]["coding"][0]["code"] == "AP"
    assert performer["actor"]["reference"] == practitioners[0]["fullUrl"]


def test_without_orc_the_key_is_stable_and_derived_from_patient_vaccine_and_date() -> None:
    first, replay = run(PID, rxa()), run(PID, rxa())
    url = immunizations(first)[0]["request"]["url"]
    assert url == immunizations(replay)[0]["request"]["url"]
    assert "90012" not in url
    other_day = immunizations(run(PID, rxa(f3="20240106")))[0]["request"]["url"]
    assert other_day != url


def test_two_rxa_with_the_same_key_keep_the_first_and_warn() -> None:
    mapping = run(PID, rxa(), rxa())
    assert len(immunizations(mapping)) == 1
    assert [(w.segment, w.position) for w in mapping.warnings] == [("RXA", 4)]


def test_missing_administration_date_is_a_mapping_error_at_rxa3() -> None:
    with pytest.raises(MappingError) as caught:
        run(PID, ORC, rxa(f3=""))
    assert (caught.value.segment, caught.value.field, caught.value.code) == ("RXA", 3, "101")


def test_missing_patient_identifier_is_a_mapping_error_at_pid3() -> None:
    with pytest.raises(MappingError) as caught:
        run("PID|1||||WONG^ELISE", ORC, rxa())
    assert (caught.value.segment, caught.value.field) == ("PID", 3)


@pytest.mark.skipif(not NIST.exists(), reason="the shared VXU sample is not present")
def test_nist_sample_maps_three_immunizations_with_funding_and_vis() -> None:
    message = er7.parse(er7.split_messages(er7.decode(NIST.read_bytes()))[0][0])
    mapping = map_message(
        message, MappingContext("tenant-a", message.sending_application, message.sending_facility)
    )
    found = [e["resource"] for e in immunizations(mapping)]
    assert [i["identifier"][0]["value"] for i in found] == ["13696", "38760", "35508"]
    assert [i["vaccineCode"]["coding"][0]["system"] for i in found] == [
        "http://hl7.org/fhir/sid/ndc",
        "http://hl7.org/fhir/sid/cvx",
        "http://hl7.org/fhir/sid/cvx",
    ]
    first = found[0]
    assert first["lotNumber"] == "315841"
    assert first["expirationDate"] == "2015-12-16"
    assert first["programEligibility"][0]["coding"][0]["code"] == "V01"
    assert first["fundingSource"]["coding"][0]["code"] == "PHC70"
    assert first["education"] == [
        {"documentType": "253088698300028811170411", "presentationDate": "2015-06-24"}
    ]
    assert [p["function"]["coding"][0]["code"] for p in first["performer"]] == ["AP", "OP"]
    assert [i["primarySource"] for i in found] == [True, False, False]
    assert_valid(mapping)
