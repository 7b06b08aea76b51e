"""Fixtures of the document tests: tenant clients on the session's local gateway (real handlers,
moto, and the loopback S3 server that presigned URLs point at)."""

from __future__ import annotations

import uuid

import pytest

from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer
from tests.integration.api.api_support import SCOPE, FhirClient


@pytest.fixture(scope="module")
def fhir(gateway: LocalGateway, issuer: DevIssuer) -> FhirClient:
    return FhirClient(gateway, "clinic-a", issuer.mint(tenant="clinic-a", scope=SCOPE))


@pytest.fixture(scope="module")
def fhir_b(gateway: LocalGateway, issuer: DevIssuer) -> FhirClient:
    return FhirClient(gateway, "clinic-b", issuer.mint(tenant="clinic-b", scope=SCOPE))


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def system(uid: str) -> str:
    """An identifier system only this test writes to."""
    return f"urn:test:{uid}"
