"""Cross-facility sharing on the synthesized template: the master patient index table and its key,
the ``sharing_notifier`` function, the ResourceChangedRule that invokes it, the Subscription
dead-letter queue, exactly what each role may do with them, and the alarms on all of it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehr import names
from ehr.events.schema import RESOURCE_CHANGED, RULES
from ehr.settings import SharingNotifierSettings, environment_for
from ehr.store.schema import MPI_TABLE
from infra.constructs.compute import ASYNC_MAX_EVENT_AGE, ASYNC_RETRY_ATTEMPTS, SETTINGS
from infra.constructs.sharing import (
    MPI_READ_ACTIONS,
    MPI_WRITE_ACTIONS,
    SUBSCRIPTION_DEAD_LETTERS,
)

pytestmark = pytest.mark.infra

CHANGED_RULE = next(r for r in RULES if r.target == "sharing_notifier_function")
SUBSCRIPTION_SECRETS = (
    "arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:"
    f"{names.SUBSCRIPTION_SECRET_PREFIX}*"
)
# Functions whose settings name the patient index, and the one that maintains it.
INDEX_READERS = tuple(fn for fn in names.FUNCTIONS if "mpi_table" in SETTINGS[fn].model_fields)
INDEX_WRITER = names.FN_CHANGE_PUBLISHER


def props(synth, construct) -> dict[str, Any]:
    return synth.resources[synth.logical_id(construct)]["Properties"]


def getatt(synth, construct, attribute: str = "Arn") -> dict[str, Any]:
    return {"Fn::GetAtt": [synth.logical_id(construct), attribute]}


def actions(statement: dict[str, Any]) -> set[str]:
    value = statement["Action"]
    return {value} if isinstance(value, str) else set(value)


def on(statements: list[dict[str, Any]], resource: Any) -> set[str]:
    """The actions granted on exactly ``resource``."""
    return {a for s in statements if s["Resource"] == resource for a in actions(s)}


def joined(value: Any) -> str:
    parts = value["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else f"<{p['Ref']}>" for p in parts)


def variables(synth, fn: str) -> dict[str, Any]:
    return props(synth, synth.stack.compute.functions[fn])["Environment"]["Variables"]


def env(field: str) -> str:
    (name,) = environment_for(SharingNotifierSettings, **{field: "x"})
    return name


# --- the master patient index and its key ----------------------------------------------------------


def test_the_patient_index_is_a_cmk_encrypted_recoverable_table_without_a_stream(any_env) -> None:
    # Given the index table built from the core's MPI_TABLE
    table = props(any_env, any_env.stack.sharing.mpi_table)
    # Then it has the definition's keys, the data key, PITR, and nothing streams its tokens anywhere
    assert table["KeySchema"] == MPI_TABLE.key_schema()
    assert table["SSESpecification"] == {
        "KMSMasterKeyId": getatt(any_env, any_env.stack.encryption.data_key),
        "SSEEnabled": True,
        "SSEType": "KMS",
    }
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert "StreamSpecification" not in table


def test_prod_keeps_the_patient_index_and_its_key_when_the_stack_goes(prod) -> None:
    sharing = prod.stack.sharing
    table = prod.resources[prod.logical_id(sharing.mpi_table)]
    assert table["DeletionPolicy"] == "Retain" and table["Properties"]["DeletionProtectionEnabled"] is True
    # the tokens in a retained index are useless without the key that made them
    assert prod.resources[prod.logical_id(sharing.mpi_key_secret)]["DeletionPolicy"] == "Retain"


def test_the_patient_index_key_is_generated_and_encrypted_with_the_data_key(any_env) -> None:
    secret = props(any_env, any_env.stack.sharing.mpi_key_secret)
    assert secret["KmsKeyId"] == getatt(any_env, any_env.stack.encryption.data_key)
    assert secret["GenerateSecretString"]["PasswordLength"] == 64
    assert "SecretString" not in secret  # never a value in the template


# --- the notifier function -------------------------------------------------------------------------


def test_the_notifier_gets_the_index_the_dead_letter_queue_and_the_bus(any_env) -> None:
    stack = any_env.stack
    found = variables(any_env, names.FN_SHARING_NOTIFIER)
    assert found[env("mpi_table")] == {"Ref": any_env.logical_id(stack.sharing.mpi_table)}
    assert any_env.logical_id(stack.sharing.mpi_key_secret) in json.dumps(found[env("mpi_key_secret_name")])
    assert found[env("subscription_dead_letter_queue_url")] == {
        "Ref": any_env.logical_id(stack.sharing.subscription_dead_letters)
    }
    assert found[env("event_bus_name")] == {"Ref": any_env.logical_id(stack.events.bus)}
    assert found[env("records_table")] == {"Ref": any_env.logical_id(stack.clinical_store.records_table)}
    assert env("subscription_allow_loopback") not in found  # local mode only


@pytest.mark.parametrize("fn", INDEX_READERS)
def test_every_function_whose_settings_name_the_index_gets_it(any_env, fn) -> None:
    found = variables(any_env, fn)
    (table,) = environment_for(SETTINGS[fn], mpi_table="x")
    assert found[table] == {"Ref": any_env.logical_id(any_env.stack.sharing.mpi_table)}


def test_the_subscription_allow_list_is_left_out_when_the_environment_has_none(dev) -> None:
    for fn in INDEX_READERS:
        assert env("subscription_endpoints") not in variables(dev, fn), fn


def test_the_subscription_allow_list_comes_from_the_environments_context(oidc) -> None:
    # Given an environment whose cdk.json context lists two tenants' endpoint prefixes
    configured = oidc.config.subscription_endpoints
    assert len(configured) == 2
    for fn in INDEX_READERS:
        # Then every function that checks or uses Subscription endpoints gets exactly that list
        assert json.loads(variables(oidc, fn)[env("subscription_endpoints")]) == configured, fn


def test_the_notifier_has_time_for_a_dead_endpoints_retries(any_env) -> None:
    # Given the delivery settings the stack leaves at their defaults
    fields = SharingNotifierSettings.model_fields
    attempts = fields["subscription_attempts"].default
    timeout = fields["subscription_timeout_seconds"].default
    backoff = fields["subscription_backoff_seconds"].default
    one_dead_endpoint = attempts * timeout + sum(backoff * 2**n for n in range(attempts - 1))
    # Then the notifier's timeout covers several of them, and is its own (not the API's 29 s cap)
    seconds = props(any_env, any_env.stack.compute.functions[names.FN_SHARING_NOTIFIER])["Timeout"]
    assert seconds == any_env.config.sharing_notifier_timeout_seconds
    assert seconds >= 4 * one_dead_endpoint
    api = props(any_env, any_env.stack.compute.functions[names.FN_FHIR_API])["Timeout"]
    assert api == any_env.config.function_timeout_seconds <= 29


def test_the_notifier_retries_failed_events_then_sends_them_to_its_failure_queue(any_env) -> None:
    compute = any_env.stack.compute
    config = any_env.resources[any_env.logical_id(compute.async_configs[names.FN_SHARING_NOTIFIER])]
    queue = compute.dead_letter_queues["SharingNotifier"]
    assert config["Properties"] == {
        "FunctionName": {"Ref": any_env.logical_id(compute.functions[names.FN_SHARING_NOTIFIER])},
        "Qualifier": "$LATEST",
        "MaximumRetryAttempts": ASYNC_RETRY_ATTEMPTS,
        "MaximumEventAgeInSeconds": ASYNC_MAX_EVENT_AGE.to_seconds(),
        "DestinationConfig": {"OnFailure": {"Destination": getatt(any_env, queue)}},
    }
    assert any_env.logical_id(compute.policies[names.FN_SHARING_NOTIFIER]) in config["DependsOn"]


# --- the ResourceChangedRule -----------------------------------------------------------------------


def test_resource_changed_events_invoke_the_notifier_with_retries_and_a_dead_letter_queue(any_env) -> None:
    events = any_env.stack.events
    function = any_env.stack.compute.functions[names.FN_SHARING_NOTIFIER]
    rule = props(any_env, events.rules[CHANGED_RULE.logical_id])
    assert rule["EventPattern"] == {"source": [names.EVENT_SOURCE], "detail-type": [RESOURCE_CHANGED]}
    assert rule["EventBusName"] == {"Ref": any_env.logical_id(events.bus)}
    (target,) = rule["Targets"]
    assert target["Arn"] == getatt(any_env, function)
    dlq = events.dead_letter_queues[CHANGED_RULE.logical_id]
    assert target["DeadLetterConfig"] == {"Arn": getatt(any_env, dlq)}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
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
            "SourceArn": getatt(any_env, events.rules[CHANGED_RULE.logical_id]),
        }
    ]


# --- who may do what -------------------------------------------------------------------------------


def test_the_notifier_may_read_only_subscription_secrets_by_prefix_and_its_own_secrets(any_env) -> None:
    stack = any_env.stack
    statements = [
        s for s in any_env.function_statements(names.FN_SHARING_NOTIFIER) if "secretsmanager:" in str(s)
    ]
    by_resource = {json.dumps(s["Resource"], sort_keys=True): actions(s) for s in statements}
    for secret in (stack.clinical_store.cursor_secret, stack.sharing.mpi_key_secret):
        assert by_resource.pop(json.dumps({"Ref": any_env.logical_id(secret)})) == {
            "secretsmanager:GetSecretValue",
            "secretsmanager:DescribeSecret",
        }
    ((arn, granted),) = by_resource.items()
    assert joined(json.loads(arn)) == SUBSCRIPTION_SECRETS
    assert granted == {"secretsmanager:GetSecretValue"}
    assert names.subscription_secret_name("clinic-a").startswith(names.SUBSCRIPTION_SECRET_PREFIX)


def test_no_other_function_may_read_subscription_secrets(any_env) -> None:
    for fn in any_env.stack.compute.functions:
        if fn != names.FN_SHARING_NOTIFIER:
            assert names.SUBSCRIPTION_SECRET_PREFIX not in json.dumps(any_env.function_statements(fn)), fn


def test_the_notifier_may_dead_letter_notifications_and_its_failed_events_only(any_env) -> None:
    stack = any_env.stack
    statements = any_env.function_statements(names.FN_SHARING_NOTIFIER)
    sends = [s for s in statements if any(a.startswith("sqs:") for a in actions(s))]
    queues = (stack.sharing.subscription_dead_letters, stack.compute.dead_letter_queues["SharingNotifier"])
    assert {json.dumps(s["Resource"], sort_keys=True): actions(s) for s in sends} == {
        json.dumps(getatt(any_env, queue), sort_keys=True): {"sqs:SendMessage"} for queue in queues
    }
    key = getatt(any_env, stack.encryption.messaging_key)
    assert on(statements, key) == {"kms:GenerateDataKey", "kms:Decrypt"}


def test_only_the_notifier_may_send_to_the_subscription_dead_letter_queue(any_env) -> None:
    queue = getatt(any_env, any_env.stack.sharing.subscription_dead_letters)
    for fn in any_env.stack.compute.functions:
        if fn != names.FN_SHARING_NOTIFIER:
            assert not on(any_env.function_statements(fn), queue), fn


@pytest.mark.parametrize("fn", INDEX_READERS)
def test_index_readers_may_read_the_index_and_only_the_change_publisher_writes_it(any_env, fn) -> None:
    sharing = any_env.stack.sharing
    statements = any_env.function_statements(fn)
    expected = set(MPI_READ_ACTIONS) | (set(MPI_WRITE_ACTIONS) if fn == INDEX_WRITER else set())
    assert on(statements, getatt(any_env, sharing.mpi_table)) == expected
    assert on(statements, {"Ref": any_env.logical_id(sharing.mpi_key_secret)}) == {
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
    }
    assert not {"dynamodb:Scan", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem"} & expected


def test_the_fhir_api_reaches_the_index_but_not_the_subscription_secrets(any_env) -> None:
    statements = any_env.function_statements(names.FN_FHIR_API)
    assert on(statements, getatt(any_env, any_env.stack.sharing.mpi_table)) == set(MPI_READ_ACTIONS)
    assert names.SUBSCRIPTION_SECRET_PREFIX not in json.dumps(statements)
    assert not any(a.startswith("sqs:") for s in statements for a in actions(s))


def test_functions_without_the_index_in_their_settings_cannot_touch_it(any_env) -> None:
    sharing = any_env.stack.sharing
    for fn in any_env.stack.compute.functions:
        if fn not in INDEX_READERS:
            text = json.dumps(any_env.function_statements(fn))
            assert any_env.logical_id(sharing.mpi_table) not in text, fn
            assert any_env.logical_id(sharing.mpi_key_secret) not in text, fn


# --- queues, alarms, acknowledgements --------------------------------------------------------------


def test_the_subscription_dead_letter_queue_is_encrypted_tls_only_and_alarmed_on(any_env) -> None:
    stack = any_env.stack
    queue = stack.sharing.subscription_dead_letters
    assert props(any_env, queue)["KmsMasterKeyId"] == getatt(any_env, stack.encryption.messaging_key)
    policies = [
        p["Properties"]
        for p in any_env.of_type("AWS::SQS::QueuePolicy").values()
        if {"Ref": any_env.logical_id(queue)} in p["Properties"]["Queues"]
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for p in policies
        for s in p["PolicyDocument"]["Statement"]
    )
    topic = [{"Ref": any_env.logical_id(stack.monitoring.topic)}]
    for name in (SUBSCRIPTION_DEAD_LETTERS, CHANGED_RULE.logical_id, "SharingNotifier"):
        alarm = props(any_env, stack.monitoring.alarms[f"{name}DeadLetters"])
        assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible", name
        assert alarm["Threshold"] == 0 and alarm["AlarmActions"] == topic, name
    errors = props(any_env, stack.monitoring.alarms["SharingNotifierErrors"])
    assert errors["Dimensions"] == [
        {
            "Name": "FunctionName",
            "Value": {"Ref": any_env.logical_id(stack.compute.functions[names.FN_SHARING_NOTIFIER])},
        }
    ]


def test_the_sharing_acknowledgements_name_their_exact_findings(dev) -> None:
    stack = dev.stack
    by_path: dict[str, dict[str, str]] = {}
    for ack in dev.acknowledgements():
        by_path.setdefault(ack.path, {})[ack.rule] = ack.reason
    notifier_policy = by_path[stack.compute.policies[names.FN_SHARING_NOTIFIER].node.path]
    assert f"AwsSolutions-IAM5[Resource::{SUBSCRIPTION_SECRETS}]" in notifier_policy
    key = by_path[stack.sharing.mpi_key_secret.node.path]
    assert set(key) == {"AwsSolutions-SMG4", "HIPAA.Security-SecretsManagerRotationEnabled"}
    notifier = by_path[stack.compute.functions[names.FN_SHARING_NOTIFIER].node.path]
    assert "subscription_endpoints allow-list" in notifier["HIPAA.Security-LambdaInsideVPC"]
    assert "EventInvokeConfig" in notifier["HIPAA.Security-LambdaDLQ"]


def test_the_stack_tells_operators_where_dead_letters_and_subscription_secrets_go(dev) -> None:
    outputs = dev.template.to_json()["Outputs"]
    assert outputs["SubscriptionDeadLetterQueueUrl"]["Value"] == {
        "Ref": dev.logical_id(dev.stack.sharing.subscription_dead_letters)
    }
    assert outputs["SubscriptionSecretNamePattern"]["Value"] == names.subscription_secret_name("{tenant}")
