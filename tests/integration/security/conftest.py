"""Fixtures of the attack matrix: the victim tenant seeded through the API, and the tokens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from infra.local.gateway import LocalGateway
from infra.local.issuer import DevIssuer
from infra.local.platform import LocalPlatform
from tests.integration.security.support import (
    ATTACKER,
    VICTIM,
    Client,
    Victim,
    assert_attacker_holds_none_of,
    bearer,
    seed_victim,
    victim_record_identifiers,
)


@dataclass(frozen=True)
class Tokens:
    victim: str  # clinic-a, user/*.cruds: seeds and re-reads the victim's data
    user: str  # clinic-b, user/*.cruds
    system: str  # clinic-b, system/*.cruds


@pytest.fixture(scope="module")
def tokens(issuer: DevIssuer, platform: LocalPlatform) -> Tokens:
    return Tokens(
        victim=issuer.mint(tenant=VICTIM, scope="user/*.cruds", client_id="clinic-a-app"),
        user=issuer.mint(tenant=ATTACKER, scope="user/*.cruds", client_id="clinic-b-app"),
        system=issuer.mint(tenant=ATTACKER, scope="system/*.cruds", client_id="clinic-b-backend"),
    )


@pytest.fixture(scope="module")
def client(gateway: LocalGateway) -> Client:
    return Client(gateway)


@pytest.fixture(scope="module")
def victim(client: Client, tokens: Tokens) -> Victim:
    assert_attacker_holds_none_of(client, bearer(tokens.user), victim_record_identifiers())
    return seed_victim(client, bearer(tokens.victim))
