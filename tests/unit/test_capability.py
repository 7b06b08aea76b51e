"""The CapabilityStatement is valid R4 and claims nothing that is not implemented."""

from __future__ import annotations

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from ehr.api.fhir_api import implemented_capabilities
from ehr.fhir.capability import CapabilityRegistry, ResourceCapability, SearchParam, capability_statement
from ehr.fhir.validation import known_resource_types


def test_the_statement_validates_against_the_r4_model():
    statement = capability_statement(
        "https://x/tenants/a/fhir", implemented_capabilities(), token_endpoint="https://idp/token"
    )
    model = CapabilityStatement.model_validate(statement)
    assert model.fhirVersion == "4.0.1"
    assert model.rest[0].security.service[0].coding[0].code == "SMART-on-FHIR"


def test_every_stored_type_is_listed_with_its_interactions_and_search_parameters():
    statement = capability_statement("https://x", implemented_capabilities())
    rest = statement["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert set(by_type) == set(known_resource_types())
    observation = by_type["Observation"]
    assert {i["code"] for i in observation["interaction"]} == {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
    params = {p["name"]: p["type"] for p in observation["searchParam"]}
    assert params["code"] == "token" and params["date"] == "date" and params["subject"] == "reference"
    assert params["value-quantity"] == "quantity" and params["_lastUpdated"] == "date"
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    assert by_type["Patient"]["operation"] == [
        {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
        {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"},
    ]


def test_registered_capabilities_are_rendered():
    registry = CapabilityRegistry()
    registry.add_resources(
        [ResourceCapability("Patient", ("read", "create"), (SearchParam("family", "string"),))]
    )
    statement = capability_statement("https://x", registry)
    CapabilityStatement.model_validate(statement)
    resource = statement["rest"][0]["resource"][0]
    assert resource["type"] == "Patient"
    assert [i["code"] for i in resource["interaction"]] == ["read", "create"]
    assert resource["searchParam"] == [{"name": "family", "type": "string"}]
