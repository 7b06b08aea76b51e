"""The append-only audit trail (FHIR AuditEvent items), partitioned per tenant."""

from __future__ import annotations

from typing import Final

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from ehr.store.schema import AUDIT_TABLE
from infra.config import EnvironmentConfig
from infra.constructs.tables import LEADING_KEYS_CONDITION, build_table, table_key_statement

# Appending is PutItem and nothing else: no UpdateItem, DeleteItem or BatchWriteItem (which can
# delete), so a compromised function cannot rewrite or erase the trail.
AUDIT_APPEND_ACTIONS: Final = ("dynamodb:PutItem",)
AUDIT_KEY_ACTIONS: Final = ("kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt", "kms:DescribeKey")


class AuditTrail(Construct):
    """``audit_table``, built from ``ehr.store.schema.AUDIT_TABLE``."""

    def __init__(
        self, scope: Construct, construct_id: str, *, key: kms.IKey, config: EnvironmentConfig
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = key
        self.audit_table: dynamodb.Table = build_table(self, AUDIT_TABLE, key=key, config=config)

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
