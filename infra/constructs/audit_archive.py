"""The audit archive: an S3 bucket under Object Lock (COMPLIANCE, six years) that the
``audit_archiver`` function fills from the audit table's stream, and the queue of batches it
could not archive."""

from __future__ import annotations

from typing import Final

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ehr.audit_archive import ARCHIVE_DEEP_ARCHIVE_AFTER_DAYS, ARCHIVE_LOCK_MODE, ARCHIVE_RETENTION_DAYS
from ehr.store.audit_dynamo import DAY_KIND
from infra.config import EnvironmentConfig
from infra.constructs.nag import acknowledge
from infra.constructs.queues import dead_letter_queue

# Everything the archiver's role may do, by resource (tests assert exactly these).
ARCHIVE_WRITE_ACTIONS: Final = ("s3:PutObject",)
ARCHIVE_KEY_ACTIONS: Final = ("kms:GenerateDataKey",)
STREAM_READ_ACTIONS: Final = ("dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator")
STREAM_LIST_ACTIONS: Final = ("dynamodb:ListStreams",)
STREAM_KEY_ACTIONS: Final = ("kms:Decrypt", "kms:DescribeKey")
DEAD_LETTER_ACTIONS: Final = ("sqs:SendMessage",)
DEAD_LETTER_KEY_ACTIONS: Final = ("kms:GenerateDataKey", "kms:Decrypt")

STREAM_BATCH_SIZE: Final = 100
STREAM_RETRY_ATTEMPTS: Final = 10
STREAM_MAX_RECORD_AGE: Final = Duration.hours(12)  # of the stream's 24 h, half is left to replay by hand
ACCESS_LOG_PREFIX: Final = "audit-archive/"

_REPLICATION_REASON = (
    "Replicating the {what} bucket to another region is a data-residency decision for each "
    "deployment (PHI may not leave its region); durability comes from S3's multi-AZ storage and versioning."
)


def stream_consumer_statements(
    table: dynamodb.ITable, key: kms.IKey, dead_letters: sqs.IQueue, *, name: str
) -> list[iam.PolicyStatement]:
    """What a Lambda consuming ``table``'s stream needs: read that stream, list the table's streams
    (a stream ARN's label changes when the stream is recreated), decrypt through DynamoDB, and send
    failed batches to ``dead_letters`` (encrypted with ``key``)."""
    assert table.table_stream_arn is not None
    return [
        iam.PolicyStatement(
            sid=f"Read{name}Stream", actions=list(STREAM_READ_ACTIONS), resources=[table.table_stream_arn]
        ),
        iam.PolicyStatement(
            sid=f"List{name}Streams",
            actions=list(STREAM_LIST_ACTIONS),
            resources=[f"{table.table_arn}/stream/*"],
        ),
        via_service(key, "dynamodb", STREAM_KEY_ACTIONS),
        iam.PolicyStatement(
            sid=f"Send{name}FailedBatches",
            actions=list(DEAD_LETTER_ACTIONS),
            resources=[dead_letters.queue_arn],
        ),
        via_service(key, "sqs", DEAD_LETTER_KEY_ACTIONS),
    ]


def via_service(key: kms.IKey, service: str, actions: tuple[str, ...]) -> iam.PolicyStatement:
    """Use of ``key`` only through ``service`` (s3, sqs, dynamodb) in this region."""
    stack = Stack.of(key)
    return iam.PolicyStatement(
        actions=list(actions),
        resources=[key.key_arn],
        conditions={"StringEquals": {"kms:ViaService": f"{service}.{stack.region}.{stack.url_suffix}"}},
    )


class AuditArchive(Construct):
    """``bucket`` (Object Lock COMPLIANCE for ``ARCHIVE_RETENTION_DAYS``, versioned, SSE-KMS with bucket
    key, private, TLS-only, access-logged, Deep Archive after ``ARCHIVE_DEEP_ARCHIVE_AFTER_DAYS``),
    ``access_log_bucket`` (given, or its own), ``dead_letter_queue`` (batches the stream could not
    archive) and, after ``attach``, ``stream_mapping``."""

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
        removal = RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY

        if access_log_bucket is None:
            own = s3.Bucket(
                self,
                "AccessLogs",
                # S3 server access logging delivers only to buckets encrypted with SSE-S3.
                encryption=s3.BucketEncryption.S3_MANAGED,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                enforce_ssl=True,
                minimum_tls_version=1.2,
                versioned=True,
                lifecycle_rules=[
                    s3.LifecycleRule(
                        id="ExpireAccessLogs",
                        expiration=Duration.days(config.log_retention_days),
                        noncurrent_version_expiration=Duration.days(1),
                    )
                ],
                removal_policy=removal,
            )
            acknowledge(
                own,
                "S3 server access logging can deliver only to a bucket encrypted with SSE-S3 (AES-256), "
                "not SSE-KMS; these logs of the audit archive bucket hold request metadata (keys are "
                "tenant, date and record ids), never audit content.",
                "HIPAA.Security-S3DefaultEncryptionKMS",
            )
            acknowledge(
                own,
                _REPLICATION_REASON.format(what="audit archive access-log"),
                "HIPAA.Security-S3BucketReplicationEnabled",
            )
            access_log_bucket = own
        self.access_log_bucket = access_log_bucket

        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            object_lock_enabled=True,
            object_lock_default_retention=_default_retention(),
            server_access_logs_bucket=access_log_bucket,
            server_access_logs_prefix=ACCESS_LOG_PREFIX,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="DeepArchive",
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.DEEP_ARCHIVE,
                            transition_after=Duration.days(ARCHIVE_DEEP_ARCHIVE_AFTER_DAYS),
                        )
                    ],
                    noncurrent_version_transitions=[
                        s3.NoncurrentVersionTransition(
                            storage_class=s3.StorageClass.DEEP_ARCHIVE,
                            transition_after=Duration.days(ARCHIVE_DEEP_ARCHIVE_AFTER_DAYS),
                        )
                    ],
                )
            ],
            # Locked objects cannot be deleted before their retention ends, so neither can the
            # bucket: it outlives the stack in every environment.
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.bucket,
            _REPLICATION_REASON.format(what="audit archive"),
            "HIPAA.Security-S3BucketReplicationEnabled",
        )

        self.dead_letter_queue: sqs.Queue = dead_letter_queue(
            self,
            "DeadLetters",
            holds="the shard and sequence-number ranges of audit stream batches the archiver could not "
            "copy to the archive bucket (identifiers only; the items stay in the audit table)",
            key=key,
            config=config,
        )
        self.stream_mapping: lambda_.EventSourceMapping | None = None

    def attach(self, table: dynamodb.Table, function: lambda_.IFunction, policy: iam.ManagedPolicy) -> None:
        """Feed ``table``'s stream to ``function`` and give its ``policy`` exactly what that takes."""
        if table.table_stream_arn is None:
            raise ValueError("the audit table has no stream (AUDIT_TABLE.stream)")
        policy.add_statements(
            iam.PolicyStatement(
                sid="ArchiveAuditEvents",
                actions=list(ARCHIVE_WRITE_ACTIONS),
                resources=[self.bucket.arn_for_objects("*")],
            ),
            via_service(self.key, "s3", ARCHIVE_KEY_ACTIONS),
            *stream_consumer_statements(table, self.key, self.dead_letter_queue, name="Audit"),
        )
        stack = Stack.of(self)
        bucket_id = stack.resolve(stack.get_logical_id(self.bucket.node.default_child))  # type: ignore[arg-type]
        table_id = stack.resolve(stack.get_logical_id(table.node.default_child))  # type: ignore[arg-type]
        acknowledge(
            policy,
            "The audit archiver writes one object per audit record under keys "
            "{tenant}/{yyyy}/{mm}/{dd}/{recorded}-{id}.json, so s3:PutObject is granted on the archive "
            "bucket's objects ('/*'); it has no other S3 action (no read, no delete).",
            f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/*]",
        )
        acknowledge(
            policy,
            "dynamodb:ListStreams is granted on the audit table's streams ('/stream/*', as AWS documents "
            "for Lambda stream consumers): a stream ARN ends in a label that changes whenever the stream "
            "is re-created, and ListStreams returns stream ARNs only, no items.",
            f"AwsSolutions-IAM5[Resource::<{table_id}.Arn>/stream/*]",
        )
        self.stream_mapping = lambda_.EventSourceMapping(
            self,
            "StreamMapping",
            target=function,
            event_source_arn=table.table_stream_arn,
            starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            batch_size=STREAM_BATCH_SIZE,
            bisect_batch_on_error=True,
            retry_attempts=STREAM_RETRY_ATTEMPTS,
            max_record_age=STREAM_MAX_RECORD_AGE,
            report_batch_item_failures=True,
            on_failure=event_sources.SqsDlq(self.dead_letter_queue),
            # New day items, and any change after the write (tampering, reported by the archiver).
            filters=[
                lambda_.FilterCriteria.filter(
                    {
                        "eventName": lambda_.FilterRule.is_equal("INSERT"),
                        "dynamodb": {"NewImage": {"kind": {"S": lambda_.FilterRule.is_equal(DAY_KIND)}}},
                    }
                ),
                lambda_.FilterCriteria.filter({"eventName": lambda_.FilterRule.or_("MODIFY", "REMOVE")}),
            ],
        )
        self.stream_mapping.node.add_dependency(policy)


def _default_retention() -> s3.ObjectLockRetention:
    if ARCHIVE_LOCK_MODE != "COMPLIANCE":
        raise ValueError(f"the audit archive is locked in COMPLIANCE mode, not {ARCHIVE_LOCK_MODE}")
    return s3.ObjectLockRetention.compliance(Duration.days(ARCHIVE_RETENTION_DAYS))
