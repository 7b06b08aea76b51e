"""The request pipeline as users see it: status codes and OperationOutcomes, with fakes only."""

from __future__ import annotations

import json

import pytest

from ehr import names
from ehr.api.app import Api
from ehr.api.discovery import build_discovery_api
from ehr.api.fhir_api import build_fhir_api
from ehr.api.hl7v2_api import build_hl7v2_api
from ehr.api.http import HttpRequest
from ehr.api.routes import ROUTES
from ehr.bootstrap import bootstrap_fhir, bootstrap_hl7v2
from ehr.fhir.cursors import CursorCodec
from ehr.hl7v2.ports import InMemoryMessageArchive, InMemoryMessageLedger
from ehr.security.audit import InMemoryAuditSink
from ehr.security.tenancy import InMemoryTenantDirectory, new_tenant
from ehr.settings import DiscoverySettings, FhirApiSettings, Hl7v2InboundSettings
from ehr.store.memory import InMemoryRecordStore
from tests.conftest import load_event

METADATA = "/tenants/{tenant}/fhir/metadata"


def fakes() -> dict:
    return {
        "store": InMemoryRecordStore(),
        "cursors": CursorCodec(b"unit-test-cursor-secret-32-bytes!!"),
        "audit": InMemoryAuditSink(),
    }


@pytest.fixture
def fhir_settings(auth_settings) -> FhirApiSettings:
    return FhirApiSettings(
        **auth_settings.model_dump(),
        records_table="records",
        audit_table="audit",
        cursor_secret_name="unused",
    )


@pytest.fixture
def fhir_api(fhir_settings) -> Api:
    tenants = InMemoryTenantDirectory(
        [new_tenant("clinic-a", "clinic", "A"), new_tenant("clinic-b", "clinic", "B")]
    )
    return build_fhir_api(bootstrap_fhir(fhir_settings, tenants=tenants, **fakes()))


def get(api: Api, tenant: str, token: str | None, resource: str = METADATA) -> tuple[int, dict, dict]:
    headers = {"host": "api.example", "x-forwarded-proto": "https"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = HttpRequest(
        method="GET",
        resource=resource,
        path=resource.replace("{tenant}", tenant),
        path_params={"tenant": tenant},
        headers=headers,
        base_url="https://api.example/prod",
    )
    response = api.handle(request)
    return response.status, json.loads(response.body), response.headers


def outcome_code(body: dict) -> str:
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["code"]


def test_metadata_answers_its_own_tenant(fhir_api, issuer):
    status, body, headers = get(fhir_api, "clinic-a", issuer.mint(tenant="clinic-a", scope="user/*.rs"))
    assert status == 200
    assert body["resourceType"] == "CapabilityStatement"
    assert body["implementation"]["url"] == "https://api.example/prod/tenants/clinic-a/fhir"
    assert headers["Content-Type"].startswith("application/fhir+json")


def test_no_token_is_401(fhir_api):
    status, body, headers = get(fhir_api, "clinic-a", None)
    assert (status, outcome_code(body)) == (401, "login")
    assert headers["WWW-Authenticate"].startswith("Bearer")


def test_a_badly_signed_token_is_401(fhir_api, other_issuer):
    status, body, _ = get(fhir_api, "clinic-a", other_issuer.mint(tenant="clinic-a", scope="user/*.rs"))
    assert (status, outcome_code(body)) == (401, "login")


def test_another_tenants_token_is_403(fhir_api, issuer):
    status, body, _ = get(fhir_api, "clinic-a", issuer.mint(tenant="clinic-b", scope="user/*.cruds"))
    assert (status, outcome_code(body)) == (403, "forbidden")


def test_a_token_without_tenant_is_403(fhir_api, issuer):
    token = issuer.mint(tenant="clinic-a", scope="user/*.rs", extra_claims={"tenant": None})
    status, body, _ = get(fhir_api, "clinic-a", token)
    assert (status, outcome_code(body)) == (403, "forbidden")


def test_an_unknown_tenant_is_404(fhir_api, issuer):
    status, body, _ = get(fhir_api, "nowhere", issuer.mint(tenant="nowhere", scope="user/*.rs"))
    assert (status, outcome_code(body)) == (404, "not-found")


def test_a_mismatch_on_an_unknown_tenant_is_403_and_reveals_nothing(fhir_api, issuer):
    # Given clinic-b asking about a tenant that does not exist
    status, body, _ = get(fhir_api, "nowhere", issuer.mint(tenant="clinic-b", scope="user/*.rs"))
    # Then the answer is the same as for an existing one: 403, not 404
    assert (status, outcome_code(body)) == (403, "forbidden")


def test_an_unknown_route_is_404(fhir_api, issuer):
    status, body, _ = get(
        fhir_api,
        "clinic-a",
        issuer.mint(tenant="clinic-a", scope="user/*.rs"),
        resource="/tenants/{tenant}/fhir/Nope",
    )
    assert (status, outcome_code(body)) == (404, "not-found")


def test_an_unexpected_failure_is_a_500_outcome_without_internals(fhir_settings, issuer):
    class ExplodingDirectory(InMemoryTenantDirectory):
        def get(self, tenant_id):
            raise RuntimeError("dynamodb table ehr-prod-RecordsTable exploded at /var/task/x.py")

    api = build_fhir_api(bootstrap_fhir(fhir_settings, tenants=ExplodingDirectory(), **fakes()))
    status, body, _ = get(api, "clinic-a", issuer.mint(tenant="clinic-a", scope="user/*.rs"))
    assert (status, outcome_code(body)) == (500, "exception")
    text = json.dumps(body)
    assert "RecordsTable" not in text and "Traceback" not in text and ".py" not in text


def test_responses_carry_security_headers(fhir_api, issuer):
    _, _, headers = get(fhir_api, "clinic-a", issuer.mint(tenant="clinic-a", scope="user/*.rs"))
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"


def test_a_real_shaped_api_gateway_event_is_served(fhir_api, issuer):
    # Given an API Gateway REST proxy event for the prod stage
    event = load_event("apigw_rest_get_metadata.json")
    token = issuer.mint(tenant="clinic-a", scope="user/*.rs")
    event["headers"]["Authorization"] = event["multiValueHeaders"]["Authorization"][0] = f"Bearer {token}"
    # When the function resolves it
    response = fhir_api.resolve(event, None)
    # Then the statement names the public base URL including the stage
    body = json.loads(response["body"])
    assert response["statusCode"] == 200
    assert (
        body["implementation"]["url"]
        == "https://abc123xyz.execute-api.eu-west-1.amazonaws.com/prod/tenants/clinic-a/fhir"
    )
    assert response["headers"]["X-Request-Id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"


def test_every_route_is_served_by_its_function(fhir_api, fhir_settings, auth_settings):
    # A route in the table without an operation would be a 404 in production.
    discovery = build_discovery_api(DiscoverySettings(**auth_settings.model_dump()))
    hl7v2_settings = Hl7v2InboundSettings(**fhir_settings.model_dump())
    hl7v2 = build_hl7v2_api(
        *bootstrap_hl7v2(
            hl7v2_settings, ledger=InMemoryMessageLedger(), archive=InMemoryMessageArchive(), **fakes()
        )
    )
    served = {names.FN_FHIR_API: fhir_api, names.FN_DISCOVERY: discovery, names.FN_HL7V2_INBOUND: hl7v2}
    for route in ROUTES:
        assert route.function in served or route.function == names.FN_AUTHORIZER, route
        assert not served[route.function].missing_operations()


def test_an_operation_for_a_route_that_does_not_exist_cannot_be_registered():
    with pytest.raises(KeyError):
        Api(names.FN_FHIR_API).operation("deleteEverything")
