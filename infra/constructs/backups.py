"""AWS Backup of the tables (daily, on top of point-in-time recovery), when the environment asks for it."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_backup as backup
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_kms as kms
from constructs import Construct

from infra.config import EnvironmentConfig
from infra.constructs.nag import acknowledge


class Backups(Construct):
    """A vault (CMK-encrypted) and a daily plan selecting ``tables``; ``plan`` is None when disabled.

    PITR (35 days) is always on; AWS Backup adds copies that survive the table being deleted and a
    retention set by ``backup_retention_days``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        tables: Sequence[dynamodb.Table],
        key: kms.IKey,
        config: EnvironmentConfig,
    ) -> None:
        super().__init__(scope, construct_id)
        self.vault: backup.BackupVault | None = None
        self.plan: backup.BackupPlan | None = None
        if config.backup_retention_days is None:
            for table in tables:
                acknowledge(
                    table,
                    f"Environment '{config.name}' sets backup_retention_days to null: it holds no real "
                    "PHI, and the table keeps 35 days of point-in-time recovery; environments with "
                    "real data set backup_retention_days to put the table in an AWS Backup plan.",
                    "HIPAA.Security-DynamoDBInBackupPlan",
                )
            return

        self.vault = backup.BackupVault(
            self,
            "Vault",
            encryption_key=key,
            removal_policy=RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY,
        )
        self.plan = backup.BackupPlan(self, "Plan", backup_vault=self.vault)
        self.plan.add_rule(
            backup.BackupPlanRule(
                rule_name="Daily",
                schedule_expression=events.Schedule.cron(minute="0", hour="3"),
                delete_after=Duration.days(config.backup_retention_days),
            )
        )
        selection = self.plan.add_selection(
            "Tables", resources=[backup.BackupResource.from_dynamo_db_table(t) for t in tables]
        )
        acknowledge(
            selection,
            "The backup selection role uses AWSBackupServiceRolePolicyForBackup, the policy AWS Backup "
            "documents for its service role; only backup.amazonaws.com can assume this role.",
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSBackupServiceRolePolicyForBackup]",
        )
