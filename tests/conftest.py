"""Fixtures shared by every suite: a development issuer and the settings functions see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ehr import names
from ehr.settings import AuthSettings
from infra.local.issuer import DevIssuer

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENTS_DIR = REPO_ROOT / "tests" / "events"


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> DevIssuer:
    return DevIssuer(tmp_path_factory.mktemp("issuer") / "key.pem")


@pytest.fixture(scope="session")
def other_issuer(tmp_path_factory: pytest.TempPathFactory) -> DevIssuer:
    """Same issuer name and audience, different key: its tokens must never verify."""
    return DevIssuer(tmp_path_factory.mktemp("other-issuer") / "key.pem")


@pytest.fixture(scope="session")
def auth_settings(issuer: DevIssuer) -> AuthSettings:
    return AuthSettings(
        environment="test",
        issuer=names.LOCAL_ISSUER,
        audience=names.DEFAULT_AUDIENCE,
        jwks_json=json.dumps(issuer.jwks()),
    )


def load_event(name: str) -> dict:
    return json.loads((EVENTS_DIR / name).read_text())
