"""The lab-order workflow, the event bus and its rules, and the alarms."""

from __future__ import annotations

import json

import pytest

from ehr import names
from ehr.events.schema import ARCHIVE_RETENTION_DAYS, RULES

pytestmark = pytest.mark.infra


def test_state_machine_logs_all_events_and_traces(any_env) -> None:
    machine = any_env.stack.workflows.lab_order
    props = any_env.resources[any_env.logical_id(machine)]["Properties"]
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    logging = props["LoggingConfiguration"]
    assert logging["Level"] == "ALL"
    assert logging["IncludeExecutionData"] is False
    group = any_env.logical_id(any_env.stack.workflows.log_group)
    assert logging["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"] == {
        "Fn::GetAtt": [group, "Arn"]
    }
    assert "KmsKeyId" in any_env.resources[group]["Properties"]


def test_state_machine_definition_is_the_asl_file_with_substitutions(any_env) -> None:
    workflows = any_env.stack.workflows
    props = any_env.resources[any_env.logical_id(workflows.lab_order)]["Properties"]
    assert props["DefinitionSubstitutions"] == {
        "EventBusName": {"Ref": any_env.logical_id(any_env.stack.events.bus)},
        "EventSource": names.EVENT_SOURCE,
        "LabWorkflowFunctionArn": {
            "Fn::GetAtt": [any_env.logical_id(any_env.stack.compute.functions[names.FN_LAB_WORKFLOW]), "Arn"]
        },
        "DeadLetterQueueUrl": {"Ref": any_env.logical_id(workflows.dead_letters)},
    }
    assert set(props["DefinitionSubstitutions"]) == set(names.LAB_ORDER_SUBSTITUTIONS)
    assert "DefinitionS3Location" in props  # DefinitionBody.from_file ships the file as an asset


def test_state_machine_puts_events_on_the_bus_only_and_touches_no_data(any_env) -> None:
    policy = any_env.resources[any_env.logical_id(any_env.stack.workflows.policy)]["Properties"]
    statements = policy["PolicyDocument"]["Statement"]
    events = [
        s for s in statements if any(a.startswith("events:") for a in json.dumps(s["Action"]).split('"'))
    ]
    assert len(events) == 1
    assert events[0]["Action"] == "events:PutEvents"
    assert events[0]["Resource"] == {"Fn::GetAtt": [any_env.logical_id(any_env.stack.events.bus), "Arn"]}
    # It invokes its step function and dead-letters orders (test_cdk_lab_workflow.py), nothing else:
    # no other workflow, no table, no secret.
    assert not any(
        any(
            service in json.dumps(s["Action"])
            for service in ("states:", "dynamodb:", "secretsmanager:", "s3:")
        )
        for s in statements
    )


def test_bus_is_archived(any_env) -> None:
    archive = next(iter(any_env.of_type("AWS::Events::Archive").values()))["Properties"]
    assert archive["RetentionDays"] == ARCHIVE_RETENTION_DAYS
    assert archive["SourceArn"] == {"Fn::GetAtt": [any_env.logical_id(any_env.stack.events.bus), "Arn"]}


@pytest.mark.parametrize(
    "definition", [r for r in RULES if r.target == "lab_order_state_machine"], ids=lambda d: d.logical_id
)
def test_rule_targets_its_state_machine_with_retries_and_a_dead_letter_queue(any_env, definition) -> None:
    events = any_env.stack.events
    rule = any_env.resources[any_env.logical_id(events.rules[definition.logical_id])]["Properties"]
    assert rule["EventPattern"] == definition.event_pattern
    assert rule["EventBusName"] == {"Ref": any_env.logical_id(events.bus)}
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Ref": any_env.logical_id(any_env.stack.workflows.lab_order)}
    dlq = any_env.logical_id(events.dead_letter_queues[definition.logical_id])
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [dlq, "Arn"]}}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    queue = any_env.resources[dlq]["Properties"]
    assert queue["KmsMasterKeyId"] == {
        "Fn::GetAtt": [any_env.logical_id(any_env.stack.encryption.messaging_key), "Arn"]
    }


def test_queues_and_topic_refuse_plain_http(any_env) -> None:
    for kind, key in (("AWS::SQS::QueuePolicy", "Queues"), ("AWS::SNS::TopicPolicy", "Topics")):
        policies = any_env.of_type(kind)
        assert policies
        for policy in policies.values():
            statements = policy["Properties"]["PolicyDocument"]["Statement"]
            assert any(
                s["Effect"] == "Deny"
                and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
                for s in statements
            ), key
    topic = any_env.resources[any_env.logical_id(any_env.stack.monitoring.topic)]["Properties"]
    assert topic["KmsMasterKeyId"] == {
        "Fn::GetAtt": [any_env.logical_id(any_env.stack.encryption.messaging_key), "Arn"]
    }


def test_alarms_cover_api_functions_workflow_and_dead_letters(any_env) -> None:
    alarms = any_env.stack.monitoring.alarms
    expected = {"Api5xx", "ApiThrottled", "LabOrderExecutionsFailed", "LabOrderExecutionsTimedOut"}
    expected |= {f"{fn.title().replace('_', '')}Throttles" for fn in any_env.stack.compute.functions}
    expected |= {f"{fn.title().replace('_', '')}Errors" for fn in any_env.stack.compute.functions}
    expected |= {f"{rule.logical_id}DeadLetters" for rule in RULES}
    assert expected <= set(alarms)
    topic = {"Ref": any_env.logical_id(any_env.stack.monitoring.topic)}
    for alarm in alarms.values():
        assert any_env.resources[any_env.logical_id(alarm)]["Properties"]["AlarmActions"] == [topic]


def test_dead_letter_alarm_fires_on_the_first_message(any_env) -> None:
    rule = RULES[0].logical_id
    alarm = any_env.resources[any_env.logical_id(any_env.stack.monitoring.alarms[f"{rule}DeadLetters"])][
        "Properties"
    ]
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0


def test_alarm_email_subscription_has_a_dead_letter_queue(oidc) -> None:
    (subscription,) = oidc.of_type("AWS::SNS::Subscription").values()
    props = subscription["Properties"]
    assert props["Protocol"] == "email" and props["Endpoint"] == oidc.config.alarm_email
    assert "RedrivePolicy" in props
    assert "AlarmEmailDeadLetters" in oidc.stack.monitoring.alarms
