"""parse_json: the body as sent, with decimals kept exact, or a 400 OperationOutcome."""

from __future__ import annotations

from decimal import Decimal

import pytest
from validation_helpers import outcome_of

from ehr.fhir.validation import parse_json


def test_decimals_keep_their_precision() -> None:
    # Given a body with a trailing zero, an exponent and an integer
    body = b'{"resourceType": "Observation", "valueQuantity": {"value": 1.50}, "x": [1.0e2, 3]}'

    # When it is parsed
    parsed = parse_json(body)

    # Then the numbers are exactly what the client wrote
    assert str(parsed["valueQuantity"]["value"]) == "1.50"
    assert str(parsed["x"][0]) == "1.0E+2"
    assert parsed["x"][1] == 3 and isinstance(parsed["x"][1], int)


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    assert parse_json(b'\xef\xbb\xbf{"resourceType": "Patient"}') == {"resourceType": "Patient"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"a": 1,}',
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"\xff\xfe{}",
        b'{"a": "\xc3"}',
    ],
)
def test_a_body_that_is_not_json_is_refused(body: bytes) -> None:
    outcome = outcome_of(lambda: parse_json(body))
    assert [i["code"] for i in outcome["issue"]] == ["invalid"]


@pytest.mark.parametrize("body", [b"[]", b'"Patient"', b"42", b"null"])
def test_json_that_is_not_an_object_is_refused(body: bytes) -> None:
    outcome = outcome_of(lambda: parse_json(body))
    assert [i["code"] for i in outcome["issue"]] == ["structure"]


def test_a_property_given_twice_is_refused() -> None:
    outcome = outcome_of(
        lambda: parse_json(b'{"resourceType": "Observation", "status": "final", "status": "x"}')
    )
    assert [i["code"] for i in outcome["issue"]] == ["structure"]
    assert "'status'" in outcome["issue"][0]["diagnostics"]


def test_nesting_beyond_what_json_can_hold_is_refused() -> None:
    outcome = outcome_of(lambda: parse_json(b"[" * 100_000 + b"]" * 100_000))
    assert outcome["issue"][0]["code"] == "invalid"


def test_a_huge_integer_is_refused_not_crashed_on() -> None:
    outcome = outcome_of(lambda: parse_json(b'{"a": ' + b"9" * 5000 + b"}"))
    assert outcome["issue"][0]["code"] == "invalid"


def test_numbers_without_fraction_stay_integers() -> None:
    assert parse_json(b'{"a": -7}') == {"a": -7}
    assert parse_json(b'{"a": 2.5}') == {"a": Decimal("2.5")}
