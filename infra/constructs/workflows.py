"""Step Functions workflows; the lab-order state machine is ``statemachines/lab_order.asl.json``."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import RemovalPolicy
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from ehr import names
from infra.config import RETENTION_DAYS, EnvironmentConfig
from infra.constructs.nag import acknowledge


class Workflows(Construct):
    """``lab_order`` (STANDARD, logging ALL, X-Ray), its ``role``, ``policy`` and ``log_group``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        project_root: Path,
        bus: events.IEventBus,
        logs_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY
        self.log_group = logs.LogGroup(
            self,
            "LabOrderLogs",
            retention=logs.RetentionDays[RETENTION_DAYS[config.log_retention_days]],
            encryption_key=logs_key,
            removal_policy=removal,
        )
        self.role = iam.Role(
            self,
            "LabOrderRole",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description="Execution role of the lab-order workflow.",
        )
        self.policy = iam.ManagedPolicy(
            self,
            "LabOrderPolicy",
            description="Permissions of the lab-order workflow.",
            roles=[self.role],
            statements=[
                iam.PolicyStatement(
                    sid="PublishOnPlatformBus", actions=["events:PutEvents"], resources=[bus.event_bus_arn]
                ),
                # Step Functions delivers execution logs through CloudWatch Logs' vended-log API,
                # whose actions take no resource; the log group is chosen in the state machine.
                iam.PolicyStatement(
                    sid="DeliverExecutionLogs",
                    actions=[
                        "logs:CreateLogDelivery",
                        "logs:GetLogDelivery",
                        "logs:UpdateLogDelivery",
                        "logs:DeleteLogDelivery",
                        "logs:ListLogDeliveries",
                        "logs:PutResourcePolicy",
                        "logs:DescribeResourcePolicies",
                        "logs:DescribeLogGroups",
                    ],
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    sid="SendTraces",
                    actions=[
                        "xray:PutTraceSegments",
                        "xray:PutTelemetryRecords",
                        "xray:GetSamplingRules",
                        "xray:GetSamplingTargets",
                    ],
                    resources=["*"],
                ),
            ],
        )
        acknowledge(
            self.policy,
            "The lab-order workflow's execution-log delivery (logs:*LogDelivery, "
            "PutResourcePolicy, DescribeLogGroups) and X-Ray tracing actions support no "
            "resource-level permissions, so Step Functions documents '*' for them.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        self.lab_order = sfn.StateMachine(
            self,
            "LabOrder",
            definition_body=sfn.DefinitionBody.from_file(str(project_root / names.LAB_ORDER_ASL)),
            definition_substitutions={"EventBusName": bus.event_bus_name, "EventSource": names.EVENT_SOURCE},
            state_machine_type=sfn.StateMachineType.STANDARD,
            role=self.role.without_policy_updates(),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel.ALL,
                include_execution_data=False,  # execution input will carry PHI (HL7 messages)
            ),
            removal_policy=removal,
        )
        self.lab_order.node.add_dependency(self.policy)
