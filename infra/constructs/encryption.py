"""Customer-managed KMS keys: one for clinical data, one for logs, one for messaging."""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.config import EnvironmentConfig


class Encryption(Construct):
    """The stack's KMS keys, all with yearly automatic rotation.

    * ``data_key`` — PHI at rest: the records and audit tables, the documents bucket, backups.
    * ``logs_key`` — every CloudWatch log group (function, API access/execution, WAF, workflow).
    * ``messaging_key`` — the alarm topic and the dead-letter queues; AWS services that publish
      into them (EventBridge, CloudWatch alarms, SNS) may use it for exactly that.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        removal = RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY
        prefix = f"alias/{config.stack_name}"

        def key(key_id: str, description: str, alias: str) -> kms.Key:
            return kms.Key(
                self,
                key_id,
                description=f"{config.stack_name}: {description}",
                alias=f"{prefix}/{alias}",
                enable_key_rotation=True,
                removal_policy=removal,
                pending_window=Duration.days(30 if config.retain else 7),
            )

        self.data_key = key("DataKey", "clinical data at rest (tables, documents, backups)", "data")
        self.logs_key = key("LogsKey", "CloudWatch Logs log groups", "logs")
        self.messaging_key = key("MessagingKey", "alarm topic and dead-letter queues", "messaging")

        # CloudWatch Logs encrypts log events with the key, limited to this account's log groups.
        self.logs_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchLogsOfThisAccount",
                principals=[iam.ServicePrincipal(f"logs.{stack.region}.{stack.url_suffix}")],
                actions=[
                    "kms:Encrypt*",
                    "kms:Decrypt*",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:Describe*",
                ],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                            service="logs",
                            resource="log-group",
                            resource_name="*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    }
                },
            )
        )
        # Services that deliver into the encrypted topic and queues (alarms -> SNS, EventBridge and
        # SNS -> dead-letter queues) need a data key, only on behalf of this account.
        self.messaging_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowAwsServicesToDeliverMessages",
                principals=[
                    iam.ServicePrincipal("cloudwatch.amazonaws.com"),
                    iam.ServicePrincipal("events.amazonaws.com"),
                    iam.ServicePrincipal("sns.amazonaws.com"),
                ],
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            )
        )
