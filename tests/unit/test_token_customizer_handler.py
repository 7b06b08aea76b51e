"""The token_customizer Lambda as Cognito invokes it: a recorded V3_0 ``TokenGeneration_ClientCredentials``
event in, the same event with the access token's claims decided out (Cognito itself faked)."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from collections.abc import Iterator
from types import ModuleType

import pytest

from ehr import names
from ehr.security.cognito_claims import ClientLookupError, FakeAppClients, build_token_customizer
from ehr.settings import TokenCustomizerSettings, environment_for
from infra.local.gateway import FUNCTIONS_DIR, LambdaContext
from tests.conftest import load_event

EVENT = "cognito_pre_token_generation_v3_client_credentials.json"
POOL = "eu-west-1_EXAMPLE"
CLIENT = "1example23456789"


@pytest.fixture(scope="module")
def handler_module() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        environment = {
            **environment_for(TokenCustomizerSettings, environment="test", tenant_claim="tenant"),
            "POWERTOOLS_SERVICE_NAME": names.SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": names.METRICS_NAMESPACE,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "AWS_DEFAULT_REGION": "eu-west-1",
        }
        for key, value in environment.items():
            patch.setenv(key, value)
        path = FUNCTIONS_DIR / names.FN_TOKEN_CUSTOMIZER / "handler.py"
        spec = importlib.util.spec_from_file_location("token_customizer_handler_under_test", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # cold start: settings validated, Cognito not called yet
        yield module


@pytest.fixture
def cognito(handler_module, monkeypatch) -> FakeAppClients:
    """Cognito's app clients as the handler sees them: one partner bound to clinic-a, the system client."""
    directory = FakeAppClients(
        {
            (POOL, CLIENT): names.cognito_tenant_client_name("clinic-a", "acme-lab"),
            (POOL, "system-client-id"): names.COGNITO_SYSTEM_CLIENT_NAME,
        }
    )
    settings = TokenCustomizerSettings(tenant_claim="tenant")
    monkeypatch.setattr(handler_module, "customize", build_token_customizer(settings, directory=directory))
    return directory


def invoke(module: ModuleType, event: dict) -> dict:
    handler = getattr(module, names.HANDLER_ATTRIBUTE)
    result: dict = handler(event, LambdaContext(function_name=names.FN_TOKEN_CUSTOMIZER))
    return result


def test_a_partner_client_gets_its_tenant_claim(handler_module, cognito):
    # Given the recorded event of a client-credentials grant, its client sending a tenant of its own
    event = copy.deepcopy(load_event(EVENT))
    event["request"]["clientMetadata"] = {"tenant": "clinic-b"}
    # When Cognito invokes the trigger
    result = invoke(handler_module, event)
    # Then it gets its event back, with the bound tenant added to the access token only
    assert result["response"] == {
        "claimsAndScopeOverrideDetails": {
            "accessTokenGeneration": {"claimsToAddOrOverride": {"tenant": "clinic-a"}}
        }
    }
    assert {k: v for k, v in result.items() if k != "response"} == {
        k: v for k, v in event.items() if k != "response"
    }
    assert cognito.lookups == [(POOL, CLIENT)]
    json.dumps(result)  # Cognito reads it as JSON


def test_the_system_client_gets_no_tenant_and_the_client_id_is_logged(handler_module, cognito, caplog):
    event = copy.deepcopy(load_event(EVENT))
    event["callerContext"]["clientId"] = "system-client-id"
    with caplog.at_level(logging.WARNING):
        result = invoke(handler_module, event)
    access = result["response"]["claimsAndScopeOverrideDetails"]["accessTokenGeneration"]
    assert access == {"claimsToSuppress": ["tenant"]}
    (record,) = [r for r in caplog.records if "binds no tenant" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert (record.clientId, record.userPoolId, record.tenant) == ("system-client-id", POOL, None)


def test_an_unreadable_binding_fails_the_invocation(handler_module, cognito):
    cognito.failure = "TooManyRequestsException"
    with pytest.raises(ClientLookupError):
        invoke(handler_module, copy.deepcopy(load_event(EVENT)))
