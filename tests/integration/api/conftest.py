"""Fixtures of the FHIR REST API acceptance tests: tenant clients on the session's local gateway.

The platform (moto, real handlers, demo tenants clinic-a and clinic-b) is the session fixture of
tests/integration/conftest.py; every test writes its own data under a unique identifier system,
so tests do not see each other's resources.
"""

from __future__ import annotations

import uuid

import pytest
from api_support import SCOPE, FhirClient

from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer


@pytest.fixture(scope="session")
def fhir(gateway: LocalGateway, issuer: DevIssuer) -> FhirClient:
    """clinic-a's FHIR base, with a token for clinic-a."""
    return FhirClient(gateway, "clinic-a", issuer.mint(tenant="clinic-a", scope=SCOPE))


@pytest.fixture(scope="session")
def fhir_b(gateway: LocalGateway, issuer: DevIssuer) -> FhirClient:
    """clinic-b's FHIR base, with a token for clinic-b."""
    return FhirClient(gateway, "clinic-b", issuer.mint(tenant="clinic-b", scope=SCOPE))


@pytest.fixture
def uid() -> str:
    """A value no other test uses: the suffix of this test's identifier systems and names."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def system(uid: str) -> str:
    """An identifier system only this test writes to."""
    return f"urn:test:{uid}"
