"""The Lambda functions: runtime, code, layer, environment, and exactly what each role may do."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import aws_lambda as lambda_

from ehr import names
from ehr.settings import LOCAL_ONLY_SETTINGS, environment_for
from infra.constructs.audit import AUDIT_APPEND_ACTIONS, AUDIT_READ_ACTIONS
from infra.constructs.clinical_store import RECORDS_READ_WRITE_ACTIONS
from infra.constructs.compute import COGNITO_ONLY, SETTINGS

pytestmark = pytest.mark.infra


def role_statements(synth, role_logical_id: str) -> list[dict[str, Any]]:
    """Every statement granted to a role: inline, attached managed policies, AWS::IAM::Policy."""
    role = synth.resources[role_logical_id]["Properties"]
    statements = [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    for kind in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
        for policy in synth.of_type(kind).values():
            if {"Ref": role_logical_id} in policy["Properties"].get("Roles", []):
                statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def actions_on(statements: list[dict[str, Any]], resource_logical_id: str | None = None) -> set[str]:
    found: set[str] = set()
    for statement in statements:
        if resource_logical_id is None or resource_logical_id in json.dumps(statement["Resource"]):
            actions = statement["Action"]
            found |= {actions} if isinstance(actions, str) else set(actions)
    return found


def function_props(synth, fn: str) -> dict[str, Any]:
    return synth.resources[synth.logical_id(synth.stack.compute.functions[fn])]["Properties"]


def deployed(synth, fn: str) -> bool:
    """Whether the stack has ``fn``: every function does, except the Cognito trigger without a pool."""
    if fn in synth.stack.compute.functions:
        return True
    assert fn in COGNITO_ONLY and synth.stack.identity.user_pool is None, fn
    return False


def test_one_function_per_name(any_env) -> None:
    expected = [
        fn for fn in names.FUNCTIONS if any_env.config.auth.mode == "cognito" or fn not in COGNITO_ONLY
    ]
    assert list(any_env.stack.compute.functions) == expected
    assert len(any_env.of_type("AWS::Lambda::Function")) == len(expected)


@pytest.mark.parametrize("fn", names.FUNCTIONS)
def test_function_runs_the_newest_python_on_arm(any_env, fn) -> None:
    if not deployed(any_env, fn):
        return
    props = function_props(any_env, fn)
    newest = max(
        (r for r in lambda_.Runtime.ALL if r.name.startswith("python3.")),
        key=lambda r: tuple(int(p) for p in r.name.removeprefix("python").split(".")),
    )
    assert props["Runtime"] == newest.name  # what cdk-nag's AwsSolutions-L1 requires
    assert props["Architectures"] == ["arm64"]
    assert props["Handler"] == names.handler_path(fn)
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["Layers"] == [{"Ref": any_env.logical_id(any_env.stack.compute.layer)}]


@pytest.mark.parametrize("fn", names.FUNCTIONS)
def test_function_environment_is_its_settings_model(any_env, fn) -> None:
    if not deployed(any_env, fn):
        return
    variables = function_props(any_env, fn)["Environment"]["Variables"]
    model = SETTINGS[fn]
    ehr_vars = {k for k in variables if k.startswith("EHR_")}
    cloud_fields = [f for f in model.model_fields if f not in LOCAL_ONLY_SETTINGS]
    required = [f for f in cloud_fields if model.model_fields[f].is_required()]
    # Every variable is a setting of the model; every required setting is there; optional ones
    # (such as token_endpoint_auth_methods for an OIDC issuer that names none) may be left out.
    assert ehr_vars <= set(environment_for(model, **dict.fromkeys(cloud_fields, "x")))
    assert set(environment_for(model, **dict.fromkeys(required, "x"))) <= ehr_vars
    assert "EHR_JWKS_JSON" not in variables  # local mode only
    assert variables["EHR_ENVIRONMENT"] == any_env.config.name
    if "tenant_claim" in model.model_fields:
        assert variables["EHR_TENANT_CLAIM"] == any_env.config.auth.tenant_claim
    assert variables["POWERTOOLS_SERVICE_NAME"] == names.SERVICE_NAME
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == names.METRICS_NAMESPACE


def test_oidc_mode_passes_the_configured_issuer(oidc) -> None:
    variables = function_props(oidc, names.FN_AUTHORIZER)["Environment"]["Variables"]
    auth = oidc.config.auth
    assert variables["EHR_ISSUER"] == auth.issuer
    assert variables["EHR_AUDIENCE"] == auth.audience
    assert variables["EHR_JWKS_URL"] == auth.jwks_url
    assert variables["EHR_TOKEN_ENDPOINT"] == auth.token_endpoint
    assert variables["EHR_TENANT_CLAIM"] == "facility"
    assert oidc.of_type("AWS::Cognito::UserPool") == {}


def test_cognito_mode_derives_issuer_and_jwks_from_the_pool(dev) -> None:
    variables = function_props(dev, names.FN_AUTHORIZER)["Environment"]["Variables"]
    pool = dev.logical_id(dev.stack.identity.user_pool)
    issuer = json.dumps(variables["EHR_ISSUER"])
    assert "https://cognito-idp." in issuer and pool in issuer
    assert json.dumps(variables["EHR_JWKS_URL"]).endswith('"/.well-known/jwks.json"]]}')
    assert "/oauth2/token" in json.dumps(variables["EHR_TOKEN_ENDPOINT"])
    server = next(iter(dev.of_type("AWS::Cognito::UserPoolResourceServer").values()))["Properties"]
    assert server["Identifier"] == "system"
    assert {"*.rs", "*.read"} <= {s["ScopeName"] for s in server["Scopes"]}
    client = next(iter(dev.of_type("AWS::Cognito::UserPoolClient").values()))["Properties"]
    assert client["AllowedOAuthFlows"] == ["client_credentials"] and client["GenerateSecret"] is True


def test_one_role_per_function(any_env) -> None:
    functions = any_env.stack.compute.functions
    roles = {function_props(any_env, fn)["Role"]["Fn::GetAtt"][0] for fn in functions}
    assert len(roles) == len(functions)
    for fn in functions:
        role = any_env.stack.compute.roles[fn]
        assert function_props(any_env, fn)["Role"] == {"Fn::GetAtt": [any_env.logical_id(role), "Arn"]}


def test_no_inline_policies_anywhere(any_env) -> None:
    assert any_env.of_type("AWS::IAM::Policy") == {}
    assert all("Policies" not in r["Properties"] for r in any_env.of_type("AWS::IAM::Role").values())


def test_fhir_api_reads_and_writes_records_and_only_appends_audit(any_env) -> None:
    statements = role_statements(any_env, any_env.logical_id(any_env.stack.compute.roles[names.FN_FHIR_API]))
    records = any_env.logical_id(any_env.stack.clinical_store.records_table)
    audit = any_env.logical_id(any_env.stack.audit.audit_table)
    assert actions_on(statements, records) == set(RECORDS_READ_WRITE_ACTIONS)
    # Appends and reads of the trail; never an update or a delete.
    assert actions_on(statements, audit) == set(AUDIT_APPEND_ACTIONS) | set(AUDIT_READ_ACTIONS)
    assert set(AUDIT_APPEND_ACTIONS) == {"dynamodb:PutItem"}
    assert not actions_on(statements, audit) & {
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
    }
    assert "dynamodb:Scan" not in actions_on(statements)
    for statement in statements:
        if records in json.dumps(statement["Resource"]) or audit in json.dumps(statement["Resource"]):
            assert statement["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["T#*#*"]}}


@pytest.mark.parametrize("fn", [names.FN_DISCOVERY, names.FN_AUTHORIZER])
def test_discovery_and_authorizer_touch_no_data(any_env, fn) -> None:
    statements = role_statements(any_env, any_env.logical_id(any_env.stack.compute.roles[fn]))
    actions = actions_on(statements)
    assert not {a for a in actions if a.split(":")[0] in {"dynamodb", "kms", "s3", "events", "states"}}
    assert actions == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
    }


@pytest.mark.parametrize("fn", names.FUNCTIONS)
def test_function_logs_are_encrypted_and_expire(any_env, fn) -> None:
    if not deployed(any_env, fn):
        return
    props = function_props(any_env, fn)
    group_id = any_env.logical_id(any_env.stack.compute.log_groups[fn])
    assert props["LoggingConfig"]["LogGroup"] == {"Ref": group_id}
    group = any_env.resources[group_id]["Properties"]
    assert group["RetentionInDays"] == any_env.config.log_retention_days
    assert group["KmsKeyId"] == {"Fn::GetAtt": [any_env.logical_id(any_env.stack.encryption.logs_key), "Arn"]}


def test_every_log_group_has_the_configured_retention(any_env) -> None:
    groups = any_env.of_type("AWS::Logs::LogGroup")
    assert groups
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == any_env.config.log_retention_days
        assert "KmsKeyId" in group["Properties"]


def test_prod_reserves_concurrency(prod) -> None:
    for fn, reserved in prod.config.reserved_concurrency.items():
        assert function_props(prod, fn)["ReservedConcurrentExecutions"] == reserved
