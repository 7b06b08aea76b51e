"""The REST API: generated from ROUTES, authorised, logged, throttled, firewalled, FHIR-shaped errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehr import names
from ehr.api.routes import ROUTES
from ehr.fhir.outcome import GATEWAY_RESPONSES

pytestmark = pytest.mark.infra


def resource_paths(synth) -> dict[str, str]:
    """Logical id of each API Gateway resource -> its path ('/' for the root)."""
    resources = synth.of_type("AWS::ApiGateway::Resource")
    paths: dict[str, str] = {}

    def path_of(logical_id: str) -> str:
        if logical_id not in paths:
            props = resources[logical_id]["Properties"]
            parent = props["ParentId"]
            prefix = "" if "Fn::GetAtt" in parent else path_of(parent["Ref"])
            paths[logical_id] = f"{prefix}/{props['PathPart']}"
        return paths[logical_id]

    for logical_id in resources:
        path_of(logical_id)
    return paths


def methods_by_route(synth) -> dict[tuple[str, str], dict[str, Any]]:
    paths = resource_paths(synth)
    return {
        (m["Properties"]["HttpMethod"], paths[m["Properties"]["ResourceId"]["Ref"]]): m["Properties"]
        for m in synth.of_type("AWS::ApiGateway::Method").values()
    }


def test_every_route_has_exactly_its_method(any_env) -> None:
    methods = methods_by_route(any_env)
    assert set(methods) == {route.key for route in ROUTES}


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_route_is_proxied_to_its_function_with_its_auth(any_env, route) -> None:
    method = methods_by_route(any_env)[route.key]
    integration = method["Integration"]
    assert integration["Type"] == "AWS_PROXY"
    function_id = any_env.logical_id(any_env.stack.compute.functions[route.function])
    assert function_id in json.dumps(integration["Uri"])
    assert method["OperationName"] == route.operation_id
    if route.auth:
        assert method["AuthorizationType"] == "CUSTOM"
        assert method["AuthorizerId"] == {"Ref": any_env.logical_id(any_env.stack.api.authorizer)}
    else:
        assert method["AuthorizationType"] == "NONE"
        assert "AuthorizerId" not in method


def test_methods_use_the_request_validator(any_env) -> None:
    validator = any_env.resources[any_env.logical_id(any_env.stack.api.request_validator)]["Properties"]
    assert validator["ValidateRequestBody"] is True and validator["ValidateRequestParameters"] is True
    for method in methods_by_route(any_env).values():
        assert method["RequestValidatorId"] == {
            "Ref": any_env.logical_id(any_env.stack.api.request_validator)
        }


def test_token_authorizer_reads_the_authorization_header(any_env) -> None:
    props = any_env.resources[any_env.logical_id(any_env.stack.api.authorizer)]["Properties"]
    assert props["Type"] == "TOKEN"
    assert props["IdentitySource"] == "method.request.header.Authorization"
    assert props["AuthorizerResultTtlInSeconds"] == any_env.config.authorizer_cache_ttl_seconds
    function_id = any_env.logical_id(any_env.stack.compute.functions[names.FN_AUTHORIZER])
    assert function_id in json.dumps(props["AuthorizerUri"])


@pytest.mark.parametrize("response", GATEWAY_RESPONSES, ids=lambda r: r.response_type)
def test_gateway_errors_are_operation_outcomes(dev, response) -> None:
    installed = [
        r["Properties"]
        for r in dev.of_type("AWS::ApiGateway::GatewayResponse").values()
        if r["Properties"]["ResponseType"] == response.response_type
    ]
    assert len(installed) == 1
    props = installed[0]
    assert props.get("StatusCode") == (str(response.status) if response.status is not None else None)
    for content_type in ("application/json", "application/fhir+json"):
        body = json.loads(props["ResponseTemplates"][content_type])
        assert body == response.body()
        assert body["resourceType"] == "OperationOutcome"
    for header, value in response.headers.items():
        assert props["ResponseParameters"][f"gatewayresponse.header.{header}"] == f"'{value}'"


def test_stage_logs_traces_and_throttles(any_env) -> None:
    stage = any_env.resources[any_env.logical_id(any_env.stack.api.stage)]["Properties"]
    assert stage["TracingEnabled"] is True
    access = stage["AccessLogSetting"]
    assert any_env.logical_id(any_env.stack.api.access_log_group) in json.dumps(access["DestinationArn"])
    fields = json.loads(access["Format"])  # structured (JSON) access log
    assert {"requestId", "status", "resourcePath"} <= set(fields)
    (settings,) = stage["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == any_env.config.api_throttle_rate_limit
    assert settings["ThrottlingBurstLimit"] == any_env.config.api_throttle_burst_limit
    assert settings["DataTraceEnabled"] is False
    assert settings["LoggingLevel"] == "ERROR"


def test_api_log_groups_are_encrypted_and_expire(any_env) -> None:
    logs_key = any_env.logical_id(any_env.stack.encryption.logs_key)
    for group in (any_env.stack.api.access_log_group, any_env.stack.api.execution_log_group):
        props = any_env.resources[any_env.logical_id(group)]["Properties"]
        assert props["KmsKeyId"] == {"Fn::GetAtt": [logs_key, "Arn"]}
        assert props["RetentionInDays"] == any_env.config.log_retention_days


def test_waf_is_associated_with_the_stage(any_env) -> None:
    firewall = any_env.stack.api.firewall
    association = any_env.resources[any_env.logical_id(firewall.association)]["Properties"]
    assert association["WebACLArn"] == {"Fn::GetAtt": [any_env.logical_id(firewall.web_acl), "Arn"]}
    assert any_env.logical_id(any_env.stack.api.rest_api) in json.dumps(association["ResourceArn"])
    assert any_env.logical_id(any_env.stack.api.stage) in json.dumps(association["ResourceArn"])


def test_waf_has_managed_rule_groups_and_a_rate_limit(any_env) -> None:
    acl = any_env.resources[any_env.logical_id(any_env.stack.api.firewall.web_acl)]["Properties"]
    assert acl["Scope"] == "REGIONAL"
    rules = {rule["Name"]: rule for rule in acl["Rules"]}
    rate = rules["RateLimitPerIp"]["Statement"]["RateBasedStatement"]
    assert rate == {
        "AggregateKeyType": "IP",
        "Limit": any_env.config.waf_rate_limit,
        "EvaluationWindowSec": 300,
    }
    assert rules["RateLimitPerIp"]["Action"]["Block"]["CustomResponse"]["ResponseCode"] == 429
    managed = {
        r["Statement"]["ManagedRuleGroupStatement"]["Name"] for r in acl["Rules"] if "OverrideAction" in r
    }
    assert {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"} <= managed
    body = json.loads(next(iter(acl["CustomResponseBodies"].values()))["Content"])
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "throttled"


def test_waf_logs_redact_tokens_and_queries(any_env) -> None:
    logging = any_env.resources[any_env.logical_id(any_env.stack.api.firewall.logging)]["Properties"]
    assert {"SingleHeader": {"Name": "authorization"}} in logging["RedactedFields"]
    assert {"QueryString": {}} in logging["RedactedFields"]
