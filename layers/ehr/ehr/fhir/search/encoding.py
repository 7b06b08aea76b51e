"""Normalisation and order-preserving string encodings for the search index.

DynamoDB orders sort keys by their UTF-8 bytes, which for the strings below is the same as
Python's string order. Every encoding here keeps that order equal to the order of the values:

- ``encode_decimal``: any finite decimal (negative, zero, positive, any magnitude) to a string
  whose lexicographic order is numeric order. ``DECIMAL_MIN`` and ``DECIMAL_MAX`` sort below and
  above every encoded number (open ends of a Range).
- ``encode_instant``: a point in time to fixed-width UTC text with microseconds,
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; ``INSTANT_MIN``/``INSTANT_MAX`` are the ends of time.
- ``normalize_string``: case-folded, accents and other combining marks removed, whitespace
  collapsed: how string parameters are compared and prefix-searched.

FHIR date, dateTime and instant values are ranges by precision: ``2020`` is the whole year,
``2020-03`` the whole month, ``2020-03-04T10:00:00+01:00`` the whole second. ``date_range`` turns
a value into its inclusive ``[low, high]`` instants. A dateTime with a time but no timezone (not
valid FHIR, but common in search values) and every date without a time are taken as UTC.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Final

DECIMAL_MIN: Final = "0"  # below every encoded decimal (negatives start with "1")
DECIMAL_MAX: Final = "4"  # above every encoded decimal (positives start with "3")
INSTANT_MIN: Final = "0001-01-01T00:00:00.000000Z"
INSTANT_MAX: Final = "9999-12-31T23:59:59.999999Z"

_NEGATIVE: Final = "1"
_ZERO: Final = "2"
_POSITIVE: Final = "3"
_NEGATIVE_END: Final = "~"  # sorts after every digit: ends a negative's complemented mantissa
_COMPLEMENT: Final = str.maketrans("0123456789", "9876543210")

_DATE_TIME: Final = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_MICROSECOND: Final = timedelta(microseconds=1)
# Date ranges narrower than this (every dateTime, instant and full date) have no end term in the
# index: a query for values ending after X looks for low ends from X - NARROW_DATE_RANGE on.
NARROW_DATE_RANGE: Final = timedelta(days=1)


# --- numbers -------------------------------------------------------------------------------


def _encode_int(number: int) -> str:
    """Order-preserving text for any integer (used for decimal exponents).

    Non-negative: ``P`` + the digit count of the length + the length + the digits. Negative: ``N``
    + the same three parts with every digit complemented (9 - d), so larger magnitudes sort lower.
    """
    digits = str(abs(number))
    length = str(len(digits))
    if len(length) > 9:
        raise ValueError("integer too large to encode")
    if number >= 0:
        return f"P{len(length)}{length}{digits}"
    return f"N{9 - len(length)}{length.translate(_COMPLEMENT)}{digits.translate(_COMPLEMENT)}"


def encode_decimal(value: Decimal | int) -> str:
    """Order-preserving text for a finite decimal: ``a < b`` iff ``encode(a) < encode(b)``.

    The value is written as ``±0.d1d2…dn * 10^e`` with ``d1 != 0`` and no trailing zeros (so
    ``1.50`` and ``1.5`` encode alike): a sign character, then the exponent, then the digits;
    negatives complement exponent and digits and end with ``~`` so that a shorter mantissa
    (``-0.5``) sorts after a longer one that extends it (``-0.51``).
    """
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError("only finite numbers can be encoded")
    if number.is_zero():
        return _ZERO
    sign, digit_tuple, exponent = number.normalize().as_tuple()
    assert isinstance(exponent, int)  # finite
    digits = "".join(map(str, digit_tuple))
    magnitude = exponent + len(digits)  # value = 0.digits * 10^magnitude
    if not sign:
        return _POSITIVE + _encode_int(magnitude) + digits
    return _NEGATIVE + _encode_int(-magnitude) + digits.translate(_COMPLEMENT) + _NEGATIVE_END


def to_decimal(value: Any) -> Decimal | None:
    """A JSON number (``Decimal``, ``int`` or ``float``; never ``bool``) as a finite Decimal."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))  # the shortest text that round-trips, not the binary expansion
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
    else:
        return None
    return number if number.is_finite() else None


def precision_range(value: Decimal) -> tuple[Decimal, Decimal]:
    """The implicit-precision range ``[low, high)`` of a decimal: ±half a unit of its last digit.

    ``100`` -> [99.5, 100.5), ``100.00`` -> [99.995, 100.005), ``1e2`` -> [50, 150).
    """
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return value - half, value + half


# --- instants and date ranges -----------------------------------------------------------------


def encode_instant(moment: datetime) -> str:
    """Fixed-width UTC text with microseconds; a naive datetime is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )


def decode_instant(text: str) -> datetime:
    """The UTC datetime of an ``encode_instant`` string."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def shift_instant(text: str, delta: timedelta) -> str:
    """An encoded instant moved by ``delta``, clamped to ``INSTANT_MIN``/``INSTANT_MAX``."""
    try:
        return encode_instant(decode_instant(text) + delta)
    except OverflowError:
        return INSTANT_MIN if delta < timedelta(0) else INSTANT_MAX


def is_wide_date_range(low: str, high: str) -> bool:
    """Whether an encoded date range spans ``NARROW_DATE_RANGE`` or more (it gets an end term)."""
    if low[:10] == high[:10]:
        return False  # same day: narrow without parsing
    return decode_instant(high) - decode_instant(low) >= NARROW_DATE_RANGE


def parse_date_range(text: str) -> tuple[datetime, datetime]:
    """The inclusive UTC ``[low, high]`` a FHIR date/dateTime/instant covers by its precision.

    Raises ``ValueError`` for anything that is not such a value.
    """
    match = _DATE_TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a FHIR date or dateTime: {text!r}")
    parts = match.groupdict()
    try:
        year = int(parts["year"])
        month = int(parts["month"] or 1)
        day = int(parts["day"] or 1)
        hour = int(parts["hour"] or 0)
        minute = int(parts["minute"] or 0)
        second = int(parts["second"] or 0)
        fraction = parts["fraction"] or ""
        microsecond = int((fraction + "000000")[:6])
        zone = _zone(parts["zone"])
        low = datetime(year, month, day, hour, minute, second, microsecond, tzinfo=zone)
        if parts["month"] is None:
            high = low.replace(month=12, day=31, hour=23, minute=59, second=59, microsecond=999999)
        elif parts["day"] is None:
            last = calendar.monthrange(year, month)[1]
            high = low.replace(day=last, hour=23, minute=59, second=59, microsecond=999999)
        elif parts["hour"] is None:
            high = low.replace(hour=23, minute=59, second=59, microsecond=999999)
        elif parts["second"] is None:
            high = low.replace(second=59, microsecond=999999)
        elif len(fraction) < 6:
            high = low + timedelta(microseconds=10 ** (6 - len(fraction))) - _MICROSECOND
        else:
            high = low
        return low.astimezone(UTC), high.astimezone(UTC)
    except OverflowError as exc:  # year 1 or 9999 pushed out of range by the offset
        raise ValueError(f"date out of range: {text!r}") from exc


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"bad timezone offset {text!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def date_range(text: str) -> tuple[str, str]:
    """``parse_date_range`` with both ends encoded by ``encode_instant``."""
    low, high = parse_date_range(text)
    return encode_instant(low), encode_instant(high)


def period_range(period: Mapping[str, Any]) -> tuple[str, str] | None:
    """A Period as ``[start.low, end.high]``; an open end reaches the start or end of time."""
    start, end = period.get("start"), period.get("end")
    if not isinstance(start, str) and not isinstance(end, str):
        return None
    low = date_range(start)[0] if isinstance(start, str) else INSTANT_MIN
    high = date_range(end)[1] if isinstance(end, str) else INSTANT_MAX
    return (low, high) if low <= high else None


def timing_range(timing: Mapping[str, Any]) -> tuple[str, str] | None:
    """A Timing's outer limits: its earliest event or bound start to its latest event or bound end.

    As the spec says, the schedule itself (every second day, ...) is ignored.
    """
    ranges: list[tuple[str, str]] = []
    for event in timing.get("event") or ():
        if isinstance(event, str):
            ranges.append(date_range(event))
    repeat = timing.get("repeat")
    bounds = repeat.get("boundsPeriod") if isinstance(repeat, Mapping) else None
    if isinstance(bounds, Mapping):
        bound = period_range(bounds)
        if bound is not None:
            ranges.append(bound)
    if not ranges:
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


# --- strings --------------------------------------------------------------------------------


def normalize_string(text: str) -> str:
    """Case-folded, without accents or other combining marks, whitespace collapsed to one space."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(stripped.casefold().split())
