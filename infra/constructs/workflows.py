"""Step Functions workflows; the lab-order state machine is ``statemachines/lab_order.asl.json``.

The workflow and its ``lab_workflow`` function need each other's ARN: the definition invokes the
function, and the function (like ``hl7v2_inbound``) resumes the workflow with ``SendTaskSuccess``.
The state machine therefore has a name derived from the stack (``lab_order_name``), and the
function policies name its ARN built from that name, so no resource of the cycle refers to the
state machine resource itself and CloudFormation can order them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from ehr import names
from infra.config import RETENTION_DAYS, EnvironmentConfig
from infra.constructs.audit_archive import via_service
from infra.constructs.nag import acknowledge
from infra.constructs.queues import dead_letter_queue

LAB_ORDER_DEAD_LETTERS: Final = "LabOrderDelivery"
INVOKE_ACTIONS: Final = ("lambda:InvokeFunction",)
DEAD_LETTER_ACTIONS: Final = ("sqs:SendMessage",)
DEAD_LETTER_KEY_ACTIONS: Final = ("kms:GenerateDataKey", "kms:Decrypt")
# The domain's adapter (ehr.labs.stepfunctions) only ever reports success on a task token.
TASK_RESPONSE_ACTIONS: Final = ("states:SendTaskSuccess",)
PARTNER_SECRET_ACTIONS: Final = ("secretsmanager:GetSecretValue",)


class Workflows(Construct):
    """``lab_order`` (STANDARD, logging ALL, X-Ray) named ``lab_order_name`` (ARN:
    ``lab_order_arn``), its ``role``, ``policy``, ``log_group`` and ``dead_letters`` (orders whose
    delivery to the lab failed), the latter also in ``dead_letter_queues`` for monitoring.

    ``grant_task_response(policy)`` lets a function resume a waiting execution;
    ``grant_partner_secrets(policy)`` lets it read the lab partners' HMAC secrets.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        project_root: Path,
        bus: events.IEventBus,
        logs_key: kms.IKey,
        messaging_key: kms.IKey,
        lab_workflow: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        removal = RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY
        self.lab_order_name = f"{config.stack_name}-LabOrder"
        self.lab_order_arn = stack.format_arn(
            service="states",
            resource="stateMachine",
            resource_name=self.lab_order_name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.dead_letters: sqs.Queue = dead_letter_queue(
            self,
            "LabOrderDeadLetters",
            holds="lab orders whose delivery to the partner lab failed after the workflow's retries "
            "(tenant, ServiceRequest id, execution id and error name; no PHI)",
            key=messaging_key,
            config=config,
        )
        self.dead_letter_queues: dict[str, sqs.IQueue] = {LAB_ORDER_DEAD_LETTERS: self.dead_letters}
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
                # The definition invokes the unqualified function ARN ($LATEST): no version or
                # alias ARN (":*") is needed.
                iam.PolicyStatement(
                    sid="InvokeLabWorkflowSteps",
                    actions=list(INVOKE_ACTIONS),
                    resources=[lab_workflow.function_arn],
                ),
                iam.PolicyStatement(
                    sid="DeadLetterUndeliveredOrders",
                    actions=list(DEAD_LETTER_ACTIONS),
                    resources=[self.dead_letters.queue_arn],
                ),
                via_service(messaging_key, "sqs", DEAD_LETTER_KEY_ACTIONS),
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
        substitutions = {
            "EventBusName": bus.event_bus_name,
            "EventSource": names.EVENT_SOURCE,
            "LabWorkflowFunctionArn": lab_workflow.function_arn,
            "DeadLetterQueueUrl": self.dead_letters.queue_url,
        }
        if set(substitutions) != set(names.LAB_ORDER_SUBSTITUTIONS):
            raise ValueError(
                f"the lab-order substitutions are {sorted(names.LAB_ORDER_SUBSTITUTIONS)}, "
                f"the stack gives {sorted(substitutions)}"
            )
        self.lab_order = sfn.StateMachine(
            self,
            "LabOrder",
            state_machine_name=self.lab_order_name,
            definition_body=sfn.DefinitionBody.from_file(str(project_root / names.LAB_ORDER_ASL)),
            definition_substitutions=substitutions,
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

    def grant_task_response(self, policy: iam.ManagedPolicy) -> None:
        """``states:SendTaskSuccess`` on the lab-order state machine only (by its name-derived ARN)."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="ResumeLabOrderWorkflow",
                actions=list(TASK_RESPONSE_ACTIONS),
                resources=[self.lab_order_arn],
            )
        )

    def grant_partner_secrets(self, policy: iam.ManagedPolicy) -> None:
        """Read the lab partners' webhook HMAC secrets: Secrets Manager names under
        ``names.PARTNER_SECRET_PREFIX`` (one secret per tenant and partner, created at onboarding)."""
        stack = Stack.of(self)
        arn = stack.format_arn(
            service="secretsmanager",
            resource="secret",
            resource_name=f"{names.PARTNER_SECRET_PREFIX}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        policy.add_statements(
            iam.PolicyStatement(
                sid="ReadPartnerSecrets", actions=list(PARTNER_SECRET_ACTIONS), resources=[arn]
            )
        )
        acknowledge(
            policy,
            "Lab partner HMAC secrets are created per tenant and partner when a partner is onboarded, "
            f"named {names.PARTNER_SECRET_PREFIX}<tenant>/<partner> (plus the random suffix Secrets Manager "
            "appends), so GetSecretValue is granted on that name prefix; the lab_workflow function has no "
            "other secret action.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:"
            f"secret:{names.PARTNER_SECRET_PREFIX}*]",
        )
