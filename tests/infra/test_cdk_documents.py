"""The documents bucket and the verifier wiring, as synthesized: encryption, versioning, TLS,
public access, S3 → EventBridge → document_verifier with a dead-letter queue, and least privilege."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehr import names
from tests.infra.test_cdk_functions import actions_on, function_props, role_statements

pytestmark = pytest.mark.infra


def bucket(synth) -> dict[str, Any]:
    return synth.resources[synth.logical_id(synth.stack.documents.bucket)]["Properties"]


def bucket_policy(synth) -> list[dict[str, Any]]:
    bucket_id = synth.logical_id(synth.stack.documents.bucket)
    for policy in synth.of_type("AWS::S3::BucketPolicy").values():
        if policy["Properties"]["Bucket"] == {"Ref": bucket_id}:
            return policy["Properties"]["PolicyDocument"]["Statement"]
    raise AssertionError("the documents bucket has no policy")


def test_bucket_is_kms_encrypted_with_bucket_key_versioned_private_and_eventbridge_enabled(any_env) -> None:
    props = bucket(any_env)
    rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert rule["BucketKeyEnabled"] is True
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True


def test_bucket_policy_refuses_plain_http_and_non_kms_writes(any_env) -> None:
    statements = bucket_policy(any_env)
    tls = [
        s for s in statements if s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
    ]
    assert tls and all(s["Effect"] == "Deny" for s in tls)
    sse = [s for s in statements if "s3:x-amz-server-side-encryption" in json.dumps(s.get("Condition", {}))]
    assert {s["Sid"] for s in sse} == {"DenyWritesWithoutSseKms", "DenyWritesNotEncryptedWithTheDataKey"}
    assert all(s["Effect"] == "Deny" and s["Action"] == "s3:PutObject" for s in sse)


def test_object_created_events_invoke_the_verifier_with_a_dead_letter_queue(any_env) -> None:
    verifier_id = any_env.logical_id(any_env.stack.compute.functions[names.FN_DOCUMENT_VERIFIER])
    queue_id = any_env.logical_id(any_env.stack.documents.verifier_dead_letters)
    rules = [
        r["Properties"]
        for r in any_env.of_type("AWS::Events::Rule").values()
        if r["Properties"].get("EventPattern", {}).get("detail-type") == ["Object Created"]
    ]
    assert len(rules) == 1
    pattern = rules[0]["EventPattern"]
    assert pattern["source"] == ["aws.s3"]
    assert pattern["detail"]["bucket"]["name"] == [
        {"Ref": any_env.logical_id(any_env.stack.documents.bucket)}
    ]
    (target,) = rules[0]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [verifier_id, "Arn"]}
    assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": [queue_id, "Arn"]}
    assert function_props(any_env, names.FN_DOCUMENT_VERIFIER)["DeadLetterConfig"]["TargetArn"] == {
        "Fn::GetAtt": [queue_id, "Arn"]
    }


def test_functions_get_the_bucket_and_key_in_their_environment(any_env) -> None:
    for fn in (names.FN_FHIR_API, names.FN_DOCUMENT_VERIFIER):
        env = function_props(any_env, fn)["Environment"]["Variables"]
        assert env["EHR_DOCUMENTS_BUCKET"] == {"Ref": any_env.logical_id(any_env.stack.documents.bucket)}
        assert "EHR_DOCUMENTS_KEY_ARN" in env
        assert "EHR_S3_ENDPOINT" not in env


def test_the_api_may_write_and_read_documents_and_the_verifier_only_read_neither_delete(any_env) -> None:
    bucket_id = any_env.logical_id(any_env.stack.documents.bucket)

    def s3_actions(fn: str) -> set[str]:
        role_id = any_env.logical_id(any_env.stack.compute.roles[fn])
        return {a for a in actions_on(role_statements(any_env, role_id), bucket_id) if a.startswith("s3:")}

    assert s3_actions(names.FN_FHIR_API) == {"s3:PutObject", "s3:GetObject", "s3:ListBucket"}
    assert s3_actions(names.FN_DOCUMENT_VERIFIER) == {"s3:GetObject", "s3:ListBucket"}
    for fn in any_env.stack.compute.functions:
        assert not any(a.startswith("s3:Delete") for a in s3_actions(fn)), fn
    assert s3_actions(names.FN_DISCOVERY) == set()
