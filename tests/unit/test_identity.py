"""Identities built from verified claims: tenant, SMART scopes, patient context, client."""

from __future__ import annotations

import pytest

from ehr.security.identity import Identity, Scope


@pytest.mark.parametrize(
    ("text", "context", "resource_type", "letters", "query"),
    [
        ("user/*.cruds", "user", "*", "cruds", None),
        ("patient/Observation.rs", "patient", "Observation", "rs", None),
        ("system/Patient.c", "system", "Patient", "c", None),
        (
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            "patient",
            "Observation",
            "rs",
            "category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        ),
        ("user/Patient.read", "user", "Patient", "rs", None),  # SMART v1 alias
        ("user/Patient.write", "user", "Patient", "cud", None),
        ("system/*.*", "system", "*", "cruds", None),
    ],
)
def test_smart_scopes_parse(text, context, resource_type, letters, query):
    scope = Scope.parse(text)
    assert scope is not None
    assert (scope.context, scope.resource_type, scope.permissions, scope.query) == (
        context,
        resource_type,
        frozenset(letters),
        query,
    )


@pytest.mark.parametrize(
    "text",
    ["openid", "launch/patient", "user/*.srd", "user/*.cc", "admin/*.cruds", "user/patient.rs", "user/*."],
)
def test_non_clinical_or_malformed_scopes_are_not_clinical_scopes(text):
    assert Scope.parse(text) is None


def test_identity_carries_tenant_scopes_patient_and_client():
    identity = Identity.from_claims(
        {
            "sub": "u1",
            "tenant": "clinic-a",
            "scope": "openid patient/*.rs fhirUser",
            "patient": "123",
            "client_id": "app-1",
            "fhirUser": "Practitioner/9",
        },
        tenant_claim="tenant",
    )
    assert identity.tenant == "clinic-a"
    assert identity.patient == "123"
    assert identity.client_id == "app-1"
    assert identity.fhir_user == "Practitioner/9"
    assert [s.resource_type for s in identity.scopes] == ["*"]
    assert identity.other_scopes == ("openid", "fhirUser")


@pytest.mark.parametrize("tenant", [None, "", "Clinic-A", "clinic_a", "-x", "a" * 64, 7, ["clinic-a"]])
def test_a_malformed_tenant_claim_gives_no_tenant(tenant):
    identity = Identity.from_claims(
        {"sub": "u1", "tenant": tenant, "scope": "user/*.rs"}, tenant_claim="tenant"
    )
    assert identity.tenant is None


def test_the_tenant_claim_name_is_configurable():
    identity = Identity.from_claims(
        {"sub": "u", "custom:facility": "clinic-b"}, tenant_claim="custom:facility"
    )
    assert identity.tenant == "clinic-b"
