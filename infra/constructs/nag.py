"""Acknowledging cdk-nag findings: one helper, so every acknowledgement carries a real reason.

cdk-nag 3 reads CDK's native ``Validations.of(scope).acknowledge(...)`` metadata. A finding is
acknowledged on the construct that owns the resource (never stack-wide), with a reason that says
why this resource may differ from the rule.
"""

from __future__ import annotations

from typing import Final

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct

MIN_REASON_LENGTH: Final = 40


def acknowledge(scope: IConstruct, reason: str, *rule_ids: str) -> None:
    """Acknowledge ``rule_ids`` (e.g. ``AwsSolutions-IAM5[Resource::*]``) on ``scope`` and below."""
    if len(reason) < MIN_REASON_LENGTH:
        raise ValueError(f"acknowledgement of {', '.join(rule_ids)} needs a specific reason, got {reason!r}")
    if not rule_ids:
        raise ValueError("acknowledge() needs at least one rule id")
    Validations.of(scope).acknowledge(*(Acknowledgment(id=rule_id, reason=reason) for rule_id in rule_ids))
