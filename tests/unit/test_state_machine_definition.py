"""Structural checks of the lab-order ASL file shared by CDK and local mode."""

from __future__ import annotations

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
    assert used == {"EventBusName", "EventSource"}
    rendered = render_asl(ASL, {"EventBusName": "bus", "EventSource": "src"})
    assert "${" not in rendered
    with pytest.raises(KeyError, match="EventSource"):
        render_asl(ASL, {"EventBusName": "bus"})
