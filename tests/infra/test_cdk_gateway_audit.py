"""Requests refused at API Gateway's authorizer reach the audit trail: access log → subscription
filter → gateway_audit, whose role may read tenant registrations and append to the trail only."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehr import names
from ehr.security.gateway_audit import ACCESS_LOG_KEYS, REFUSAL_TYPES
from ehr.store.schema import tenant_registry_key
from infra.constructs.api import ACCESS_LOG_FIELDS
from infra.constructs.audit import AUDIT_APPEND_ACTIONS
from infra.constructs.compute import ASYNC_MAX_EVENT_AGE, ASYNC_RETRY_ATTEMPTS

pytestmark = pytest.mark.infra


def getatt(synth, construct: Any) -> dict[str, Any]:
    return {"Fn::GetAtt": [synth.logical_id(construct), "Arn"]}


def actions(statement: dict[str, Any]) -> set[str]:
    value = statement["Action"]
    return {value} if isinstance(value, str) else set(value)


def test_the_access_log_writes_every_field_the_auditor_reads() -> None:
    assert set(ACCESS_LOG_KEYS) <= set(ACCESS_LOG_FIELDS)
    assert ACCESS_LOG_FIELDS["errorType"] == "$context.error.responseType"
    assert ACCESS_LOG_FIELDS["resourcePath"] == "$context.resourcePath"


def test_refusals_in_the_access_log_invoke_the_gateway_auditor(any_env) -> None:
    api = any_env.stack.api
    function = any_env.stack.compute.functions[names.FN_GATEWAY_AUDIT]
    (subscription,) = any_env.of_type("AWS::Logs::SubscriptionFilter").values()
    properties = subscription["Properties"]
    assert properties["LogGroupName"] == {"Ref": any_env.logical_id(api.access_log_group)}
    assert properties["DestinationArn"] == getatt(any_env, function)
    pattern = properties["FilterPattern"]
    for kind in REFUSAL_TYPES:
        assert f'$.errorType = "{kind}"' in pattern
    # CloudWatch Logs, for this log group only, is the one caller of the function.
    permissions = [
        p["Properties"]
        for p in any_env.of_type("AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == getatt(any_env, function)
    ]
    assert [(p["Principal"], p["SourceArn"]) for p in permissions] == [
        ("logs.amazonaws.com", getatt(any_env, api.access_log_group))
    ]


def test_failed_batches_are_retried_then_kept_in_a_queue(any_env) -> None:
    compute = any_env.stack.compute
    config = any_env.resources[any_env.logical_id(compute.async_configs[names.FN_GATEWAY_AUDIT])]
    queue = compute.dead_letter_queues["GatewayAudit"]
    assert config["Properties"]["MaximumRetryAttempts"] == ASYNC_RETRY_ATTEMPTS
    assert config["Properties"]["MaximumEventAgeInSeconds"] == ASYNC_MAX_EVENT_AGE.to_seconds()
    assert config["Properties"]["DestinationConfig"] == {"OnFailure": {"Destination": getatt(any_env, queue)}}


def test_the_auditor_reads_tenant_registrations_and_appends_to_the_trail_only(any_env) -> None:
    statements = any_env.function_statements(names.FN_GATEWAY_AUDIT)
    records = any_env.logical_id(any_env.stack.clinical_store.records_table)
    audit = any_env.logical_id(any_env.stack.audit.audit_table)
    on_records = [s for s in statements if records in json.dumps(s["Resource"])]
    on_audit = [s for s in statements if audit in json.dumps(s["Resource"])]
    assert [actions(s) for s in on_records] == [{"dynamodb:GetItem"}]
    assert on_records[0]["Condition"] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [tenant_registry_key("*")["pk"]]}
    }
    assert tenant_registry_key("*")["pk"] == "T#*#TENANT"
    assert [actions(s) for s in on_audit] == [set(AUDIT_APPEND_ACTIONS)]
    every = set().union(*(actions(s) for s in statements))
    assert not {a for a in every if a.startswith("dynamodb:")} - {"dynamodb:GetItem", "dynamodb:PutItem"}
    assert not {a for a in every if a.split(":")[0] in {"s3", "events", "states", "secretsmanager"}}
    for statement in statements:
        if any(a.startswith("kms:") for a in actions(statement)):
            assert "kms:ViaService" in statement["Condition"]["StringEquals"]
