"""The lab-order workflow's wiring on the synthesized template: the state machine and its
``lab_workflow`` function, the lab-order dead-letter queue, the LabOrderCancelled rule, the records
stream's ``change_publisher``, exactly what each role may do, and the alarms on all of it."""

from __future__ import annotations

import graphlib
import json
import re
from typing import Any

import pytest

from ehr import names
from ehr.events.schema import RULES
from ehr.settings import ChangePublisherSettings, environment_for
from ehr.store.keys import CURRENT
from infra.constructs.change_feed import CHANGE_MAX_RECORD_AGE, CHANGE_RETRY_ATTEMPTS
from infra.constructs.clinical_store import CHANGE_DEAD_LETTERS
from infra.constructs.compute import ASYNC_MAX_EVENT_AGE, ASYNC_RETRY_ATTEMPTS
from infra.constructs.sharing import (
    MPI_READ_ACTIONS,
    MPI_READ_KEY_ACTIONS,
    MPI_WRITE_ACTIONS,
    MPI_WRITE_KEY_ACTIONS,
)
from infra.constructs.workflows import LAB_ORDER_DEAD_LETTERS
from infra.stack import PROJECT_ROOT

pytestmark = pytest.mark.infra

LOGS_AND_TRACES = {
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}
CANCELLED_RULE = next(r for r in RULES if r.target == "lab_workflow_function")


def props(synth, construct) -> dict[str, Any]:
    return synth.resources[synth.logical_id(construct)]["Properties"]


def getatt(synth, construct, attribute: str = "Arn") -> dict[str, Any]:
    return {"Fn::GetAtt": [synth.logical_id(construct), attribute]}


def actions(statement: dict[str, Any]) -> set[str]:
    value = statement["Action"]
    return {value} if isinstance(value, str) else set(value)


def workflow_statements(synth) -> list[dict[str, Any]]:
    return props(synth, synth.stack.workflows.policy)["PolicyDocument"]["Statement"]


def with_service(statements: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    return [s for s in statements if any(a.startswith(f"{service}:") for a in actions(s))]


def joined(value: Any) -> str:
    """An ``Fn::Join`` ARN as text, pseudo parameters as ``<AWS::...>`` (as cdk-nag shows them)."""
    parts = value["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else f"<{p['Ref']}>" for p in parts)


def via_service(statement: dict[str, Any]) -> str:
    """The service of a ``kms:ViaService`` condition (``sqs`` of ``sqs.<region>.<suffix>``)."""
    value = statement["Condition"]["StringEquals"]["kms:ViaService"]
    return value["Fn::Join"][1][0].rstrip(".")


# --- the state machine -------------------------------------------------------------------------


def test_every_placeholder_of_the_asl_file_is_substituted(any_env) -> None:
    # Given the ASL file the stack ships
    text = (PROJECT_ROOT / names.LAB_ORDER_ASL).read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    # Then the state machine substitutes each of them, and the core's list names exactly those
    substitutions = props(any_env, any_env.stack.workflows.lab_order)["DefinitionSubstitutions"]
    assert placeholders == set(substitutions) == set(names.LAB_ORDER_SUBSTITUTIONS)


def test_the_definition_invokes_the_lab_workflow_function_and_dead_letters_to_the_lab_order_queue(
    any_env,
) -> None:
    stack = any_env.stack
    substitutions = props(any_env, stack.workflows.lab_order)["DefinitionSubstitutions"]
    assert substitutions["LabWorkflowFunctionArn"] == getatt(
        any_env, stack.compute.functions[names.FN_LAB_WORKFLOW]
    )
    assert substitutions["DeadLetterQueueUrl"] == {"Ref": any_env.logical_id(stack.workflows.dead_letters)}


def test_the_state_machine_role_may_invoke_exactly_its_function_and_send_to_exactly_its_queue(
    any_env,
) -> None:
    stack = any_env.stack
    statements = workflow_statements(any_env)

    (invoke,) = with_service(statements, "lambda")
    assert actions(invoke) == {"lambda:InvokeFunction"}
    # the unqualified ARN the definition uses: no other function, no version or alias wildcard
    assert invoke["Resource"] == getatt(any_env, stack.compute.functions[names.FN_LAB_WORKFLOW])

    (send,) = with_service(statements, "sqs")
    assert actions(send) == {"sqs:SendMessage"}
    assert send["Resource"] == getatt(any_env, stack.workflows.dead_letters)

    # the queue's key, only through SQS
    (key,) = with_service(statements, "kms")
    assert actions(key) == {"kms:GenerateDataKey", "kms:Decrypt"}
    assert key["Resource"] == getatt(any_env, stack.encryption.messaging_key)
    assert via_service(key) == "sqs"


def test_the_lab_order_dead_letter_queue_is_encrypted_tls_only_and_alarmed_on_the_first_message(
    any_env,
) -> None:
    queue = any_env.stack.workflows.dead_letters
    assert props(any_env, queue)["KmsMasterKeyId"] == getatt(any_env, any_env.stack.encryption.messaging_key)
    ref = {"Ref": any_env.logical_id(queue)}
    policies = [
        p for p in any_env.of_type("AWS::SQS::QueuePolicy").values() if ref in p["Properties"]["Queues"]
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        for p in policies
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    )
    alarm = props(any_env, any_env.stack.monitoring.alarms[f"{LAB_ORDER_DEAD_LETTERS}DeadLetters"])
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": getatt(any_env, queue, "QueueName")}]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0


def test_the_template_has_no_dependency_cycle(any_env) -> None:
    """The workflow needs the function's ARN and the function the workflow's: CloudFormation
    must still find an order (a cycle only shows at deploy time, never at synth)."""
    resources = any_env.resources

    def refs(node: Any, out: set[str]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "Ref" and value in resources:
                    out.add(value)
                elif key == "Fn::GetAtt":
                    out.add(value[0])
                elif key == "Fn::Sub":
                    text = value if isinstance(value, str) else value[0]
                    out |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)} & set(resources)
                    if not isinstance(value, str):
                        refs(value[1], out)
                else:
                    refs(value, out)
        elif isinstance(node, list):
            for item in node:
                refs(item, out)

    graph: dict[str, set[str]] = {}
    for logical_id, resource in resources.items():
        needs: set[str] = set()
        refs(resource.get("Properties", {}), needs)
        depends = resource.get("DependsOn", [])
        needs |= {depends} if isinstance(depends, str) else set(depends)
        graph[logical_id] = needs
    list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle

    # and the function really is created after its policy, the workflow after the function
    function = any_env.logical_id(any_env.stack.compute.functions[names.FN_LAB_WORKFLOW])
    policy = any_env.logical_id(any_env.stack.compute.policies[names.FN_LAB_WORKFLOW])
    assert policy in graph[function]
    assert function in graph[any_env.logical_id(any_env.stack.workflows.lab_order)]


# --- who may resume the workflow, and the partner secrets ----------------------------------------


@pytest.mark.parametrize("fn", [names.FN_LAB_WORKFLOW, names.FN_HL7V2_INBOUND])
def test_lab_workflow_and_hl7v2_inbound_may_send_task_success_to_the_lab_order_state_machine_only(
    any_env, fn
) -> None:
    workflows = any_env.stack.workflows
    (statement,) = with_service(any_env.function_statements(fn), "states")
    assert actions(statement) == {"states:SendTaskSuccess"}
    arn = joined(statement["Resource"])
    assert arn == (
        f"arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:stateMachine:{workflows.lab_order_name}"
    )
    # ... which is the lab-order state machine's ARN: it carries that name
    assert props(any_env, workflows.lab_order)["StateMachineName"] == workflows.lab_order_name
    assert workflows.lab_order_name == f"{any_env.config.stack_name}-LabOrder"


def test_no_other_function_may_signal_a_workflow(any_env) -> None:
    for fn in any_env.stack.compute.functions:
        if fn not in (names.FN_LAB_WORKFLOW, names.FN_HL7V2_INBOUND):
            assert not with_service(any_env.function_statements(fn), "states"), fn


def test_lab_workflow_may_read_only_the_partner_secrets_and_the_cursor_secret(any_env) -> None:
    statements = with_service(any_env.function_statements(names.FN_LAB_WORKFLOW), "secretsmanager")
    by_resource = {json.dumps(s["Resource"], sort_keys=True): actions(s) for s in statements}
    cursor = json.dumps({"Ref": any_env.logical_id(any_env.stack.clinical_store.cursor_secret)})
    assert by_resource.pop(cursor) == {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
    ((partner, partner_actions),) = by_resource.items()
    assert partner_actions == {"secretsmanager:GetSecretValue"}
    assert joined(json.loads(partner)) == (
        f"arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:{names.PARTNER_SECRET_PREFIX}*"
    )
    assert names.partner_secret_name("t1", "acme").startswith(names.PARTNER_SECRET_PREFIX)


def test_no_other_function_may_read_partner_secrets(any_env) -> None:
    for fn in any_env.stack.compute.functions:
        if fn != names.FN_LAB_WORKFLOW:
            text = json.dumps(any_env.function_statements(fn))
            assert names.PARTNER_SECRET_PREFIX not in text, fn


def test_lab_workflow_reads_and_writes_records_with_tenant_shaped_keys(any_env) -> None:
    statements = any_env.function_statements(names.FN_LAB_WORKFLOW)
    records = any_env.logical_id(any_env.stack.clinical_store.records_table)
    on_records = [s for s in statements if records in json.dumps(s["Resource"])]
    assert on_records and all(
        s["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["T#*#*"]}} for s in on_records
    )
    assert "dynamodb:Scan" not in {a for s in statements for a in actions(s)}


# --- the LabOrderCancelled rule and lab_workflow's asynchronous invocations ----------------------


def test_the_cancelled_rule_invokes_lab_workflow_with_retries_and_a_dead_letter_queue(any_env) -> None:
    events = any_env.stack.events
    function = any_env.stack.compute.functions[names.FN_LAB_WORKFLOW]
    rule = props(any_env, events.rules[CANCELLED_RULE.logical_id])
    assert rule["EventPattern"] == CANCELLED_RULE.event_pattern
    assert rule["EventBusName"] == {"Ref": any_env.logical_id(events.bus)}
    (target,) = rule["Targets"]
    assert target["Arn"] == getatt(any_env, function)
    assert "RoleArn" not in target  # EventBridge invokes Lambda through the function's resource policy
    dlq = events.dead_letter_queues[CANCELLED_RULE.logical_id]
    assert target["DeadLetterConfig"] == {"Arn": getatt(any_env, dlq)}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    assert props(any_env, dlq)["KmsMasterKeyId"] == getatt(any_env, any_env.stack.encryption.messaging_key)
    # only this rule may invoke the function
    permissions = [
        p["Properties"]
        for p in any_env.of_type("AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == getatt(any_env, function)
    ]
    assert permissions == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": getatt(any_env, function),
            "Principal": "events.amazonaws.com",
            "SourceArn": getatt(any_env, events.rules[CANCELLED_RULE.logical_id]),
        }
    ]


def test_lab_workflow_retries_failed_events_then_sends_them_to_its_failure_queue(any_env) -> None:
    compute = any_env.stack.compute
    config = compute.async_configs[names.FN_LAB_WORKFLOW]
    queue = compute.dead_letter_queues["LabWorkflow"]
    resource = any_env.resources[any_env.logical_id(config)]
    assert resource["Properties"] == {
        "FunctionName": {"Ref": any_env.logical_id(compute.functions[names.FN_LAB_WORKFLOW])},
        "Qualifier": "$LATEST",
        "MaximumRetryAttempts": ASYNC_RETRY_ATTEMPTS,
        "MaximumEventAgeInSeconds": ASYNC_MAX_EVENT_AGE.to_seconds(),
        "DestinationConfig": {"OnFailure": {"Destination": getatt(any_env, queue)}},
    }
    # Lambda checks the destination permission when the config is created
    assert any_env.logical_id(compute.policies[names.FN_LAB_WORKFLOW]) in resource["DependsOn"]
    statements = any_env.function_statements(names.FN_LAB_WORKFLOW)
    (send,) = with_service(statements, "sqs")
    assert actions(send) == {"sqs:SendMessage"} and send["Resource"] == getatt(any_env, queue)
    assert props(any_env, queue)["KmsMasterKeyId"] == getatt(any_env, any_env.stack.encryption.messaging_key)


# --- the change publisher -------------------------------------------------------------------------


def test_the_records_stream_feeds_the_change_publisher_with_bisection_retries_and_a_failure_queue(
    any_env,
) -> None:
    store = any_env.stack.clinical_store
    feed = store.change_feed
    mapping = any_env.resources[any_env.logical_id(feed.stream_mapping)]
    properties = mapping["Properties"]
    assert properties["EventSourceArn"] == getatt(any_env, store.records_table, "StreamArn")
    assert properties["FunctionName"] == {
        "Ref": any_env.logical_id(any_env.stack.compute.functions[names.FN_CHANGE_PUBLISHER])
    }
    assert properties["StartingPosition"] == "TRIM_HORIZON"
    assert properties["BatchSize"] == 100
    assert properties["BisectBatchOnFunctionError"] is True
    assert properties["MaximumRetryAttempts"] == CHANGE_RETRY_ATTEMPTS
    assert properties["MaximumRecordAgeInSeconds"] == CHANGE_MAX_RECORD_AGE.to_seconds()
    assert properties["DestinationConfig"] == {
        "OnFailure": {"Destination": getatt(any_env, feed.dead_letter_queue)}
    }
    # the handler raises on failure and returns no batch item failures
    assert "FunctionResponseTypes" not in properties
    # only current-version pointers: the records that announce a committed version
    patterns = [json.loads(f["Pattern"]) for f in properties["FilterCriteria"]["Filters"]]
    assert patterns == [{"dynamodb": {"NewImage": {"sk": {"S": [CURRENT]}}}}]
    # the role may read the stream before the mapping is created
    policy = any_env.logical_id(any_env.stack.compute.policies[names.FN_CHANGE_PUBLISHER])
    assert policy in mapping["DependsOn"]
    # the table really streams both images
    table = props(any_env, store.records_table)
    assert table["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_the_change_publisher_may_read_the_stream_index_patients_and_put_events_on_the_bus_only(
    any_env,
) -> None:
    stack = any_env.stack
    statements = any_env.function_statements(names.FN_CHANGE_PUBLISHER)
    assert {a for s in statements for a in actions(s)} == LOGS_AND_TRACES | {
        "events:PutEvents",
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        # the master patient index, kept up to date with every committed Patient version
        *MPI_READ_ACTIONS,
        *MPI_WRITE_ACTIONS,
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
        *MPI_READ_KEY_ACTIONS,
        *MPI_WRITE_KEY_ACTIONS,
        "kms:GenerateDataKey",
        "sqs:SendMessage",
    }
    (put,) = with_service(statements, "events")
    assert put["Resource"] == getatt(any_env, stack.events.bus)
    mpi = getatt(any_env, stack.sharing.mpi_table)
    for statement in with_service(statements, "dynamodb"):
        # the records table's stream, or the patient index; never an item of the records table
        assert "stream" in json.dumps(statement["Resource"]).lower() or statement["Resource"] == mpi
    (send,) = with_service(statements, "sqs")
    assert send["Resource"] == getatt(any_env, stack.clinical_store.change_feed.dead_letter_queue)
    (secret,) = with_service(statements, "secretsmanager")
    assert secret["Resource"] == {"Ref": any_env.logical_id(stack.sharing.mpi_key_secret)}
    # the data key (the tables', the index key secret's and the failure queue's), only through
    # DynamoDB, Secrets Manager and SQS
    keys = with_service(statements, "kms")
    granted: dict[str, set[str]] = {}
    for statement in keys:
        granted.setdefault(via_service(statement), set()).update(actions(statement))
    assert granted == {
        "dynamodb": set(MPI_READ_KEY_ACTIONS) | set(MPI_WRITE_KEY_ACTIONS),
        "secretsmanager": {"kms:Decrypt"},
        "sqs": {"kms:GenerateDataKey", "kms:Decrypt"},
    }
    assert all(s["Resource"] == getatt(any_env, stack.encryption.data_key) for s in keys)


def test_the_change_publisher_gets_the_bus_name(any_env) -> None:
    function = any_env.stack.compute.functions[names.FN_CHANGE_PUBLISHER]
    variables = props(any_env, function)["Environment"]["Variables"]
    (variable,) = environment_for(ChangePublisherSettings, event_bus_name="x")
    assert variables[variable] == {"Ref": any_env.logical_id(any_env.stack.events.bus)}


def test_only_the_change_publisher_the_notifier_and_the_workflow_may_put_events(any_env) -> None:
    # (the workflow's own role is not a function's: workflow_statements)
    for fn in any_env.stack.compute.functions:
        if fn not in (names.FN_CHANGE_PUBLISHER, names.FN_SHARING_NOTIFIER):
            assert not with_service(any_env.function_statements(fn), "events"), fn


# --- alarms and acknowledgements ------------------------------------------------------------------


def test_alarms_cover_the_new_functions_the_workflow_and_every_new_queue(any_env) -> None:
    stack = any_env.stack
    alarms = stack.monitoring.alarms
    topic = [{"Ref": any_env.logical_id(stack.monitoring.topic)}]
    machine = {"Ref": any_env.logical_id(stack.workflows.lab_order)}
    expected_metrics = {
        "LabWorkflowErrors": ("AWS/Lambda", "Errors"),
        "ChangePublisherErrors": ("AWS/Lambda", "Errors"),
        "LabOrderExecutionsFailed": ("AWS/States", "ExecutionsFailed"),
        "LabOrderExecutionsTimedOut": ("AWS/States", "ExecutionsTimedOut"),
        f"{LAB_ORDER_DEAD_LETTERS}DeadLetters": ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        "LabWorkflowDeadLetters": ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        f"{CHANGE_DEAD_LETTERS}DeadLetters": ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        f"{CANCELLED_RULE.logical_id}DeadLetters": ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
    }
    for name, (namespace, metric) in expected_metrics.items():
        alarm = props(any_env, alarms[name])
        assert (alarm["Namespace"], alarm["MetricName"]) == (namespace, metric), name
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0, name
        assert alarm["AlarmActions"] == topic, name
    for name in ("LabOrderExecutionsFailed", "LabOrderExecutionsTimedOut"):
        assert props(any_env, alarms[name])["Dimensions"] == [{"Name": "StateMachineArn", "Value": machine}]
    errors = props(any_env, alarms["ChangePublisherErrors"])
    assert errors["Dimensions"] == [
        {
            "Name": "FunctionName",
            "Value": {"Ref": any_env.logical_id(stack.compute.functions[names.FN_CHANGE_PUBLISHER])},
        }
    ]


def test_new_acknowledgements_name_their_exact_findings(dev) -> None:
    stack = dev.stack
    by_path: dict[str, set[str]] = {}
    for ack in dev.acknowledgements():
        by_path.setdefault(ack.path, set()).add(ack.rule)
    lab_policy = by_path[stack.compute.policies[names.FN_LAB_WORKFLOW].node.path]
    assert (
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:"
        f"secret:{names.PARTNER_SECRET_PREFIX}*]"
    ) in lab_policy
    table = dev.logical_id(stack.clinical_store.records_table)
    publisher_policy = by_path[stack.compute.policies[names.FN_CHANGE_PUBLISHER].node.path]
    assert f"AwsSolutions-IAM5[Resource::<{table}.Arn>/stream/*]" in publisher_policy
    # the state machine's role needs no wildcard beyond the log-delivery and X-Ray actions
    assert by_path[stack.workflows.policy.node.path] == {"AwsSolutions-IAM5[Resource::*]"}
