"""FHIR date, dateTime and instant values: calendar checks and R4 (FHIRPath) ordering.

The regular expressions of the spec accept ``2023-02-30``; :func:`is_real_date` rejects it. The
ordering follows FHIRPath as R4's invariants (per-1) use it: two values are compared component by
component up to the precision they share; when they are equal that far and their precisions differ,
the result is *unknown* (``None``), which makes an R4 invariant such as ``start <= end`` fail.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

_PATTERN: Final = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2}(?:\.\d+)?)"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,
)
PRECISION_NAMES: Final = ("year", "month", "day", "second")


@dataclass(frozen=True, slots=True)
class FhirTemporal:
    """A parsed date/dateTime/instant. ``precision``: 1 year, 2 month, 3 day, 4 time of day."""

    year: int
    month: int
    day: int
    precision: int
    instant: datetime | None  # UTC, when a time of day (with its offset) is given
    fraction: Decimal  # sub-second part of an instant

    @property
    def precision_name(self) -> str:
        return PRECISION_NAMES[self.precision - 1]


def parse(value: str) -> FhirTemporal | None:
    """The value parsed, or None if it is not a date/dateTime/instant on the real calendar."""
    match = _PATTERN.fullmatch(value)
    if match is None:
        return None
    year = int(match["year"])
    month = int(match["month"] or 1)
    day = int(match["day"] or 1)
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(max(year, 1), month)[1]:
        return None
    if match["day"] is None:
        return FhirTemporal(year, month, day, 2 if match["month"] else 1, None, Decimal(0))
    if match["hour"] is None:
        return FhirTemporal(year, month, day, 3, None, Decimal(0))
    if match["tz"] is None:
        return None
    seconds = Decimal(match["second"])
    whole = int(seconds)
    hour, minute = int(match["hour"]), int(match["minute"])
    if hour > 23 or minute > 59 or whole > 60:
        return None
    leap = whole == 60  # a leap second: order it as the last instant of that minute
    offset = timedelta(0)
    if match["tz"] != "Z":
        sign = 1 if match["tz"][0] == "+" else -1
        offset = sign * timedelta(hours=int(match["tz"][1:3]), minutes=int(match["tz"][4:6]))
    try:
        moment = datetime(year, month, day, hour, minute, 59 if leap else whole, tzinfo=UTC) - offset
    except (ValueError, OverflowError):
        return None
    return FhirTemporal(year, month, day, 4, moment, seconds - whole + (1 if leap else 0))


def is_real_date(value: str) -> bool:
    return parse(value) is not None


def compare(a: FhirTemporal, b: FhirTemporal) -> int | None:
    """-1, 0 or 1 as FHIRPath orders ``a`` and ``b``; None when FHIRPath cannot tell."""
    if a.instant is not None and b.instant is not None:
        left, right = (a.instant, a.fraction), (b.instant, b.fraction)
        return (left > right) - (left < right)
    for x, y, level in ((a.year, b.year, 1), (a.month, b.month, 2), (a.day, b.day, 3)):
        if level > min(a.precision, b.precision):
            break
        if x != y:
            return -1 if x < y else 1
    return 0 if a.precision == b.precision else None
