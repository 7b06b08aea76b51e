"""The platform's EventBridge bus, its archive, and the rules of ``ehr.events.schema.RULES``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from ehr.events.schema import ARCHIVE_RETENTION_DAYS, RULES, RuleDefinition, TargetKind
from infra.config import EnvironmentConfig
from infra.constructs.queues import dead_letter_queue

TARGET_RETRY_ATTEMPTS: Final = 8
TARGET_MAX_EVENT_AGE: Final = Duration.hours(24)
PUT_EVENTS_ACTIONS: Final = ("events:PutEvents",)
_PATTERN_FIELDS: Final = frozenset(
    ("account", "detail", "detail_type", "id", "region", "resources", "source", "time", "version")
)


def event_pattern(pattern: Mapping[str, Any]) -> events.EventPattern:
    """An EventBridge pattern dict (``{"detail-type": [...]}``) as CDK's ``EventPattern``."""
    kwargs = {key.replace("-", "_"): value for key, value in pattern.items()}
    unknown = set(kwargs) - _PATTERN_FIELDS
    if unknown:
        raise ValueError(f"event pattern has unsupported top-level field(s): {', '.join(sorted(unknown))}")
    return events.EventPattern(**kwargs)


class Events(Construct):
    """``bus`` (custom) and ``archive``; after ``route(...)``: ``rules`` and ``dead_letter_queues``
    keyed by the rule's logical id, and ``target_roles`` of the rules that start a state machine
    (EventBridge invokes a Lambda target through the function's resource policy instead)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, messaging_key: kms.IKey
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._key = messaging_key
        self.bus = events.EventBus(
            self, "Bus", description=f"{config.stack_name}: platform events (identifiers only, never PHI)."
        )
        self.archive = self.bus.archive(
            "Archive",
            description="Every event of the bus, for replay.",
            event_pattern=events.EventPattern(account=[Stack.of(self).account]),
            retention=Duration.days(ARCHIVE_RETENTION_DAYS),
        )
        self.rules: dict[str, events.Rule] = {}
        self.target_roles: dict[str, iam.Role] = {}
        self.dead_letter_queues: dict[str, sqs.Queue] = {}

    def grant_put_events(self, policy: iam.ManagedPolicy) -> None:
        """``events:PutEvents`` on the platform bus only."""
        policy.add_statements(
            iam.PolicyStatement(
                sid="PublishOnPlatformBus",
                actions=list(PUT_EVENTS_ACTIONS),
                resources=[self.bus.event_bus_arn],
            )
        )

    def route(
        self,
        state_machines: Mapping[TargetKind, sfn.IStateMachine],
        functions: Mapping[TargetKind, lambda_.IFunction] | None = None,
        rules: tuple[RuleDefinition, ...] = RULES,
    ) -> None:
        """Create every rule with its target, a retry policy and a dead-letter queue."""
        functions = functions or {}
        for definition in rules:
            if definition.target not in state_machines and definition.target not in functions:
                raise ValueError(
                    f"rule {definition.logical_id} targets {definition.target}, which is not built"
                )
            rule = events.Rule(
                self,
                definition.logical_id,
                event_bus=self.bus,
                description=definition.description,
                event_pattern=event_pattern(definition.event_pattern),
            )
            dlq = dead_letter_queue(
                self,
                f"{definition.logical_id}DeadLetters",
                holds=f"events the {definition.logical_id} rule could not deliver to its target "
                f"({definition.target})",
                key=self._key,
                config=self._config,
            )
            if definition.target in state_machines:
                rule.add_target(
                    self._state_machine_target(definition, state_machines[definition.target], dlq)
                )
            else:
                # EventBridge invokes the function asynchronously; this retry policy and queue cover
                # delivery, and the function's own EventInvokeConfig covers its failures.
                rule.add_target(
                    targets.LambdaFunction(
                        functions[definition.target],
                        dead_letter_queue=dlq,
                        retry_attempts=TARGET_RETRY_ATTEMPTS,
                        max_event_age=TARGET_MAX_EVENT_AGE,
                    )
                )
            self.rules[definition.logical_id] = rule
            self.dead_letter_queues[definition.logical_id] = dlq

    def _state_machine_target(
        self, definition: RuleDefinition, machine: sfn.IStateMachine, dlq: sqs.IQueue
    ) -> targets.SfnStateMachine:
        role = iam.Role(
            self,
            f"{definition.logical_id}TargetRole",
            assumed_by=iam.ServicePrincipal("events.amazonaws.com"),
            description=f"Lets the {definition.logical_id} rule start its state machine.",
        )
        iam.ManagedPolicy(
            self,
            f"{definition.logical_id}TargetPolicy",
            roles=[role],
            statements=[
                iam.PolicyStatement(
                    sid="StartTargetStateMachine",
                    actions=["states:StartExecution"],
                    resources=[machine.state_machine_arn],
                )
            ],
        )
        self.target_roles[definition.logical_id] = role
        return targets.SfnStateMachine(
            machine,
            role=role.without_policy_updates(),
            dead_letter_queue=dlq,
            retry_attempts=TARGET_RETRY_ATTEMPTS,
            max_event_age=TARGET_MAX_EVENT_AGE,
        )
