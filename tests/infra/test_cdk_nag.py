"""cdk-nag (AWS Solutions, HIPAA Security, Serverless): nothing unaddressed, every exception explained."""

from __future__ import annotations

import re

import pytest
from aws_cdk.assertions import Annotations, Match

import infra.constructs.nag as nag
from ehr import names
from ehr.api.routes import ROUTES

pytestmark = pytest.mark.infra

# Words that show a reason is about a concrete resource, not a blanket excuse.
SUBJECTS = (
    *names.FUNCTIONS,
    *(r.path for r in ROUTES),
    "bucket", "table", "queue", "pool", "stage", "policy", "role", "workflow", "X-Ray", "API Gateway",
    "secret",
)  # fmt: skip
GENERIC = re.compile(r"\b(todo|n/a|not needed|suppress(ed)?|false positive|ignore)\b", re.IGNORECASE)


def test_no_unacknowledged_nag_errors_or_warnings(any_env) -> None:
    # Given an environment synthesized with the three packs attached (errors would fail the synth)
    # Then the packs report nothing left: neither errors nor warnings
    assert any_env.findings == []


def test_no_cdk_warnings_or_errors(any_env) -> None:
    annotations = Annotations.from_stack(any_env.stack)
    assert annotations.find_error("*", Match.any_value()) == []
    assert annotations.find_warning("*", Match.any_value()) == []


def test_every_acknowledgement_has_a_specific_reason_on_a_resource(any_env) -> None:
    acknowledgements = any_env.acknowledgements()
    assert acknowledgements, "expected the documented acknowledgements"
    stack_path = any_env.stack.node.path
    for ack in acknowledgements:
        # on a construct inside the stack, never the app or the whole stack
        assert ack.path.startswith(f"{stack_path}/"), ack
        assert len(ack.reason) >= nag.MIN_REASON_LENGTH, ack
        assert not GENERIC.search(ack.reason), ack
        assert any(subject.lower() in ack.reason.lower() for subject in SUBJECTS), ack


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_acknowledgements_are_not_stale(unacknowledged, env: str) -> None:
    """Each acknowledgement silences a finding that really occurs on that construct."""
    # Given the app built while acknowledgements are recorded instead of applied
    # When the packs check it
    recorded, raw = unacknowledged(env)
    # Then every acknowledgement matches a finding on that construct or below it
    assert recorded
    for ack in recorded:
        assert any(
            f.rule == ack.rule and (f.path == ack.path or f.path.startswith(f"{ack.path}/")) for f in raw
        ), f"stale acknowledgement {ack.rule} on {ack.path}"
