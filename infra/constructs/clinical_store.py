"""The clinical records table: resource versions, current versions, search-index and compartment items."""

from __future__ import annotations

from typing import Final

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ehr.store.schema import RECORDS_TABLE, tenant_registry_key
from infra.config import EnvironmentConfig
from infra.constructs.change_feed import ChangeFeed
from infra.constructs.nag import acknowledge
from infra.constructs.tables import LEADING_KEYS_CONDITION, build_table, table_key_statement

# Item-level actions the FHIR API needs: reads, conditional writes and transactions (a
# TransactWriteItems call is authorised as its Put/Update/Delete/ConditionCheck parts). No Scan:
# a search is always a Query on an index partition (DESIGN.md).
RECORDS_READ_WRITE_ACTIONS: Final = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:Query",
    "dynamodb:ConditionCheckItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
)
RECORDS_KEY_ACTIONS: Final = (
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:DescribeKey",
)
# A tenant's registration item is ``T#{tenant}#TENANT``: a role that only asks whether a tenant
# exists may read those items and no other (the gateway_audit function).
TENANT_REGISTRY_KEY_PATTERN: Final = tenant_registry_key("*")["pk"]
CHANGE_DEAD_LETTERS: Final = "RecordChanges"


class ClinicalStore(Construct):
    """``records_table``, built from ``ehr.store.schema.RECORDS_TABLE`` (its stream included),
    ``cursor_secret``, and ``change_feed`` (the stream's consumer wiring and its failure queue),
    whose queue is in ``dead_letter_queues`` for monitoring."""

    def __init__(
        self, scope: Construct, construct_id: str, *, key: kms.IKey, config: EnvironmentConfig
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = key
        self.records_table: dynamodb.Table = build_table(self, RECORDS_TABLE, key=key, config=config)
        # The key of the opaque paging cursors (Fernet, derived from this random value).
        self.cursor_secret = secretsmanager.Secret(
            self,
            "CursorSecret",
            description="Keys the FHIR API's encrypted paging cursors; not a credential.",
            encryption_key=key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True
            ),
        )
        acknowledge(
            self.cursor_secret,
            "The cursor secret keys short-lived (24 h) encrypted paging cursors and grants no access to "
            "anything; rotating it only invalidates open cursors, so it is replaced by redeploying rather "
            "than by a rotation Lambda.",
            "AwsSolutions-SMG4",
            "HIPAA.Security-SecretsManagerRotationEnabled",
        )
        self.change_feed = ChangeFeed(self, "ChangeFeed", key=key, config=config)
        self.dead_letter_queues: dict[str, sqs.IQueue] = {
            CHANGE_DEAD_LETTERS: self.change_feed.dead_letter_queue
        }

    def attach_change_publisher(self, function: lambda_.IFunction, policy: iam.ManagedPolicy) -> None:
        """Feed the records table's stream to ``function``; its ``policy`` gets only what that takes."""
        self.change_feed.attach(self.records_table, function, policy)

    def grant_read_write(self, policy: iam.ManagedPolicy) -> None:
        """Item reads and writes on tenant-shaped keys (``T#...#...``), and use of the table's key."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="RecordsReadWrite",
                actions=list(RECORDS_READ_WRITE_ACTIONS),
                resources=[self.records_table.table_arn],
                conditions=LEADING_KEYS_CONDITION,
            ),
            table_key_statement(self.records_table, self.key, list(RECORDS_KEY_ACTIONS)),
        )

    def grant_tenant_directory(self, policy: iam.ManagedPolicy) -> None:
        """GetItem of tenant registration items only (``T#*#TENANT``): no clinical record."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="ReadTenantRegistrations",
                actions=["dynamodb:GetItem"],
                resources=[self.records_table.table_arn],
                conditions={
                    "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [TENANT_REGISTRY_KEY_PATTERN]}
                },
            ),
            table_key_statement(self.records_table, self.key, ["kms:Decrypt", "kms:DescribeKey"]),
        )

    def grant_cursor_secret(self, policy: iam.ManagedPolicy) -> None:
        """Read the cursor secret (and decrypt it with the data key)."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="ReadCursorSecret",
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[self.cursor_secret.secret_arn],
            ),
            iam.PolicyStatement(
                sid="DecryptCursorSecret",
                actions=["kms:Decrypt"],
                resources=[self.key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"secretsmanager.{self.records_table.stack.region}.amazonaws.com"
                    }
                },
            ),
        )
