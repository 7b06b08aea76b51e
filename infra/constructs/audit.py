"""The append-only audit trail (FHIR AuditEvent items), partitioned per tenant, and its archive."""

from __future__ import annotations

from typing import Final

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ehr.store.schema import AUDIT_TABLE
from infra.config import EnvironmentConfig
from infra.constructs.audit_archive import AuditArchive
from infra.constructs.tables import LEADING_KEYS_CONDITION, build_table, table_key_statement

# Appending is PutItem and nothing else: no UpdateItem, DeleteItem or BatchWriteItem (which can
# delete), so a compromised function cannot rewrite or erase the trail. The adapter writes with
# TransactWriteItems, which IAM authorises as its Put parts.
AUDIT_APPEND_ACTIONS: Final = ("dynamodb:PutItem",)
# Reading a tenant's trail (GET …/AuditEvent): Query on the day and patient partitions, GetItem.
AUDIT_READ_ACTIONS: Final = ("dynamodb:Query", "dynamodb:GetItem")
AUDIT_KEY_ACTIONS: Final = ("kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt", "kms:DescribeKey")
AUDIT_READ_KEY_ACTIONS: Final = ("kms:Decrypt", "kms:DescribeKey")
ARCHIVE_DEAD_LETTERS: Final = "AuditArchive"


class AuditTrail(Construct):
    """``audit_table``, built from ``ehr.store.schema.AUDIT_TABLE`` (stream ``NEW_IMAGE``), and
    ``archive`` (``archive.bucket`` under Object Lock, ``archive.dead_letter_queue``), exposed as
    ``archive_bucket`` and ``dead_letter_queues`` for monitoring.

    ``access_log_bucket``: where the archive bucket's server access logs go (default: its own bucket).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        key: kms.IKey,
        config: EnvironmentConfig,
        access_log_bucket: s3.IBucket | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = key
        self.audit_table: dynamodb.Table = build_table(self, AUDIT_TABLE, key=key, config=config)
        self.archive = AuditArchive(
            self, "Archive", key=key, config=config, access_log_bucket=access_log_bucket
        )
        self.archive_bucket: s3.Bucket = self.archive.bucket
        self.dead_letter_queues: dict[str, sqs.IQueue] = {
            ARCHIVE_DEAD_LETTERS: self.archive.dead_letter_queue
        }

    def grant_append(self, policy: iam.ManagedPolicy) -> None:
        """PutItem only, on tenant-shaped keys, and use of the table's key for that."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="AuditAppendOnly",
                actions=list(AUDIT_APPEND_ACTIONS),
                resources=[self.audit_table.table_arn],
                conditions=LEADING_KEYS_CONDITION,
            ),
            table_key_statement(self.audit_table, self.key, list(AUDIT_KEY_ACTIONS)),
        )

    def grant_read(self, policy: iam.ManagedPolicy) -> None:
        """Query and GetItem on tenant-shaped keys (never Scan), and decryption through DynamoDB."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="AuditRead",
                actions=list(AUDIT_READ_ACTIONS),
                resources=[self.audit_table.table_arn],
                conditions=LEADING_KEYS_CONDITION,
            ),
            table_key_statement(self.audit_table, self.key, list(AUDIT_READ_KEY_ACTIONS)),
        )

    def attach_archiver(self, function: lambda_.IFunction, policy: iam.ManagedPolicy) -> None:
        """Feed the table's stream to ``function``; its ``policy`` gets only what that takes."""
        self.archive.attach(self.audit_table, function, policy)
