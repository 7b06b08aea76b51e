"""The real handlers in-process against AWS emulated by moto, behind the local API Gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer
from infra.local.platform import LocalPlatform


@pytest.fixture(scope="session")
def platform(issuer: DevIssuer) -> Iterator[LocalPlatform]:
    platform = LocalPlatform(issuer=issuer, seed=True)
    platform.boot()
    yield platform
    platform.stop()


@pytest.fixture(scope="session")
def gateway(platform: LocalPlatform) -> LocalGateway:
    assert platform.gateway is not None
    return platform.gateway
