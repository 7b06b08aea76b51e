"""The foundation's promise over real HTTP: `ehr local`, `ehr token`, metadata, 401, 403, OpenAPI."""

from __future__ import annotations

import re
import signal
import subprocess

import jwt
from openapi_spec_validator import validate

from ehr.api.routes import ROUTES


def outcome_code(response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["code"]


def test_metadata_is_served_to_its_tenants_token(local_server, http):
    token = local_server.token("--tenant", "clinic-a")
    response = http.get(
        f"{local_server.base}/tenants/clinic-a/fhir/metadata", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["implementation"]["url"] == f"{local_server.base}/tenants/clinic-a/fhir"


def test_another_tenants_token_gets_403(local_server, http):
    token = local_server.token("--tenant", "clinic-b")
    response = http.get(
        f"{local_server.base}/tenants/clinic-a/fhir/metadata", headers={"Authorization": f"Bearer {token}"}
    )
    assert (response.status_code, outcome_code(response)) == (403, "forbidden")


def test_no_token_gets_401(local_server, http):
    response = http.get(f"{local_server.base}/tenants/clinic-a/fhir/metadata")
    assert (response.status_code, outcome_code(response)) == (401, "login")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_expired_token_gets_401(local_server, http):
    token = local_server.token("--tenant", "clinic-a", "--ttl", "1")
    import time

    time.sleep(32)  # past the 30-second clock-skew leeway
    response = http.get(
        f"{local_server.base}/tenants/clinic-a/fhir/metadata", headers={"Authorization": f"Bearer {token}"}
    )
    assert (response.status_code, outcome_code(response)) == (401, "login")


def test_unknown_route_and_unknown_tenant_get_404(local_server, http):
    assert outcome_code(http.get(f"{local_server.base}/nothing/here")) == "not-found"
    token = local_server.token("--tenant", "clinic-zz")
    response = http.get(
        f"{local_server.base}/tenants/clinic-zz/fhir/metadata", headers={"Authorization": f"Bearer {token}"}
    )
    assert (response.status_code, outcome_code(response)) == (404, "not-found")


def test_openapi_describes_every_route(local_server, http):
    response = http.get(f"{local_server.base}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    assert {(p, m.upper()) for p, ops in document["paths"].items() for m in ops} == {
        (r.path, r.method) for r in ROUTES
    }


def test_tokens_verify_against_the_served_jwks(local_server, http):
    config = http.get(f"{local_server.base}/.well-known/smart-configuration").json()
    jwks = http.get(config["jwks_uri"]).json()
    token = local_server.token(
        "--tenant", "clinic-a", "--scope", "patient/*.rs", "--patient", "p-1", "--client-id", "my-app"
    )
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, key=key, algorithms=["RS256"], audience="urn:ehr:api", issuer=config["issuer"])
    assert (claims["tenant"], claims["scope"], claims["patient"], claims["client_id"]) == (
        "clinic-a",
        "patient/*.rs",
        "p-1",
        "my-app",
    )


def test_the_banner_prints_ready_to_paste_tokens_for_the_demo_tenants(local_server, http):
    exports = dict(re.findall(r"export (EHR_TOKEN_[A-Z_]+)='([^']+)'", local_server.banner))
    assert set(exports) == {"EHR_TOKEN_CLINIC_A", "EHR_TOKEN_CLINIC_B", "EHR_TOKEN_ACME_LAB"}
    for tenant, var in (("clinic-a", "EHR_TOKEN_CLINIC_A"), ("acme-lab", "EHR_TOKEN_ACME_LAB")):
        response = http.get(
            f"{local_server.base}/tenants/{tenant}/fhir/metadata",
            headers={"Authorization": f"Bearer {exports[var]}"},
        )
        assert response.status_code == 200


def test_the_request_log_has_one_line_per_call_without_query_strings(local_server, http):
    http.get(f"{local_server.base}/health?name=Jane%20Doe")
    http.get(f"{local_server.base}/health")
    import time

    time.sleep(0.3)
    log = local_server.log_path.read_text()
    assert re.search(r"GET /health 200 \d+\.\dms", log)
    assert "Jane" not in log


def test_ctrl_c_shuts_down_cleanly(own_local_server):
    own_local_server.process.send_signal(signal.SIGINT)
    try:
        code = own_local_server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        own_local_server.process.kill()
        raise
    assert code == 0
    assert "Stopped." in own_local_server.log_path.read_text()
