"""Clinical documents (DocumentReference attachments) in S3, the bucket holding its access logs,
and the verifier wiring: S3 "Object Created" events (EventBridge) invoke ``document_verifier``."""

from __future__ import annotations

from typing import Final

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import EnvironmentConfig
from infra.constructs.nag import acknowledge

# The API stores inline contents and signs presigned PUTs and GETs (a presigned URL carries the
# signer's permissions, so the signer must hold them); ListBucket makes a missing object a 404.
DOCUMENT_WRITE_ACTIONS: Final = ("s3:PutObject", "s3:GetObject")
DOCUMENT_READ_ACTIONS: Final = ("s3:GetObject",)
DOCUMENT_LIST_ACTIONS: Final = ("s3:ListBucket",)
DOCUMENT_KEY_WRITE_ACTIONS: Final = ("kms:GenerateDataKey", "kms:Decrypt")
DOCUMENT_KEY_READ_ACTIONS: Final = ("kms:Decrypt",)
DEAD_LETTER_ACTIONS: Final = ("sqs:SendMessage",)
DEAD_LETTER_KEY_ACTIONS: Final = ("kms:GenerateDataKey", "kms:Decrypt")
VERIFIER_DEAD_LETTERS: Final = "DocumentVerifier"
VERIFIER_MAX_EVENT_AGE: Final = Duration.hours(6)

_REPLICATION_REASON = (
    "Replicating the {what} bucket to another region is a data-residency decision for each "
    "deployment (PHI may not leave its region); durability comes from S3's multi-AZ storage and versioning."
)


def via_service(key: kms.IKey, service: str, actions: tuple[str, ...]) -> iam.PolicyStatement:
    """Use of ``key`` only through ``service`` (s3, sqs) in this region."""
    stack = Stack.of(key)
    return iam.PolicyStatement(
        actions=list(actions),
        resources=[key.key_arn],
        conditions={"StringEquals": {"kms:ViaService": f"{service}.{stack.region}.{stack.url_suffix}"}},
    )


class DocumentStore(Construct):
    """``bucket`` (SSE-KMS with bucket key, versioned, private, TLS-only, access-logged, refusing
    writes that are not SSE-KMS with ``key``, sending its events to EventBridge),
    ``access_log_bucket`` (the server access log target), ``verifier_dead_letters`` (upload events
    the verifier could not process) and ``dead_letter_queues`` (for monitoring)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        key: kms.IKey,
        config: EnvironmentConfig,
        messaging_key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = key
        # The verifier's dead-letter queue is written by EventBridge too: a key that service may use.
        self.messaging_key = messaging_key or key
        removal = RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY

        self.access_log_bucket = s3.Bucket(
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
            self.access_log_bucket,
            "S3 server access logging can deliver only to a bucket encrypted with SSE-S3 (AES-256), "
            "not SSE-KMS; the logs hold request metadata (object keys are ids), never document content.",
            "HIPAA.Security-S3DefaultEncryptionKMS",
        )
        acknowledge(
            self.access_log_bucket,
            _REPLICATION_REASON.format(what="access-log"),
            "HIPAA.Security-S3BucketReplicationEnabled",
        )

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
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="documents/",
            removal_policy=removal,
        )
        acknowledge(
            self.bucket,
            _REPLICATION_REASON.format(what="clinical documents"),
            "HIPAA.Security-S3BucketReplicationEnabled",
        )
        # Every object is SSE-KMS under the platform's key (the tenant rides in the encryption
        # context the API signs into each upload URL); anything else is refused by S3 itself.
        self.bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="DenyWritesNotEncryptedWithTheDataKey",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["s3:PutObject"],
                resources=[self.bucket.arn_for_objects("*")],
                conditions={
                    "StringNotEquals": {
                        "s3:x-amz-server-side-encryption-aws-kms-key-id": key.key_arn,
                    },
                },
            )
        )
        self.bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="DenyWritesWithoutSseKms",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["s3:PutObject"],
                resources=[self.bucket.arn_for_objects("*")],
                conditions={"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
            )
        )
        # S3 sends "Object Created" events to EventBridge (native CloudFormation property: no
        # notification custom resource); a rule hands those of this bucket to the verifier.
        bucket_resource = self.bucket.node.default_child
        assert isinstance(bucket_resource, s3.CfnBucket)
        bucket_resource.add_property_override(
            "NotificationConfiguration.EventBridgeConfiguration.EventBridgeEnabled", True
        )
        # Like infra.constructs.queues.dead_letter_queue, but cdk-nag already sees this queue as a
        # dead-letter queue (it is the verifier's and the rule target's), so only the redrive rule applies.
        self.verifier_dead_letters = sqs.Queue(
            self,
            "VerifierDeadLetters",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.messaging_key,
            data_key_reuse=Duration.hours(1),
            enforce_ssl=True,
            retention_period=Duration.days(14),
            removal_policy=removal,
        )
        acknowledge(
            self.verifier_dead_letters,
            "This queue is itself a dead-letter queue; it holds S3 'Object Created' events of uploaded "
            "documents that the document_verifier function failed to process after retries (bucket and "
            "object key only). Messages stay 14 days for an operator to redrive, and an alarm fires on "
            "the first one: a second-level DLQ would add no recovery path.",
            "Serverless-SQSRedrivePolicy",
        )
        self.dead_letter_queues: dict[str, sqs.IQueue] = {VERIFIER_DEAD_LETTERS: self.verifier_dead_letters}
        self.upload_rule: events.Rule | None = None

    def grant_documents(self, policy: iam.ManagedPolicy, *, write: bool) -> None:
        """Objects of the documents bucket: read (and write, for the API) and the key through S3."""
        actions = DOCUMENT_WRITE_ACTIONS if write else DOCUMENT_READ_ACTIONS
        policy.add_statements(
            iam.PolicyStatement(
                sid="DocumentObjects", actions=list(actions), resources=[self.bucket.arn_for_objects("*")]
            ),
            iam.PolicyStatement(
                sid="DocumentListing", actions=list(DOCUMENT_LIST_ACTIONS), resources=[self.bucket.bucket_arn]
            ),
            via_service(self.key, "s3", DOCUMENT_KEY_WRITE_ACTIONS if write else DOCUMENT_KEY_READ_ACTIONS),
        )
        stack = Stack.of(self)
        bucket_id = stack.resolve(stack.get_logical_id(self.bucket.node.default_child))  # type: ignore[arg-type]
        acknowledge(
            policy,
            "Document contents live under keys {tenant}/{DocumentReference id}/{sha256}, one per "
            "document and tenant, so the object actions are granted on the documents bucket's objects "
            "('/*'); no delete action is granted, and every URL the API signs names one key.",
            f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/*]",
        )

    def attach_verifier(self, function: lambda_.Function, policy: iam.ManagedPolicy) -> None:
        """Invoke ``function`` for every object created in the bucket; failures go to the DLQ."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="SendFailedVerifications",
                actions=list(DEAD_LETTER_ACTIONS),
                resources=[self.verifier_dead_letters.queue_arn],
            ),
            via_service(self.messaging_key, "sqs", DEAD_LETTER_KEY_ACTIONS),
        )
        cfn_function = function.node.default_child
        assert isinstance(cfn_function, lambda_.CfnFunction)
        cfn_function.dead_letter_config = lambda_.CfnFunction.DeadLetterConfigProperty(
            target_arn=self.verifier_dead_letters.queue_arn
        )
        self.upload_rule = events.Rule(
            self,
            "ObjectCreated",
            description="Uploaded document contents go to the document_verifier function.",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={"bucket": {"name": [self.bucket.bucket_name]}},
            ),
            targets=[
                targets.LambdaFunction(
                    function,
                    dead_letter_queue=self.verifier_dead_letters,
                    max_event_age=VERIFIER_MAX_EVENT_AGE,
                    retry_attempts=8,
                )
            ],
        )
