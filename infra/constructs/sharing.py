"""Cross-facility sharing: the master patient index, its tokenisation key, and the Subscription
webhooks' signing secrets and dead-letter queue (docs/sharing.md, docs/subscriptions.md).

The patient index (``ehr.store.schema.MPI_TABLE``) is the one table whose keys do not start with a
tenant: matching a person across facilities means reading every tenant's entries under one
blocking key. So its grants cannot carry the ``dynamodb:LeadingKeys`` condition of the records
table; what keeps it safe is what it holds (keyed HMAC tokens, tenant and patient ids, enterprise
ids, no PHI) and that only the index's code reads it.
"""

from __future__ import annotations

from typing import Final

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ehr import names
from ehr.store.schema import MPI_TABLE
from infra.config import EnvironmentConfig
from infra.constructs.audit_archive import via_service
from infra.constructs.nag import acknowledge
from infra.constructs.queues import dead_letter_queue
from infra.constructs.tables import build_table, table_key_statement

# What ehr.store.mpi_dynamo does: GetItem and BatchGetItem of entries, Query of a block or of a
# person's records, and TransactWriteItems of conditional Puts and Deletes (authorised as its
# parts). No Scan, no UpdateItem, no BatchWriteItem.
MPI_READ_ACTIONS: Final = ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query")
MPI_WRITE_ACTIONS: Final = ("dynamodb:PutItem", "dynamodb:DeleteItem")
MPI_READ_KEY_ACTIONS: Final = ("kms:Decrypt", "kms:DescribeKey")
MPI_WRITE_KEY_ACTIONS: Final = ("kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncryptFrom", "kms:ReEncryptTo")
SECRET_READ_ACTIONS: Final = ("secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret")
SUBSCRIPTION_SECRET_ACTIONS: Final = ("secretsmanager:GetSecretValue",)
DEAD_LETTER_ACTIONS: Final = ("sqs:SendMessage",)
DEAD_LETTER_KEY_ACTIONS: Final = ("kms:GenerateDataKey", "kms:Decrypt")
SUBSCRIPTION_DEAD_LETTERS: Final = "SubscriptionDelivery"


class Sharing(Construct):
    """``mpi_table`` (from ``MPI_TABLE``: on-demand, PITR, the data key, deletion protection and
    removal per config), ``mpi_key_secret`` (the random key of the index's HMAC tokens, data key,
    retained with the table), ``subscription_dead_letters`` (notifications the notifier could not
    deliver; also in ``dead_letter_queues`` for monitoring) and ``subscription_secret_arn`` (the
    ARN pattern of the tenants' webhook signing secrets, which onboarding creates, not the stack).

    ``grant_index(policy, write=...)``, ``grant_subscription_secrets(policy)`` and
    ``grant_subscription_dead_letters(policy)`` give a function exactly that.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        key: kms.IKey,
        messaging_key: kms.IKey,
        config: EnvironmentConfig,
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = key
        self.messaging_key = messaging_key
        self.mpi_table: dynamodb.Table = build_table(self, MPI_TABLE, key=key, config=config)
        self.mpi_key_secret = secretsmanager.Secret(
            self,
            "PatientIndexKey",
            description="Keys the master patient index's HMAC tokens of identifiers and demographics; "
            "not a credential.",
            encryption_key=key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True
            ),
            # Without it the index's tokens can no longer be matched: it lives as long as the table.
            removal_policy=RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.mpi_key_secret,
            "The patient-index key secret keys the HMAC tokens stored in the patient index table and "
            "opens no other resource. A new key changes every token, so rotating it means re-tokenising "
            "every tenant's Patients in one pass (a re-index run), not a rotation Lambda that swaps the "
            "value under a live index.",
            "AwsSolutions-SMG4",
            "HIPAA.Security-SecretsManagerRotationEnabled",
        )
        self.subscription_dead_letters: sqs.Queue = dead_letter_queue(
            self,
            "SubscriptionDeadLetters",
            holds="Subscription notifications the sharing_notifier function could not deliver after its "
            "retries (tenant, Subscription id, focus reference, event number, delivery id, attempts, "
            "last status and reason; no PHI and no endpoint)",
            key=messaging_key,
            config=config,
        )
        self.dead_letter_queues: dict[str, sqs.IQueue] = {
            SUBSCRIPTION_DEAD_LETTERS: self.subscription_dead_letters
        }
        self.subscription_secret_arn = Stack.of(self).format_arn(
            service="secretsmanager",
            resource="secret",
            resource_name=f"{names.SUBSCRIPTION_SECRET_PREFIX}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    def grant_index(self, policy: iam.ManagedPolicy, *, write: bool) -> None:
        """Read (and with ``write``, maintain) the patient index, and read its key secret."""
        table_actions = MPI_READ_ACTIONS + (MPI_WRITE_ACTIONS if write else ())
        key_actions = MPI_READ_KEY_ACTIONS + (MPI_WRITE_KEY_ACTIONS if write else ())
        policy.add_statements(
            iam.PolicyStatement(
                sid="PatientIndexReadWrite" if write else "PatientIndexRead",
                actions=list(table_actions),
                resources=[self.mpi_table.table_arn],
            ),
            table_key_statement(self.mpi_table, self.key, list(key_actions)),
            iam.PolicyStatement(
                sid="ReadPatientIndexKey",
                actions=list(SECRET_READ_ACTIONS),
                resources=[self.mpi_key_secret.secret_arn],
            ),
            via_service(self.key, "secretsmanager", ("kms:Decrypt",)),
        )

    def grant_subscription_secrets(self, policy: iam.ManagedPolicy) -> None:
        """Read the tenants' Subscription signing secrets: Secrets Manager names under
        ``names.SUBSCRIPTION_SECRET_PREFIX`` (one per tenant, created when the tenant is onboarded)."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="ReadSubscriptionSecrets",
                actions=list(SUBSCRIPTION_SECRET_ACTIONS),
                resources=[self.subscription_secret_arn],
            )
        )
        acknowledge(
            policy,
            "Subscription signing secrets are created per tenant when a tenant is onboarded, named "
            f"{names.SUBSCRIPTION_SECRET_PREFIX}<tenant> (plus the random suffix Secrets Manager appends), "
            "so GetSecretValue is granted on that name prefix; the sharing_notifier function, which signs "
            "every tenant's webhooks, has no other action on those secrets.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:"
            f"secret:{names.SUBSCRIPTION_SECRET_PREFIX}*]",
        )

    def grant_subscription_dead_letters(self, policy: iam.ManagedPolicy) -> None:
        """``sqs:SendMessage`` on the Subscription dead-letter queue (and its key, through SQS)."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="DeadLetterUndeliveredNotifications",
                actions=list(DEAD_LETTER_ACTIONS),
                resources=[self.subscription_dead_letters.queue_arn],
            ),
            via_service(self.messaging_key, "sqs", DEAD_LETTER_KEY_ACTIONS),
        )
