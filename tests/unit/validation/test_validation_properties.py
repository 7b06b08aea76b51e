"""Properties: whatever JSON a client sends, validation answers with an OperationOutcome or passes.

It never raises anything else (a 500 with a stack trace), never changes the input, and its issues
always carry a code, readable diagnostics and, where they point somewhere, a FHIRPath-like location.
"""

from __future__ import annotations

import copy
import json
import os
import re
from decimal import Decimal
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")  # in the dev group; see docs/validation.md
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from validation_helpers import EXAMPLES  # noqa: E402

from ehr.fhir.outcome import OperationOutcomeError  # noqa: E402
from ehr.fhir.validation import known_resource_types, parse_json, validate_bundle, validate_resource  # noqa: E402

# VALIDATION_FUZZ_EXAMPLES=5000 for a longer hunt.
SETTINGS = settings(
    max_examples=int(os.environ.get("VALIDATION_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,  # no .hypothesis/ folder in the working tree
    suppress_health_check=[HealthCheck.too_slow],
)
# Type.element[0].child, with [x] naming a choice element as a whole
EXPRESSION = re.compile(r"[A-Za-z][A-Za-z0-9]*(\.[^.\[\]]+(\[x\])?(\[\d+\])?)*|resourceType")
KEYS = [
    "resourceType", "id", "meta", "text", "div", "status", "extension", "url", "valueString",
    "valueQuantity", "value", "code", "system", "coding", "reference", "display", "start", "end",
    "low", "high", "contained", "entry", "resource", "request", "method", "fullUrl", "type",
    "name", "given", "_given", "_status", "component", "subject", "period", "birthDate", "total",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.text(max_size=12),
    st.sampled_from(
        ["final", "#p", "urn:uuid:0", "2020-02-30", "2020-01-01T00:00:00Z", "Patient", "transaction"]
    ),
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=40,
)
RESOURCE_TYPES = sorted(known_resource_types())


def _seeds() -> list[dict[str, Any]]:
    seeds: list[dict[str, Any]] = [
        {"resourceType": "Patient", "name": [{"family": "X", "given": ["A"], "period": {"start": "2020"}}]},
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "valueQuantity": {"value": Decimal("1.50")},
        },
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                    "resource": {"resourceType": "Patient"},
                    "request": {"method": "POST", "url": "Patient"},
                }
            ],
        },
    ]
    if EXAMPLES.is_dir():
        for path in sorted(EXAMPLES.glob("*.json"))[:25]:
            if path.stat().st_size < 20_000:
                seeds.append(parse_json(path.read_bytes()))
    return seeds


SEEDS = _seeds()


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    return out


@st.composite
def mutated_resources(draw: st.DrawFn) -> dict[str, Any]:
    """A real resource with a few of its elements replaced, removed or added."""
    resource = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(resource) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = resource
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON)
        elif action == "remove" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(JSON)
        elif isinstance(parent, list):
            parent.append(draw(JSON))
    return resource


@st.composite
def random_resources(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6))
    if draw(st.booleans()):
        body["resourceType"] = draw(st.sampled_from(RESOURCE_TYPES))
    return body


def _answers_with_an_outcome_or_passes(body: Any) -> None:
    before = copy.deepcopy(body)
    for validate in (validate_resource, validate_bundle):
        try:
            validate(body)
        except OperationOutcomeError as error:
            assert error.status == 400
            assert error.issues
            rendered = json.dumps(error.to_fhir(), default=str)
            assert "Traceback" not in rendered and "pydantic" not in rendered
            for issue in error.issues:
                assert issue.code and issue.diagnostics
                for expression in issue.expression:
                    assert EXPRESSION.fullmatch(expression), expression
    assert body == before  # never changed


@SETTINGS
@given(random_resources())
def test_random_json_objects_get_an_outcome_never_a_crash(body: dict[str, Any]) -> None:
    _answers_with_an_outcome_or_passes(body)


@SETTINGS
@given(mutated_resources())
def test_mutated_resources_get_an_outcome_never_a_crash(body: dict[str, Any]) -> None:
    _answers_with_an_outcome_or_passes(body)


@SETTINGS
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v, default=str).encode()))
def test_any_bytes_parse_to_an_object_or_a_400(body: bytes) -> None:
    try:
        parsed = parse_json(body)
    except OperationOutcomeError as error:
        assert error.status == 400
        assert error.code in ("invalid", "structure")
    else:
        assert isinstance(parsed, dict)
