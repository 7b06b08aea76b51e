"""Keys, tables and the documents bucket: encryption, recovery and access on the synthesized template."""

from __future__ import annotations

import pytest

from ehr.store.schema import AUDIT_TABLE, MPI_TABLE, RECORDS_TABLE, TABLES

pytestmark = pytest.mark.infra


def test_every_kms_key_rotates(any_env) -> None:
    keys = any_env.of_type("AWS::KMS::Key")
    assert len(keys) == 3
    assert all(key["Properties"]["EnableKeyRotation"] is True for key in keys.values())


def test_logs_key_lets_cloudwatch_logs_encrypt_this_accounts_log_groups(dev) -> None:
    key = dev.resources[dev.logical_id(dev.stack.encryption.logs_key)]
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    logs = [s for s in statements if s.get("Sid") == "AllowCloudWatchLogsOfThisAccount"]
    assert len(logs) == 1
    assert "kms:EncryptionContext:aws:logs:arn" in logs[0]["Condition"]["ArnLike"]


@pytest.mark.parametrize("definition", TABLES, ids=lambda d: d.logical_id)
def test_tables_follow_their_schema_definition(any_env, definition) -> None:
    # Given the table built from the core's definition
    tables = {
        RECORDS_TABLE.logical_id: any_env.stack.clinical_store.records_table,
        AUDIT_TABLE.logical_id: any_env.stack.audit.audit_table,
        MPI_TABLE.logical_id: any_env.stack.sharing.mpi_table,
    }
    assert set(tables) == {d.logical_id for d in TABLES}  # every table of the schema is built
    props = any_env.resources[any_env.logical_id(tables[definition.logical_id])]["Properties"]
    # Then its keys are the definition's, and capacity, recovery and encryption are the platform's
    assert props["KeySchema"] == definition.key_schema()
    assert sorted(props["AttributeDefinitions"], key=str) == sorted(
        definition.attribute_definitions(), key=str
    )
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    sse = props["SSESpecification"]
    assert sse["SSEEnabled"] is True and sse["SSEType"] == "KMS"
    assert sse["KMSMasterKeyId"] == {
        "Fn::GetAtt": [any_env.logical_id(any_env.stack.encryption.data_key), "Arn"]
    }
    if definition.stream:
        assert props["StreamSpecification"] == {"StreamViewType": definition.stream}
    else:
        assert "StreamSpecification" not in props


def test_prod_tables_are_protected_and_retained(prod) -> None:
    for table in prod.of_type("AWS::DynamoDB::Table").values():
        assert table["Properties"]["DeletionProtectionEnabled"] is True
        assert table["DeletionPolicy"] == "Retain"


def test_dev_tables_can_be_torn_down(dev) -> None:
    for table in dev.of_type("AWS::DynamoDB::Table").values():
        assert table["Properties"]["DeletionProtectionEnabled"] is False
        assert table["DeletionPolicy"] == "Delete"


def test_prod_backs_up_every_table_into_an_encrypted_vault(prod) -> None:
    selection = next(iter(prod.of_type("AWS::Backup::BackupSelection").values()))
    resources = str(selection["Properties"]["BackupSelection"]["Resources"])
    stack = prod.stack
    for table in (stack.clinical_store.records_table, stack.audit.audit_table, stack.sharing.mpi_table):
        assert prod.logical_id(table) in resources
    vault = next(iter(prod.of_type("AWS::Backup::BackupVault").values()))
    assert "EncryptionKeyArn" in vault["Properties"]
    rule = next(iter(prod.of_type("AWS::Backup::BackupPlan").values()))["Properties"]["BackupPlan"]
    assert rule["BackupPlanRule"][0]["Lifecycle"]["DeleteAfterDays"] == prod.config.backup_retention_days


def test_documents_bucket_is_encrypted_versioned_private_and_logged(any_env) -> None:
    documents = any_env.stack.documents
    props = any_env.resources[any_env.logical_id(documents.bucket)]["Properties"]
    rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == {
        "Fn::GetAtt": [any_env.logical_id(any_env.stack.encryption.data_key), "Arn"]
    }
    assert rule["BucketKeyEnabled"] is True
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["LoggingConfiguration"]["DestinationBucketName"] == {
        "Ref": any_env.logical_id(documents.access_log_bucket)
    }


@pytest.mark.parametrize("bucket", ["bucket", "access_log_bucket"])
def test_buckets_deny_requests_without_tls(any_env, bucket) -> None:
    logical_id = any_env.logical_id(getattr(any_env.stack.documents, bucket))
    policies = [
        p
        for p in any_env.of_type("AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": logical_id}
    ]
    statements = policies[0]["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"].get("Bool", {}).get("aws:SecureTransport") == "false"
        for s in statements
    )
