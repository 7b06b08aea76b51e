"""Discovery routes: health, OpenAPI 3.1 (valid, generated from the route table), SMART, JWKS."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate

from ehr.api.discovery import build_discovery_api
from ehr.api.http import HttpRequest
from ehr.api.routes import ROUTES
from ehr.settings import DiscoverySettings


def call(api, resource: str) -> tuple[int, dict, dict]:
    request = HttpRequest(method="GET", resource=resource, path=resource, base_url="https://api.example/prod")
    response = api.handle(request)
    return response.status, (json.loads(response.body) if response.body else {}), response.headers


@pytest.fixture
def local_discovery(auth_settings):
    return build_discovery_api(DiscoverySettings(**auth_settings.model_dump()))


@pytest.fixture
def cloud_discovery():
    return build_discovery_api(
        DiscoverySettings(
            issuer="https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc",
            jwks_url="https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc/.well-known/jwks.json",
            jwks_json=None,  # explicit: settings from arguments, not from this process's environment
            token_endpoint="https://ehr.auth.eu-west-1.amazoncognito.com/oauth2/token",
        )
    )


def test_health_is_ok(local_discovery):
    assert call(local_discovery, "/health")[:2] == (200, {"status": "ok"})


def test_openapi_is_valid_3_1_and_lists_every_route(local_discovery):
    status, document, _ = call(local_discovery, "/openapi.json")
    assert status == 200
    validate(document)  # raises on an invalid OpenAPI document
    assert document["openapi"] == "3.1.0"
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert operation["operationId"] == route.operation_id
        assert bool(operation["security"]) == route.auth
    assert document["servers"] == [{"url": "https://api.example/prod"}]


def test_local_smart_configuration_describes_the_development_issuer(local_discovery, issuer):
    status, document, _ = call(local_discovery, "/.well-known/smart-configuration")
    assert status == 200
    assert document["issuer"] == issuer.issuer
    assert document["jwks_uri"] == "https://api.example/prod/.well-known/jwks.json"
    assert "token_endpoint" not in document  # the local issuer has none yet; nothing is claimed


def test_cloud_smart_configuration_points_at_the_configured_issuer(cloud_discovery):
    _, document, _ = call(cloud_discovery, "/tenants/{tenant}/fhir/.well-known/smart-configuration")
    assert document["jwks_uri"].endswith("/eu-west-1_abc/.well-known/jwks.json")
    assert document["token_endpoint"].endswith("/oauth2/token")
    assert document["grant_types_supported"] == ["client_credentials"]


def test_local_jwks_serves_the_keys_that_verify_tokens(local_discovery, issuer):
    status, document, _ = call(local_discovery, "/.well-known/jwks.json")
    assert status == 200
    assert document == issuer.jwks()
    assert all("d" not in key for key in document["keys"])  # public parts only


def test_cloud_jwks_redirects_to_the_issuer(cloud_discovery):
    status, _, headers = call(cloud_discovery, "/.well-known/jwks.json")
    assert status == 302
    assert headers["Location"].endswith("/.well-known/jwks.json")
