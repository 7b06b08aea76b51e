"""Clinical documents (DocumentReference attachments) in S3, and the bucket holding its access logs."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import EnvironmentConfig
from infra.constructs.nag import acknowledge

_REPLICATION_REASON = (
    "Replicating the {what} bucket to another region is a data-residency decision for each "
    "deployment (PHI may not leave its region); durability comes from S3's multi-AZ storage and versioning."
)


class DocumentStore(Construct):
    """``bucket`` (SSE-KMS with bucket key, versioned, private, TLS-only, access-logged) and
    ``access_log_bucket`` (the server access log target)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, key: kms.IKey, config: EnvironmentConfig
    ) -> None:
        super().__init__(scope, construct_id)
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
