"""The CapabilityStatement is valid R4 and claims nothing that is not implemented."""

from __future__ import annotations

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from ehr.api.fhir_api import implemented_capabilities
from ehr.fhir.capability import CapabilityRegistry, ResourceCapability, SearchParam, capability_statement


def test_the_statement_validates_against_the_r4_model():
    statement = capability_statement(
        "https://x/tenants/a/fhir", implemented_capabilities(), token_endpoint="https://idp/token"
    )
    model = CapabilityStatement.model_validate(statement)
    assert model.fhirVersion == "4.0.1"
    assert model.rest[0].security.service[0].coding[0].code == "SMART-on-FHIR"


def test_the_foundation_lists_no_resource_types():
    statement = capability_statement("https://x", implemented_capabilities())
    assert "resource" not in statement["rest"][0]
    assert "interaction" not in statement["rest"][0]


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
