"""Structural checks of the lab-order ASL file shared by CDK and local mode."""

from __future__ import annotations

import inspect
import json
import re

import pytest

from ehr import names
from infra.local.cloud import REPO_ROOT, render_asl

ASL = REPO_ROOT / names.LAB_ORDER_ASL


def states(definition: dict) -> dict:
    found = dict(definition["States"])
    for state in definition["States"].values():
        for branch in state.get("Branches", []):
            found.update(states(branch))
        if "Iterator" in state:
            found.update(states(state["Iterator"]))
        if "ItemProcessor" in state:
            found.update(states(state["ItemProcessor"]))
    return found


def test_every_transition_target_exists():
    definition = json.loads(ASL.read_text())
    all_states = states(definition)
    assert definition["StartAt"] in all_states
    for name, state in all_states.items():
        targets = [state.get("Next"), state.get("Default")]
        targets += [c.get("Next") for c in state.get("Choices", [])]
        targets += [c.get("Next") for c in state.get("Catch", [])]
        for target in filter(None, targets):
            assert target in all_states, f"{name} → {target}"
        assert state.get("End") or state.get("Next") or state["Type"] in ("Succeed", "Fail", "Choice"), name


def test_every_task_retries_and_catches():
    for name, state in states(json.loads(ASL.read_text())).items():
        if state["Type"] == "Task":
            assert state.get("Retry"), f"{name} has no Retry"
            assert any("States.ALL" in c["ErrorEquals"] for c in state.get("Catch", [])), (
                f"{name} catches nothing"
            )


def test_every_substitution_is_provided():
    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", ASL.read_text()))
    assert used == set(names.LAB_ORDER_SUBSTITUTIONS)
    rendered = render_asl(ASL, {name: "x" for name in names.LAB_ORDER_SUBSTITUTIONS})
    assert "${" not in rendered
    with pytest.raises(KeyError, match="EventSource"):
        render_asl(ASL, {name: "x" for name in names.LAB_ORDER_SUBSTITUTIONS if name != "EventSource"})


def test_every_lambda_step_is_a_step_the_workflow_function_runs():
    from ehr.labs.workflow import LabWorkflow

    steps = {
        state["Parameters"]["Payload"]["step"]
        for state in states(json.loads(ASL.read_text())).values()
        if state["Type"] == "Task" and "lambda:invoke" in state["Resource"]
    }
    assert steps == {"claim", "send", "await", "revoke", "hold", "cancel", "complete", "escalate", "fail"}
    source = inspect.getsource(LabWorkflow.run)
    assert all(f'"{step}"' in source for step in steps)


def test_every_task_result_the_choices_read_is_produced():
    # The Choice states read $.order.outcome, $.delivery.accepted, $.result.*, $.completed.critical:
    # each comes from a ResultSelector/ResultPath of an earlier Task.
    definition = json.loads(ASL.read_text())
    produced = {state.get("ResultPath") for state in states(definition).values() if state["Type"] == "Task"}
    for state in states(definition).values():
        for choice in state.get("Choices", []):
            variable = choice["Variable"]
            assert any(variable.startswith(f"{path}.") for path in produced if path), variable
