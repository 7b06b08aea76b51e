"""The platform's EventBridge bus, its archive, and the rules of ``ehr.events.schema.RULES``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from ehr.events.schema import ARCHIVE_RETENTION_DAYS, RULES, RuleDefinition, TargetKind
from infra.config import EnvironmentConfig
from infra.constructs.queues import dead_letter_queue

TARGET_RETRY_ATTEMPTS: Final = 8
TARGET_MAX_EVENT_AGE: Final = Duration.hours(24)
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
    """``bus`` (custom) and ``archive``; after ``route(...)``: ``rules``, ``target_roles`` and
    ``dead_letter_queues`` keyed by the rule's logical id."""

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

    def route(
        self,
        state_machines: Mapping[TargetKind, sfn.IStateMachine],
        rules: tuple[RuleDefinition, ...] = RULES,
    ) -> None:
        """Create every rule with its target, a retry policy and a dead-letter queue."""
        for definition in rules:
            if definition.target not in state_machines:
                raise ValueError(
                    f"rule {definition.logical_id} targets {definition.target}, which is not built"
                )
            machine = state_machines[definition.target]
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
                holds=f"events the {definition.logical_id} rule could not deliver to its state machine",
                key=self._key,
                config=self._config,
            )
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
            rule.add_target(
                targets.SfnStateMachine(
                    machine,
                    role=role.without_policy_updates(),
                    dead_letter_queue=dlq,
                    retry_attempts=TARGET_RETRY_ATTEMPTS,
                    max_event_age=TARGET_MAX_EVENT_AGE,
                )
            )
            self.rules[definition.logical_id] = rule
            self.target_roles[definition.logical_id] = role
            self.dead_letter_queues[definition.logical_id] = dlq
