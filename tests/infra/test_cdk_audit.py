"""The audit trail on the synthesized template: the stream, the Object Lock archive, the event source
mapping that fills it, and exactly what the writer and the archiver may do."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehr import names
from ehr.audit_archive import ARCHIVE_DEEP_ARCHIVE_AFTER_DAYS, ARCHIVE_LOCK_MODE, ARCHIVE_RETENTION_DAYS
from ehr.store.schema import AUDIT_TABLE
from infra.constructs.audit import ARCHIVE_DEAD_LETTERS, AUDIT_APPEND_ACTIONS, AUDIT_READ_ACTIONS
from infra.constructs.audit_archive import STREAM_RETRY_ATTEMPTS

pytestmark = pytest.mark.infra

LOGS_AND_TRACES = {
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}
REWRITES = {"dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:Scan"}


def actions(statement: dict[str, Any]) -> set[str]:
    value = statement["Action"]
    return {value} if isinstance(value, str) else set(value)


def actions_on(statements: list[dict[str, Any]], logical_id: str | None = None) -> set[str]:
    found: set[str] = set()
    for statement in statements:
        if logical_id is None or logical_id in json.dumps(statement["Resource"]):
            found |= actions(statement)
    return found


def props(synth, construct) -> dict[str, Any]:
    return synth.resources[synth.logical_id(construct)]["Properties"]


def test_the_audit_table_streams_new_images(any_env) -> None:
    table = props(any_env, any_env.stack.audit.audit_table)
    assert AUDIT_TABLE.stream == "NEW_IMAGE"
    assert table["StreamSpecification"] == {"StreamViewType": "NEW_IMAGE"}


def test_the_archive_bucket_locks_every_object_for_six_years_in_compliance_mode(any_env) -> None:
    bucket = props(any_env, any_env.stack.audit.archive_bucket)
    assert bucket["ObjectLockEnabled"] is True
    assert bucket["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 2192}},
    }
    assert (ARCHIVE_LOCK_MODE, ARCHIVE_RETENTION_DAYS) == ("COMPLIANCE", 2192)
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}


def test_the_archive_bucket_outlives_the_stack_in_every_environment(any_env) -> None:
    # Locked objects cannot be deleted, so a stack deletion must leave the bucket, not fail on it
    resource = any_env.resources[any_env.logical_id(any_env.stack.audit.archive_bucket)]
    assert resource["DeletionPolicy"] == "Retain" and resource["UpdateReplacePolicy"] == "Retain"


def test_the_archive_bucket_is_encrypted_private_logged_and_deep_archived(any_env) -> None:
    audit = any_env.stack.audit
    bucket = props(any_env, audit.archive_bucket)
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": [any_env.logical_id(any_env.stack.encryption.data_key), "Arn"]},
    }
    assert rule["BucketKeyEnabled"] is True
    assert bucket["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert bucket["LoggingConfiguration"]["DestinationBucketName"] == {
        "Ref": any_env.logical_id(audit.archive.access_log_bucket)
    }
    (lifecycle,) = bucket["LifecycleConfiguration"]["Rules"]
    assert lifecycle["Transitions"] == [
        {"StorageClass": "DEEP_ARCHIVE", "TransitionInDays": ARCHIVE_DEEP_ARCHIVE_AFTER_DAYS}
    ]
    assert "ExpirationInDays" not in lifecycle  # nothing in the archive expires


def test_the_archive_bucket_denies_requests_without_tls(any_env) -> None:
    bucket = {"Ref": any_env.logical_id(any_env.stack.audit.archive_bucket)}
    (policy,) = [
        p for p in any_env.of_type("AWS::S3::BucketPolicy").values() if p["Properties"]["Bucket"] == bucket
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"].get("Bool", {}).get("aws:SecureTransport") == "false"
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
    )


def test_the_stream_feeds_the_archiver_with_bisection_retries_and_a_failure_queue(any_env) -> None:
    audit = any_env.stack.audit
    (mapping,) = [
        m["Properties"]
        for m in any_env.of_type("AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["EventSourceArn"]["Fn::GetAtt"][0] == any_env.logical_id(audit.audit_table)
    ]
    assert mapping == props(any_env, audit.archive.stream_mapping)
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [any_env.logical_id(audit.audit_table), "StreamArn"]}
    assert mapping["FunctionName"] == {
        "Ref": any_env.logical_id(any_env.stack.compute.functions[names.FN_AUDIT_ARCHIVER])
    }
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["MaximumRetryAttempts"] == STREAM_RETRY_ATTEMPTS
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["DestinationConfig"] == {
        "OnFailure": {
            "Destination": {"Fn::GetAtt": [any_env.logical_id(audit.archive.dead_letter_queue), "Arn"]}
        }
    }
    # Only new day items (the per-patient copies are copies) and any later change (tampering)
    patterns = [json.loads(f["Pattern"]) for f in mapping["FilterCriteria"]["Filters"]]
    assert {"eventName": ["INSERT"], "dynamodb": {"NewImage": {"kind": {"S": ["day"]}}}} in patterns
    assert {"eventName": ["MODIFY", "REMOVE"]} in patterns


def test_the_failure_queue_is_encrypted_and_tls_only(any_env) -> None:
    queue = any_env.stack.audit.archive.dead_letter_queue
    assert props(any_env, queue)["KmsMasterKeyId"] == {
        "Fn::GetAtt": [any_env.logical_id(any_env.stack.encryption.data_key), "Arn"]
    }
    queue_ref = {"Ref": any_env.logical_id(queue)}
    policies = [
        p for p in any_env.of_type("AWS::SQS::QueuePolicy").values() if queue_ref in p["Properties"]["Queues"]
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        for p in policies
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    )


def test_the_archiver_role_may_do_exactly_what_archiving_takes(any_env) -> None:
    audit = any_env.stack.audit
    statements = any_env.function_statements(names.FN_AUDIT_ARCHIVER)

    # Then its actions are: put objects, read the stream, use the key through S3/DynamoDB/SQS,
    # send failed batches to its queue; plus its own logs and traces
    assert actions_on(statements) == LOGS_AND_TRACES | {
        "s3:PutObject",
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        "sqs:SendMessage",
        "kms:GenerateDataKey",
        "kms:Decrypt",
        "kms:DescribeKey",
    }
    # On the bucket: PutObject only (no read, no delete, no retention change)
    assert actions_on(statements, any_env.logical_id(audit.archive_bucket)) == {"s3:PutObject"}
    # On the table: its stream only, never an item
    table_actions = actions_on(statements, any_env.logical_id(audit.audit_table))
    assert table_actions == {
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
    }
    for statement in statements:
        if actions(statement) & {"dynamodb:DescribeStream", "dynamodb:ListStreams"}:
            assert "stream" in json.dumps(statement["Resource"]).lower()
        if any(a.startswith("kms:") for a in actions(statement)):
            assert "kms:ViaService" in statement["Condition"]["StringEquals"]
    assert actions_on(statements, any_env.logical_id(audit.archive.dead_letter_queue)) == {"sqs:SendMessage"}


def test_the_audit_writer_appends_and_reads_but_never_rewrites(any_env) -> None:
    statements = any_env.function_statements(names.FN_FHIR_API)
    table = any_env.logical_id(any_env.stack.audit.audit_table)

    on_audit = actions_on(statements, table)
    assert on_audit == set(AUDIT_APPEND_ACTIONS) | set(AUDIT_READ_ACTIONS)
    assert on_audit == {"dynamodb:PutItem", "dynamodb:Query", "dynamodb:GetItem"}
    assert not on_audit & REWRITES
    for statement in statements:
        if table in json.dumps(statement["Resource"]) and any(
            a.startswith("dynamodb:") for a in actions(statement)
        ):
            assert statement["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["T#*#*"]}}
    # and the API function has nothing of the archive
    assert not actions_on(statements, any_env.logical_id(any_env.stack.audit.archive_bucket))


def test_no_other_function_touches_the_audit_trail(any_env) -> None:
    audit = any_env.stack.audit
    for fn in (names.FN_DISCOVERY, names.FN_AUTHORIZER):
        statements = any_env.function_statements(fn)
        assert not actions_on(statements, any_env.logical_id(audit.audit_table))
        assert not actions_on(statements, any_env.logical_id(audit.archive_bucket))


def test_archiver_acknowledgements_name_their_exact_findings(dev) -> None:
    policy_path = dev.stack.compute.policies[names.FN_AUDIT_ARCHIVER].node.path
    rules = {a.rule for a in dev.acknowledgements() if a.path == policy_path}
    bucket = dev.logical_id(dev.stack.audit.archive_bucket)
    table = dev.logical_id(dev.stack.audit.audit_table)
    assert f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/*]" in rules
    assert f"AwsSolutions-IAM5[Resource::<{table}.Arn>/stream/*]" in rules


def test_the_failure_queue_is_alarmed_on_the_alarm_topic(any_env) -> None:
    alarm = any_env.stack.monitoring.alarms[f"{ARCHIVE_DEAD_LETTERS}DeadLetters"]
    properties = props(any_env, alarm)
    assert properties["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert properties["AlarmActions"] == [{"Ref": any_env.logical_id(any_env.stack.monitoring.topic)}]
