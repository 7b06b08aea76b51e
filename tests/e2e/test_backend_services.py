"""SMART Backend Services against `ehr local`: a registered partner signs a client assertion,
gets an access token for its tenant, and nothing more."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from infra.local.backend_services import ASSERTION_TYPE, client_assertion

CLIENT = "acme-lab-system"


@pytest.fixture
def key(local_server) -> bytes:
    return (Path(local_server.env["EHR_HOME"]) / "clients" / "keys" / f"{CLIENT}.pem").read_bytes()


def token_request(http, local_server, assertion: str, scope: str | None = None):
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    if scope:
        form["scope"] = scope
    return http.post(f"{local_server.base}/auth/token", data=form)


def test_the_smart_configuration_advertises_the_token_endpoint(local_server, http):
    config = http.get(f"{local_server.base}/.well-known/smart-configuration").json()
    assert config["token_endpoint"] == f"{local_server.base}/auth/token"
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert "client-confidential-asymmetric" in config["capabilities"]
    assert config["grant_types_supported"] == ["client_credentials"]


def test_a_registered_partner_gets_a_token_for_its_own_tenant_only(local_server, http, key):
    response = token_request(
        http,
        local_server,
        client_assertion(CLIENT, key, f"{local_server.base}/auth/token"),
        scope="system/Observation.rs",
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    answer = response.json()
    assert (answer["token_type"], answer["scope"]) == ("bearer", "system/Observation.rs")
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert (claims["tenant"], claims["client_id"]) == ("acme-lab", CLIENT)
    bearer = {"Authorization": f"Bearer {answer['access_token']}"}
    assert (
        http.get(f"{local_server.base}/tenants/acme-lab/fhir/Observation", headers=bearer).status_code == 200
    )
    assert http.get(f"{local_server.base}/tenants/acme-lab/fhir/Patient", headers=bearer).status_code == 403
    assert (
        http.get(f"{local_server.base}/tenants/clinic-a/fhir/Observation", headers=bearer).status_code == 403
    )


def test_a_replayed_assertion_is_refused(local_server, http, key):
    assertion = client_assertion(CLIENT, key, f"{local_server.base}/auth/token")
    assert token_request(http, local_server, assertion).status_code == 200
    replay = token_request(http, local_server, assertion)
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_client")


def test_an_assertion_signed_by_another_key_is_refused(local_server, http, tmp_path):
    from infra.local.backend_services import create_client_key

    stranger_key, _ = create_client_key(CLIENT, directory=tmp_path)
    forged = client_assertion(CLIENT, stranger_key.read_bytes(), f"{local_server.base}/auth/token")
    response = token_request(http, local_server, forged)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")


def test_more_scope_than_registered_or_another_audience_is_refused(local_server, http, key):
    too_much = token_request(
        http,
        local_server,
        client_assertion(CLIENT, key, f"{local_server.base}/auth/token"),
        scope="user/*.cruds",
    )
    assert (too_much.status_code, too_much.json()["error"]) == (400, "invalid_scope")
    elsewhere = client_assertion(CLIENT, key, "https://some-other-server/token")
    assert token_request(http, local_server, elsewhere).status_code == 401
    time.sleep(0)  # assertions carry unique jti values: no waiting needed
