"""Order-preserving encodings and FHIR date ranges."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ehr.fhir.search.encoding import (
    DECIMAL_MAX,
    DECIMAL_MIN,
    INSTANT_MAX,
    INSTANT_MIN,
    date_range,
    decode_instant,
    encode_decimal,
    encode_instant,
    normalize_string,
    parse_date_range,
    period_range,
    precision_range,
    timing_range,
    to_decimal,
)

EDGE_DECIMALS = [
    "0",
    "-0",
    "0.000",
    "1",
    "-1",
    "0.5",
    "0.51",
    "-0.5",
    "-0.51",
    "9",
    "10",
    "11",
    "99.99",
    "100",
    "-100",
    "1e-30",
    "-1e-30",
    "1e30",
    "-1e30",
    "1E+999999",
    "-1E+999999",
    "1E-999999",
    "123456789012345678901234567890.123456789",
    "-123456789012345678901234567890.123456789",
    "0.1",
    "0.09999999999",
    "-0.09999999999",
    "5.1",
    "5.09",
]


def _random_decimals(count: int, seed: int) -> list[Decimal]:
    rng = random.Random(seed)
    values = []
    for _ in range(count):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12)))
        exponent = rng.randint(-40, 40)
        sign = rng.choice(("", "-"))
        values.append(Decimal(f"{sign}{digits}E{exponent}"))
    return values


def test_decimal_encoding_preserves_numeric_order_on_edges_and_random_values():
    # Given edge cases and random decimals of every sign and magnitude
    values = [Decimal(v) for v in EDGE_DECIMALS] + _random_decimals(3000, seed=20240501)
    # When they are sorted by their encodings
    by_encoding = sorted(values, key=encode_decimal)
    # Then that is numeric order, and equal numbers encode alike
    assert by_encoding == sorted(values)
    for a, b in itertools.pairwise(by_encoding):
        assert (encode_decimal(a) == encode_decimal(b)) == (a == b)


def test_decimal_encoding_ignores_trailing_zeros_and_sits_between_the_sentinels():
    # Given decimals that differ only in notation, and extreme ones
    # When they are encoded
    # Then equal values encode alike and all sort between the sentinels
    assert encode_decimal(Decimal("1.50")) == encode_decimal(Decimal("1.5"))
    assert encode_decimal(Decimal("-0.0")) == encode_decimal(Decimal("0"))
    for value in ("-1e999", "0", "1e999", "-1e-999"):
        assert DECIMAL_MIN < encode_decimal(Decimal(value)) < DECIMAL_MAX


def test_decimal_encoding_refuses_non_finite_numbers():
    # Given NaN and infinity
    # When they are encoded
    # Then a ValueError says they cannot be
    with pytest.raises(ValueError):
        encode_decimal(Decimal("NaN"))
    with pytest.raises(ValueError):
        encode_decimal(Decimal("Infinity"))


def test_decimal_encoding_property_with_hypothesis():
    # Given any two finite decimals (hypothesis, when installed)
    # When both are encoded
    # Then their encodings compare as the numbers do
    hypothesis = pytest.importorskip("hypothesis")
    strategies = pytest.importorskip("hypothesis.strategies")

    @hypothesis.given(
        strategies.decimals(allow_nan=False, allow_infinity=False),
        strategies.decimals(allow_nan=False, allow_infinity=False),
    )
    @hypothesis.settings(max_examples=500, deadline=None)
    def order_is_kept(a: Decimal, b: Decimal) -> None:
        assert (a < b) == (encode_decimal(a) < encode_decimal(b))
        assert (a == b) == (encode_decimal(a) == encode_decimal(b))

    order_is_kept()


def test_json_numbers_become_exact_decimals():
    # Given JSON numbers as the parsers give them
    # When they are read as decimals
    # Then floats keep their short form and non-numbers are refused
    assert to_decimal(6.3) == Decimal("6.3")  # the short repr, not the binary expansion
    assert to_decimal(Decimal("1.50")) == Decimal("1.50")
    assert to_decimal(7) == Decimal(7)
    assert to_decimal(True) is None
    assert to_decimal(float("nan")) is None
    assert to_decimal("abc") is None


def test_implicit_precision_is_half_a_unit_of_the_last_digit():
    # Given decimals written with different precision
    # When their implicit ranges are taken
    # Then each spans half a unit of its last digit either side
    assert precision_range(Decimal("100")) == (Decimal("99.5"), Decimal("100.5"))
    assert precision_range(Decimal("100.00")) == (Decimal("99.995"), Decimal("100.005"))
    assert precision_range(Decimal("1e2")) == (Decimal("50"), Decimal("150"))


def test_instants_are_fixed_width_utc_with_microseconds():
    # Given instants in several zones, including naive ones
    moment = datetime(2020, 3, 4, 10, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    # Then they are written in UTC, always 27 characters
    assert encode_instant(moment) == "2020-03-04T09:00:00.000005Z"
    assert encode_instant(datetime(5, 1, 1)) == "0005-01-01T00:00:00.000000Z"
    assert len(INSTANT_MIN) == len(INSTANT_MAX) == 27
    assert decode_instant("2020-03-04T09:00:00.000005Z") == moment


def test_instant_encoding_preserves_chronological_order():
    # Given random moments over two millennia in random time zones
    rng = random.Random(7)
    moments = [
        datetime(1000, 1, 1, tzinfo=UTC)
        + timedelta(seconds=rng.randint(0, 10**11), microseconds=rng.randint(0, 999999))
        for _ in range(2000)
    ]
    zoned = [m.astimezone(timezone(timedelta(minutes=rng.randint(-720, 720)))) for m in moments]
    # Then sorting by encoding is sorting by time
    assert sorted(zoned, key=encode_instant) == sorted(zoned)


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("2020", "2020-01-01T00:00:00.000000Z", "2020-12-31T23:59:59.999999Z"),
        ("2020-02", "2020-02-01T00:00:00.000000Z", "2020-02-29T23:59:59.999999Z"),
        ("2021-02", "2021-02-01T00:00:00.000000Z", "2021-02-28T23:59:59.999999Z"),
        ("2020-03-04", "2020-03-04T00:00:00.000000Z", "2020-03-04T23:59:59.999999Z"),
        ("2020-03-04T10:15", "2020-03-04T10:15:00.000000Z", "2020-03-04T10:15:59.999999Z"),
        ("2020-03-04T10:15:30Z", "2020-03-04T10:15:30.000000Z", "2020-03-04T10:15:30.999999Z"),
        ("2020-03-04T10:15:30.5+01:00", "2020-03-04T09:15:30.500000Z", "2020-03-04T09:15:30.599999Z"),
        ("2020-03-04T10:15:30.123456789-05:00", "2020-03-04T15:15:30.123456Z", "2020-03-04T15:15:30.123456Z"),
        # A dateTime without a timezone is taken as UTC.
        ("2020-03-04T10:15:30", "2020-03-04T10:15:30.000000Z", "2020-03-04T10:15:30.999999Z"),
    ],
)
def test_dates_are_ranges_by_precision(value: str, low: str, high: str):
    # Given a FHIR date, dateTime or instant
    # When its range is taken
    # Then it covers exactly its precision, in UTC
    assert date_range(value) == (low, high)


@pytest.mark.parametrize(
    "value", ["", "20", "2020-13", "2020-02-30", "2020-01-01T25:00", "2020-01-01T10:00+15:00", "tomorrow"]
)
def test_invalid_dates_are_refused(value: str):
    # Given text that is not a FHIR date
    # When it is parsed
    # Then a ValueError is raised
    with pytest.raises(ValueError):
        parse_date_range(value)


def test_offsets_at_the_ends_of_time_are_refused_not_crashed():
    # Given a dateTime that its offset pushes before year 1
    # When it is parsed
    # Then a ValueError, not an OverflowError, is raised
    with pytest.raises(ValueError):
        parse_date_range("0001-01-01T00:00:00+01:00")


def test_periods_span_start_low_to_end_high_with_open_ends():
    # Given Periods closed, open and backwards
    # When their ranges are taken
    # Then open ends reach the ends of time and backwards ones are not indexable
    assert period_range({"start": "2020-01", "end": "2020-02"}) == (
        "2020-01-01T00:00:00.000000Z",
        "2020-02-29T23:59:59.999999Z",
    )
    assert period_range({"start": "2020"}) == ("2020-01-01T00:00:00.000000Z", INSTANT_MAX)
    assert period_range({"end": "2020"}) == (INSTANT_MIN, "2020-12-31T23:59:59.999999Z")
    assert period_range({}) is None
    assert period_range({"start": "2021", "end": "2020"}) is None  # backwards: not indexable


def test_timings_span_their_outer_limits():
    # Given Timings with events and bounds
    # When their ranges are taken
    # Then they span the earliest to the latest limit
    timing = {"event": ["2020-05-01", "2020-03-01T10:00:00Z"], "repeat": {"boundsPeriod": {"end": "2020-06"}}}
    assert timing_range(timing) == (INSTANT_MIN, "2020-06-30T23:59:59.999999Z")
    assert timing_range({"event": ["2020-05-01", "2020-03-01"]}) == (
        "2020-03-01T00:00:00.000000Z",
        "2020-05-01T23:59:59.999999Z",
    )
    assert timing_range({"repeat": {"frequency": 2}}) is None


def test_strings_are_case_folded_accent_free_and_whitespace_collapsed():
    # Given strings with case, accents, odd spacing and compatibility forms
    # When they are normalised
    # Then they compare as a user would expect
    assert normalize_string("  Bénédicte\tdu   MARCHÉ ") == "benedicte du marche"
    assert normalize_string("Straße") == "strasse"
    assert normalize_string("\uff26\uff55\uff4c\uff4c") == "full"  # compatibility forms fold too
    assert normalize_string("\u00c5ngstr\u00f6m") == normalize_string("A\u030angstro\u0308m")
