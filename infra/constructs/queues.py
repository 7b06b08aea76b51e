"""Dead-letter queues: KMS-encrypted, TLS-only, two weeks of retention, alarmed on by Monitoring."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import EnvironmentConfig
from infra.constructs.nag import acknowledge


def dead_letter_queue(
    scope: Construct, construct_id: str, *, holds: str, key: kms.IKey, config: EnvironmentConfig
) -> sqs.Queue:
    """A queue that keeps what ``holds`` describes (e.g. "events the X rule could not deliver")."""
    queue = sqs.Queue(
        scope,
        construct_id,
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=key,
        data_key_reuse=Duration.hours(1),
        enforce_ssl=True,
        retention_period=Duration.days(14),
        removal_policy=RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY,
    )
    acknowledge(
        queue,
        f"This queue is itself a dead-letter queue; it holds {holds}. Messages stay 14 days for an "
        "operator to inspect and redrive, and an alarm fires on the first one: a second-level DLQ "
        "would add no recovery path.",
        "AwsSolutions-SQS3",
        "Serverless-SQSRedrivePolicy",
    )
    return queue
