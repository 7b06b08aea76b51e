"""ORU^R01 → DiagnosticReport, Observations, Specimen, Patient (ehr.hl7v2.mapping.oru)."""

from __future__ import annotations

import base64
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from ehr.fhir.validation import validate_bundle
from ehr.hl7v2 import er7
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError
from ehr.hl7v2.mapping.oru import map_oru

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

MSH = "MSH|^~\\&|LABAPP|LABFAC|EHR|CLINIC|20240301101500-0500||ORU^R01^ORU_R01|CTRL1|P|2.5.1"
PID = "PID|1||MRN123^^^HOSP^MR||Doe^Jane||19800102|F"
OBR = (
    "OBR|1|PL100^EHR|FI200^LAB|24323-8^Comprehensive metabolic panel^LN|||20240301080000-0500|||||||"
    "||1234^Welby^Marcus^^^^^^NPI||||||20240301100000-0500|||F"
)


def message(*segments: str, msh: str = MSH, pid: str = PID, obr: str = OBR) -> str:
    return "\r".join((msh, pid, obr, *segments))


def obx(
    value_type: str, code: str, value: str, units: str = "", ref: str = "", flag: str = "", status: str = "F"
) -> str:
    return f"OBX|1|{value_type}|{code}||{value}|{units}|{ref}|{flag}|||{status}"


def run(text: str) -> Mapping:
    parsed = er7.parse(text)
    return map_oru(parsed, MappingContext("tenant-a", parsed.sending_application, parsed.sending_facility))


def resources(mapping: Mapping, resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in mapping.bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def only(mapping: Mapping, resource_type: str) -> dict[str, Any]:
    found = resources(mapping, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, got {len(found)}"
    return found[0]


def entry_of(mapping: Mapping, resource: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in mapping.bundle["entry"] if e["resource"] is resource)


def assert_valid(mapping: Mapping) -> None:
    for entry in mapping.bundle["entry"]:
        body = entry["resource"]
        get_fhir_model_class(body["resourceType"]).model_validate(body)
    validate_bundle(mapping.bundle)


# -- numeric values, units, ranges -------------------------------------------------------------------


def test_nm_result_becomes_a_ucum_quantity_from_a_common_spelling() -> None:
    # Given a glucose result with the unit written mg/dl
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "182", "mg/dl", "70-105", "H")))
    # When / Then the Observation holds a UCUM quantity, the text kept as the unit
    quantity = only(mapping, "Observation")["valueQuantity"]
    assert quantity == {"value": Decimal("182"), "unit": "mg/dl", "system": UCUM, "code": "mg/dL"}


def test_nm_keeps_the_significant_zeros_sent() -> None:
    mapping = run(message(obx("NM", "2160-0^Creatinine^LN", "0850.00", "umol/L")))
    assert str(only(mapping, "Observation")["valueQuantity"]["value"]) == "850.00"


@pytest.mark.parametrize(
    ("unit", "code"), [("K/uL", "10*3/uL"), ("mill/uL", "10*6/uL"), ("g/dL", "g/dL"), ("%", "%")]
)
def test_lab_unit_spellings_map_to_ucum(unit: str, code: str) -> None:
    mapping = run(message(obx("NM", "6690-2^WBC^LN", "7.2", unit)))
    quantity = only(mapping, "Observation")["valueQuantity"]
    assert (quantity["system"], quantity["code"]) == (UCUM, code)


def test_unknown_unit_keeps_its_text_without_a_system() -> None:
    mapping = run(message(obx("NM", "6690-2^WBC^LN", "7.2", "blobs per jar")))
    assert only(mapping, "Observation")["valueQuantity"] == {"value": Decimal("7.2"), "unit": "blobs per jar"}


@pytest.mark.parametrize(("value", "comparator", "number"), [("<5", "<", "5"), (">=10", ">=", "10")])
def test_nm_with_a_comparator_sets_quantity_comparator(value: str, comparator: str, number: str) -> None:
    mapping = run(message(obx("NM", "1988-5^CRP^LN", value, "mg/L")))
    quantity = only(mapping, "Observation")["valueQuantity"]
    assert (quantity["comparator"], quantity["value"]) == (comparator, Decimal(number))


def test_nm_that_is_not_a_number_is_kept_as_text_with_a_warning() -> None:
    mapping = run(message(obx("NM", "1988-5^CRP^LN", "see note")))
    assert only(mapping, "Observation")["valueString"] == "see note"
    assert any(w.field == 5 and w.code == "102" for w in mapping.warnings)


@pytest.mark.parametrize(
    ("value", "element", "expected"),
    [
        (
            "^182",
            "valueQuantity",
            {"value": Decimal("182"), "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
        ),
        (
            "<^5",
            "valueQuantity",
            {"value": Decimal("5"), "comparator": "<", "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
        ),
    ],
)
def test_sn_number_becomes_a_quantity(value: str, element: str, expected: dict[str, Any]) -> None:
    mapping = run(message(obx("SN", "2345-7^Glucose^LN", value, "mg/dL")))
    assert only(mapping, "Observation")[element] == expected


def test_sn_range_becomes_value_range() -> None:
    mapping = run(message(obx("SN", "5778-6^Color^LN", "^1^-^5", "/[HPF]")))
    value = only(mapping, "Observation")["valueRange"]
    assert (value["low"]["value"], value["high"]["value"], value["low"]["code"]) == (
        Decimal(1),
        Decimal(5),
        "/[HPF]",
    )


def test_sn_ratio_becomes_value_ratio() -> None:
    mapping = run(message(obx("SN", "5370-2^Titer^LN", "^1^:^128")))
    value = only(mapping, "Observation")["valueRatio"]
    assert (value["numerator"]["value"], value["denominator"]["value"]) == (Decimal(1), Decimal(128))


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("70-105", "70", "105"), ("4.3 to 6.2", "4.3", "6.2"), ("<5", None, "5"), (">10", "10", None)],
)
def test_reference_range_gives_low_high_and_text(text: str, low: str | None, high: str | None) -> None:
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "90", "mg/dL", text)))
    ref = only(mapping, "Observation")["referenceRange"][0]
    assert ref["text"] == text
    assert (ref.get("low", {}).get("value"), ref.get("high", {}).get("value")) == (
        Decimal(low) if low else None,
        Decimal(high) if high else None,
    )
    assert all(ref[side]["code"] == "mg/dL" for side in ("low", "high") if side in ref)


def test_reference_range_in_words_is_text_only() -> None:
    mapping = run(message(obx("ST", "5196-1^HBsAg^LN", "Reactive", "", "Non-reactive")))
    assert only(mapping, "Observation")["referenceRange"] == [{"text": "Non-reactive"}]


# -- other value types ------------------------------------------------------------------------------


def test_cwe_value_keeps_both_triplets_with_known_and_local_systems() -> None:
    mapping = run(message(obx("CWE", "94500-6^SARS-CoV-2 RNA^LN", "260373001^Detected^SCT^DET^Detected^L")))
    codings = only(mapping, "Observation")["valueCodeableConcept"]["coding"]
    assert [(c["system"], c["code"]) for c in codings] == [(SCT, "260373001"), (codings[1]["system"], "DET")]
    assert codings[1]["system"].startswith("urn:ehr:hl7v2:tenant-a:cs:")


def test_dt_value_becomes_value_date_time() -> None:
    mapping = run(message(obx("DT", "11368-8^Onset^LN", "20230201")))
    assert only(mapping, "Observation")["valueDateTime"] == "2023-02-01"


def test_ft_formatting_escapes_become_line_breaks() -> None:
    mapping = run(message(obx("FT", "69969-4^Comment^LN", "first line\\.br\\second line")))
    assert only(mapping, "Observation")["valueString"] == "first line\nsecond line"


def test_consecutive_tx_lines_of_one_report_are_one_observation() -> None:
    # Given a report split over three TX OBX lines with the same (empty) OBX-3
    mapping = run(
        message(
            "OBX|1|TX|||||||||F",
            "OBX|2|TX|||Impression: normal study.||||||F",
            "OBX|3|TX|||No effusion.||||||F",
            obr=OBR.replace("24323-8^Comprehensive metabolic panel^LN", "1487^ECHO CARDIOGRAM COMPLETE"),
        )
    )
    # Then one Observation holds the lines, coded by the report's OBR-4 (local system)
    observation = only(mapping, "Observation")
    assert observation["valueString"] == "Impression: normal study.\nNo effusion."
    assert observation["code"]["coding"][0]["code"] == "1487"
    assert observation["code"]["coding"][0]["system"].startswith("urn:ehr:hl7v2:tenant-a:cs:")


def test_unknown_value_type_is_text_with_a_warning() -> None:
    mapping = run(message(obx("XYZ", "1234-5^Thing^LN", "abc")))
    assert only(mapping, "Observation")["valueString"] == "abc"
    assert any(w.field == 2 for w in mapping.warnings)


def test_ed_pdf_becomes_the_report_presented_form() -> None:
    # Given an OBX carrying a base64 PDF
    pdf = base64.b64encode(b"%PDF-1.4 tiny").decode()
    mapping = run(message(obx("ED", "11502-2^Lab report^LN", f"LAB^AP^PDF^Base64^{pdf}")))
    # Then the bytes go to a DocumentReference (the document store keeps them in S3) that the
    # report's presented form points at, and no Observation is made of it
    document = only(mapping, "DocumentReference")
    attachment = document["content"][0]["attachment"]
    assert attachment["data"] == pdf
    assert attachment["contentType"] == "application/pdf"
    assert attachment["size"] == len(b"%PDF-1.4 tiny")
    form = only(mapping, "DiagnosticReport")["presentedForm"]
    assert form == [
        {
            "contentType": "application/pdf",
            "size": attachment["size"],
            "hash": attachment["hash"],
            "title": "Lab report",
            "url": f"Binary/{document['id']}",
        }
    ]
    assert resources(mapping, "Observation") == []


def test_ed_that_is_not_base64_is_a_mapping_error() -> None:
    with pytest.raises(MappingError) as error:
        run(message(obx("ED", "11502-2^Lab report^LN", "LAB^AP^PDF^Base64^not base64!!")))
    assert (error.value.segment, error.value.field, error.value.code) == ("OBX", 5, "102")


def test_one_megabyte_ed_maps_and_validates() -> None:
    payload = base64.b64encode(bytes(range(256)) * 3000).decode()
    mapping = run(message(obx("ED", "11502-2^Lab report^LN", f"LAB^AP^PDF^Base64^{payload}")))
    assert only(mapping, "DocumentReference")["content"][0]["attachment"]["data"] == payload
    assert "data" not in only(mapping, "DiagnosticReport")["presentedForm"][0]
    assert_valid(mapping)


# -- interpretation, status, times, notes ------------------------------------------------------------


def test_abnormal_flag_becomes_a_v3_interpretation() -> None:
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "400", "mg/dL", "", "HH")))
    coding = only(mapping, "Observation")["interpretation"][0]["coding"][0]
    assert (coding["system"], coding["code"]) == (V3_INTERPRETATION, "HH")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("F", "final"),
        ("P", "preliminary"),
        ("C", "corrected"),
        ("X", "cancelled"),
        ("D", "entered-in-error"),
        ("I", "registered"),
    ],
)
def test_obx_11_sets_observation_status(code: str, status: str) -> None:
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "90", "mg/dL", status=code)))
    assert only(mapping, "Observation")["status"] == status


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("F", "final"),
        ("P", "preliminary"),
        ("C", "corrected"),
        ("X", "cancelled"),
        ("A", "partial"),
        ("", "unknown"),
    ],
)
def test_obr_25_sets_report_status(code: str, status: str) -> None:
    mapping = run(
        message(obx("NM", "2345-7^Glucose^LN", "90", "mg/dL"), obr=OBR[: OBR.rindex("|") + 1] + code)
    )
    assert only(mapping, "DiagnosticReport")["status"] == status


def test_not_asked_result_has_a_data_absent_reason() -> None:
    mapping = run(message(obx("CWE", "8675-3^Question^LN", "", status="N")))
    observation = only(mapping, "Observation")
    assert observation["dataAbsentReason"]["coding"][0]["code"] == "not-asked"


def test_effective_time_is_obx_14_else_obr_7_and_issued_is_obr_22() -> None:
    mapping = run(
        message(
            "OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F|||20240301090000-0500",
            "OBX|2|NM|2160-0^Creatinine^LN||1.0|mg/dL|||||F",
        )
    )
    first, second = resources(mapping, "Observation")
    assert first["effectiveDateTime"] == "2024-03-01T09:00:00-05:00"
    assert second["effectiveDateTime"] == "2024-03-01T08:00:00-05:00"
    assert only(mapping, "DiagnosticReport")["issued"] == "2024-03-01T10:00:00-05:00"


def test_a_time_without_a_zone_takes_the_sender_zone_from_msh_7() -> None:
    mapping = run(message("OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F|||20240301090000"))
    assert only(mapping, "Observation")["effectiveDateTime"] == "2024-03-01T09:00:00-05:00"


def test_nte_after_obx_is_an_observation_note_and_after_obr_the_conclusion() -> None:
    mapping = run(
        message(
            "NTE|1|L|Specimen slightly hemolyzed.",
            obx("NM", "2823-3^Potassium^LN", "5.9", "mmol/L"),
            "NTE|1|L|Repeat advised.",
        )
    )
    assert only(mapping, "Observation")["note"] == [{"text": "Repeat advised."}]
    assert only(mapping, "DiagnosticReport")["conclusion"] == "Specimen slightly hemolyzed."


# -- identity and references -------------------------------------------------------------------------


def test_report_has_filler_and_placer_identifiers_and_is_upserted_on_the_filler() -> None:
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "90", "mg/dL")))
    report = only(mapping, "DiagnosticReport")
    types = {i["type"]["coding"][0]["code"]: i["value"] for i in report["identifier"]}
    assert types == {"FILL": "FI200", "PLAC": "PL100"}
    assert entry_of(mapping, report)["request"] == {
        "method": "PUT",
        "url": "DiagnosticReport?identifier=urn:ehr:hl7v2:tenant-a:id:lab|FI200",
    }
    assert "basedOn" not in report


def test_preliminary_then_corrected_result_upserts_the_same_resources() -> None:
    # Given the same result sent preliminary and then corrected
    prelim = run(message(obx("NM", "2345-7^Glucose^LN", "90", "mg/dL", status="P")))
    corrected = run(message(obx("NM", "2345-7^Glucose^LN", "95", "mg/dL", status="C")))
    # Then both upsert the same conditional URLs, so the correction is a new version
    assert [e["request"]["url"] for e in prelim.bundle["entry"]] == [
        e["request"]["url"] for e in corrected.bundle["entry"]
    ]
    assert [e["fullUrl"] for e in prelim.bundle["entry"]] == [e["fullUrl"] for e in corrected.bundle["entry"]]


def test_observation_identity_is_filler_code_and_sub_id() -> None:
    mapping = run(message("OBX|1|NM|2345-7^Glucose^LN|2|90|mg/dL|||||F"))
    assert only(mapping, "Observation")["identifier"] == [
        {"system": "urn:ehr:hl7v2:tenant-a:id:lab", "value": "FI200/2345-7/2"}
    ]


def test_without_a_filler_number_the_placer_number_identifies_the_report() -> None:
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "90"), obr=OBR.replace("|FI200^LAB|", "||")))
    url = entry_of(mapping, only(mapping, "DiagnosticReport"))["request"]["url"]
    assert url == "DiagnosticReport?identifier=urn:ehr:hl7v2:tenant-a:id:ehr|PL100"
    assert any(w.segment == "OBR" and w.field == 3 for w in mapping.warnings)


def test_obrs_sharing_one_filler_number_become_distinct_reports() -> None:
    second = OBR.replace("OBR|1|", "OBR|2|").replace("24323-8^Comprehensive metabolic panel", "57021-8^CBC")
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "90"), second, obx("NM", "718-7^Hgb^LN", "13")))
    urls = {entry_of(mapping, r)["request"]["url"] for r in resources(mapping, "DiagnosticReport")}
    assert len(urls) == 2


def test_result_and_report_reference_the_patient_and_the_report_lists_its_results() -> None:
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "90"), obx("NM", "2160-0^Creatinine^LN", "1.0")))
    patient_url = entry_of(mapping, only(mapping, "Patient"))["fullUrl"]
    report = only(mapping, "DiagnosticReport")
    observations = resources(mapping, "Observation")
    assert report["subject"] == {"reference": patient_url}
    assert all(o["subject"] == {"reference": patient_url} for o in observations)
    assert report["result"] == [{"reference": entry_of(mapping, o)["fullUrl"]} for o in observations]


def test_spm_becomes_a_specimen_identified_by_spm_2() -> None:
    mapping = run(
        message(
            obx("NM", "2345-7^Glucose^LN", "90"),
            "SPM|1|^SP-77&LAB||119297000^Blood^SCT|||||||||||||20240301073000-0500|20240301081500-0500",
        )
    )
    specimen = only(mapping, "Specimen")
    assert (
        entry_of(mapping, specimen)["request"]["url"]
        == "Specimen?identifier=urn:ehr:hl7v2:tenant-a:id:lab|SP-77"
    )
    assert specimen["type"]["coding"][0] == {"system": SCT, "code": "119297000", "display": "Blood"}
    assert specimen["collection"]["collectedDateTime"] == "2024-03-01T07:30:00-05:00"
    assert specimen["receivedTime"] == "2024-03-01T08:15:00-05:00"
    specimen_url = entry_of(mapping, specimen)["fullUrl"]
    assert only(mapping, "Observation")["specimen"] == {"reference": specimen_url}
    assert only(mapping, "DiagnosticReport")["specimen"] == [{"reference": specimen_url}]


def test_without_spm_the_specimen_comes_from_obr_7_and_obr_15() -> None:
    obr = OBR.replace("||1234^Welby", "|BLD&Blood&HL70487|1234^Welby")
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "90"), obr=obr))
    specimen = only(mapping, "Specimen")
    assert specimen["collection"]["collectedDateTime"] == "2024-03-01T08:00:00-05:00"
    assert specimen["type"]["coding"][0]["code"] == "BLD"


def test_ordering_provider_is_upserted_by_identifier() -> None:
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "90")))
    practitioner = only(mapping, "Practitioner")
    assert practitioner["identifier"][0]["value"] == "1234"
    assert practitioner["name"][0]["family"] == "Welby"


def test_performing_organization_from_obx_23() -> None:
    mapping = run(
        message(
            "OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F||||||||||||"
            "Acme Lab^L^^^^CLIA&2.16.840.1.113883.4.7&ISO^XX^^^05D0000000"
        )
    )
    organization = only(mapping, "Organization")
    assert organization["identifier"] == [{"system": "urn:oid:2.16.840.1.113883.4.7", "value": "05D0000000"}]
    reference = {"reference": entry_of(mapping, organization)["fullUrl"]}
    assert only(mapping, "Observation")["performer"] == [reference]
    assert only(mapping, "DiagnosticReport")["performer"] == [reference]


def test_z_segments_are_ignored() -> None:
    mapping = run(message(obx("NM", "2345-7^Glucose^LN", "90"), "ZXY|1|secret"))
    assert Counter(e["resource"]["resourceType"] for e in mapping.bundle["entry"])["Observation"] == 1


# -- what the sender must fix -----------------------------------------------------------------------


def test_missing_patient_identifier_is_a_mapping_error_at_pid_3() -> None:
    with pytest.raises(MappingError) as error:
        run(message(obx("NM", "2345-7^Glucose^LN", "90"), pid="PID|1||||Doe^Jane"))
    assert (error.value.segment, error.value.field) == ("PID", 3)


def test_obx_before_any_obr_is_a_segment_sequence_error() -> None:
    text = "\r".join((MSH, PID, obx("NM", "2345-7^Glucose^LN", "90"), OBR))
    with pytest.raises(MappingError) as error:
        run(text)
    assert (error.value.segment, error.value.code) == ("OBX", "100")


def test_missing_obr_4_is_a_mapping_error() -> None:
    with pytest.raises(MappingError) as error:
        run(
            message(
                obx("NM", "2345-7^Glucose^LN", "90"),
                obr=OBR.replace("24323-8^Comprehensive metabolic panel^LN", ""),
            )
        )
    assert (error.value.segment, error.value.field, error.value.code) == ("OBR", 4, "101")


# -- shared samples and reference pairs ---------------------------------------------------------------


def _samples() -> list[Path]:
    if not SHARED.is_dir():
        return []
    return sorted((SHARED / "hl7v2").glob("*ORU*")) + sorted((SHARED / "hl7v2-to-fhir").glob("*ORU*.hl7"))


def _oru_messages(path: Path) -> list[er7.Message]:
    texts, _ = er7.split_messages(er7.decode(path.read_bytes()))
    parsed = [er7.parse(t) for t in texts]
    return [m for m in parsed if (m.message_type, m.trigger_event) == ("ORU", "R01")]


@pytest.mark.skipif(not _samples(), reason="shared data folder absent")
@pytest.mark.parametrize("path", _samples(), ids=lambda p: p.name)
def test_every_oru_sample_maps_to_valid_resources(path: Path) -> None:
    for parsed in _oru_messages(path):
        mapping = map_oru(
            parsed, MappingContext("tenant-a", parsed.sending_application, parsed.sending_facility)
        )
        assert resources(mapping, "DiagnosticReport")
        assert_valid(mapping)


PAIRS = [
    "msft-fhir-converter__LAB-ORU-1",
    "msft-fhir-converter__LRI_2.0-NG_CBC_Typ_Message",
    "msft-fhir-converter__ORU-R01-RMGEAD",
    "cdc-reportstream__sample_oru_CDPH_NBS_20241021-001",
]


def _result_signature(resource: dict[str, Any]) -> tuple[Any, ...]:
    code = resource["code"]["coding"][0]["code"]
    if "valueQuantity" in resource:
        return code, Decimal(str(resource["valueQuantity"]["value"]))
    if "valueCodeableConcept" in resource:
        return code, tuple(sorted(c.get("code", "") for c in resource["valueCodeableConcept"]["coding"]))
    return code, resource.get("valueString")


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data folder absent")
@pytest.mark.parametrize("name", PAIRS)
def test_results_agree_with_the_reference_converter(name: str) -> None:
    # Given a reference pair, when mapped, then the same results (code and value) and report codes come out
    folder = SHARED / "hl7v2-to-fhir"
    (parsed,) = _oru_messages(folder / f"{name}.hl7")
    mapping = map_oru(parsed, MappingContext("tenant-a", parsed.sending_application, parsed.sending_facility))
    expected = json.loads((folder / f"{name}.expected.json").read_text(encoding="utf-8-sig"))
    theirs = [e["resource"] for e in expected["entry"]]
    assert Counter(_result_signature(o) for o in resources(mapping, "Observation")) == Counter(
        _result_signature(r) for r in theirs if r["resourceType"] == "Observation"
    )
    assert sorted(r["code"]["coding"][0]["code"] for r in resources(mapping, "DiagnosticReport")) == sorted(
        r["code"]["coding"][0]["code"] for r in theirs if r["resourceType"] == "DiagnosticReport"
    )


FIELD_LEVEL = {
    "nm-value": ("valueQuantity", {"value": Decimal(5)}),
    "sn-as-range-value": ("valueRange", {"low": Decimal(1), "high": Decimal(3)}),
    "sn-as-ratio-value-colon": ("valueRatio", {"numerator": Decimal(1), "denominator": Decimal(3)}),
    "st-value": ("valueString", "Some value"),
    "tx-value": ("valueString", "Some formatted value"),
    "cwe-value": ("valueCodeableConcept", "1"),
}


def _essence(element: str, value: Any) -> Any:
    if element == "valueQuantity":
        return {"value": Decimal(str(value["value"]))}
    if element in {"valueRange", "valueRatio"}:
        parts = {"low", "high", "numerator", "denominator"}
        return {k: Decimal(str(v["value"])) for k, v in value.items() if k in parts}
    if element == "valueCodeableConcept":
        return value["coding"][0]["code"]
    return value


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data folder absent")
@pytest.mark.parametrize("case", sorted(FIELD_LEVEL))
def test_obx_value_agrees_with_the_field_level_reference(case: str) -> None:
    # Given ReportStream's one-field pair (its PID has no identifier, so one is added)
    path = SHARED / "hl7v2-to-fhir" / "field-level" / f"cdc-reportstream__OBX-to-Observation-{case}.hl7"
    text = (
        er7.decode(path.read_bytes())
        .replace("\rPID|1\r", "\rPID|1||X1^^^LAB^MR\r")
        .replace("\nPID|1\n", "\nPID|1||X1^^^LAB^MR\n")
    )
    mapping = run(er7.split_messages(text)[0][0])
    expected = json.loads(path.with_suffix(".expected.json").read_text(encoding="utf-8"))
    theirs = next(e["resource"] for e in expected["entry"] if e["resource"]["resourceType"] == "Observation")
    element, value = FIELD_LEVEL[case]
    ours = only(mapping, "Observation")
    assert _essence(element, ours[element]) == _essence(element, theirs[element]) == value
