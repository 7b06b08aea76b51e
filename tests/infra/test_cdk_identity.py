"""Cognito mode: the pool's pre token generation trigger (V3_0) puts the tenant of the app client
into access tokens, reading only this pool's client names; OIDC mode has neither pool nor trigger."""

from __future__ import annotations

import json

import pytest

from ehr import names
from ehr.security.cognito_claims import tenant_of_client_name
from infra.constructs.compute import COGNITO_TRIGGER_TIMEOUT_SECONDS
from infra.constructs.identity import CLIENT_LOOKUP_ACTIONS
from tests.infra.test_cdk_functions import actions_on, function_props, role_statements

pytestmark = pytest.mark.infra

LOGS_AND_TRACES = {
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}


@pytest.fixture(scope="session", params=["dev", "prod"])
def cognito_env(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def pool_props(synth) -> dict:
    (pool,) = synth.of_type("AWS::Cognito::UserPool").values()
    return pool["Properties"]


def customizer_statements(synth) -> list[dict]:
    role = synth.stack.compute.roles[names.FN_TOKEN_CUSTOMIZER]
    return role_statements(synth, synth.logical_id(role))


def test_the_pool_calls_the_token_customizer_with_event_version_3(cognito_env) -> None:
    function = cognito_env.logical_id(cognito_env.stack.compute.functions[names.FN_TOKEN_CUSTOMIZER])
    props = pool_props(cognito_env)
    # V3_0 is the version Cognito sends for client-credentials grants; it needs the Essentials tier
    assert props["LambdaConfig"] == {
        "PreTokenGenerationConfig": {"LambdaArn": {"Fn::GetAtt": [function, "Arn"]}, "LambdaVersion": "V3_0"}
    }
    assert props["UserPoolTier"] == "ESSENTIALS"


def test_only_this_pool_may_invoke_the_token_customizer(cognito_env) -> None:
    function = cognito_env.logical_id(cognito_env.stack.compute.functions[names.FN_TOKEN_CUSTOMIZER])
    pool = cognito_env.logical_id(cognito_env.stack.identity.user_pool)
    permissions = [
        p["Properties"]
        for p in cognito_env.of_type("AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Fn::GetAtt": [function, "Arn"]}
    ]
    assert permissions == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Fn::GetAtt": [function, "Arn"]},
            "Principal": "cognito-idp.amazonaws.com",
            "SourceArn": {"Fn::GetAtt": [pool, "Arn"]},
        }
    ]


def test_the_token_customizer_may_read_this_pools_client_names_and_nothing_else(cognito_env) -> None:
    statements = customizer_statements(cognito_env)
    pool = cognito_env.logical_id(cognito_env.stack.identity.user_pool)
    lookups = [s for s in statements if any(a.startswith("cognito-idp:") for a in actions_on([s]))]
    assert [(actions_on([s]), s["Resource"]) for s in lookups] == [
        (set(CLIENT_LOOKUP_ACTIONS), {"Fn::GetAtt": [pool, "Arn"]})
    ]
    assert CLIENT_LOOKUP_ACTIONS == ("cognito-idp:DescribeUserPoolClient",)
    # no data at all: no table, bucket, key, secret, queue, bus or workflow
    assert actions_on(statements) == LOGS_AND_TRACES | set(CLIENT_LOOKUP_ACTIONS)


def test_no_other_function_may_ask_cognito(cognito_env) -> None:
    for fn in cognito_env.stack.compute.functions:
        if fn != names.FN_TOKEN_CUSTOMIZER:
            role = cognito_env.stack.compute.roles[fn]
            text = json.dumps(role_statements(cognito_env, cognito_env.logical_id(role)))
            assert "cognito-idp:" not in text, fn


def test_the_token_customizer_gets_the_claim_name_but_no_pool_id(cognito_env) -> None:
    props = function_props(cognito_env, names.FN_TOKEN_CUSTOMIZER)
    variables = {k: v for k, v in props["Environment"]["Variables"].items() if k.startswith("EHR_")}
    # the event names its pool; a pool id here would make pool -> function -> pool a cycle
    assert variables == {"EHR_ENVIRONMENT": cognito_env.config.name, "EHR_TENANT_CLAIM": "tenant"}
    assert props["Timeout"] <= COGNITO_TRIGGER_TIMEOUT_SECONDS == 5


def test_the_token_customizer_is_alarmed_on(cognito_env) -> None:
    assert {"TokenCustomizerErrors", "TokenCustomizerThrottles"} <= set(cognito_env.stack.monitoring.alarms)


def test_the_stacks_own_client_binds_no_tenant(cognito_env) -> None:
    (client,) = cognito_env.of_type("AWS::Cognito::UserPoolClient").values()
    name = client["Properties"]["ClientName"]
    assert name == names.COGNITO_SYSTEM_CLIENT_NAME
    assert tenant_of_client_name(name) is None


def test_oidc_mode_has_no_pool_no_trigger_and_no_token_customizer(oidc) -> None:
    assert names.FN_TOKEN_CUSTOMIZER not in oidc.stack.compute.functions
    assert oidc.of_type("AWS::Cognito::UserPool") == {}
    assert oidc.of_type("AWS::Cognito::UserPoolClient") == {}
    template = json.dumps(oidc.resources)
    assert "cognito-idp" not in template
    assert "TokenCustomizer" not in template


def test_cognito_tokens_are_verified_as_access_tokens_without_aud(cognito_env, oidc) -> None:
    # Cognito access tokens carry no `aud`: the authorizer and every function verify them with the
    # cognito-access profile (token_use "access", this pool as issuer); an OIDC issuer keeps `aud`.
    for fn in (names.FN_AUTHORIZER, names.FN_FHIR_API):
        cognito_vars = function_props(cognito_env, fn)["Environment"]["Variables"]
        assert cognito_vars["EHR_TOKEN_PROFILE"] == "cognito-access", fn
        assert (
            function_props(oidc, fn)["Environment"]["Variables"].get("EHR_TOKEN_PROFILE", "jwt") == "jwt"
        ), fn
