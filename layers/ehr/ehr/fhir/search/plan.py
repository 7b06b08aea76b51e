"""Which index ranges can drive a DynamoDB Query for a search clause.

``key_ranges(clause)`` gives the OR'ed ``KeyRange`` s whose index items hold every resource the
clause matches (a superset when ``exact`` is False: those candidates still need
``match.matches``), or None when the clause cannot drive a query (``:missing``, ``:not``,
``:contains``, ``:text``, ``ne``, token ``system|`` …): the store must then drive the search with
another clause and post-filter with ``matches``. An empty list means nothing can match.

A term is in a range when ``term.param == range.param``, ``term.key == range.key`` and
``sort_low <= term.sort <= sort_high`` (both inclusive; None is unbounded); ``KeyRange.contains``
says exactly that. Ranges are consistent with ``extract.index_terms``: a resource that matches a
plannable clause has a term inside one of the clause's ranges.

Ordered types (date, number, quantity) index a value's low end under the base key and, for a
wide range, its high end under ``>`` + key (``extract.END_PREFIX``). Date ranges narrower than
``encoding.NARROW_DATE_RANGE`` (N, one day) have no end term, so "high end >= X" also looks at
low ends from X - N (for numbers and quantities, whose points have no width, N is 0):

====== ================================= ==========================================
prefix matches (target [tl, th])          ranges
====== ================================= ==========================================
eq     low <= tl and th <= high           base [low, high]
gt     th > high                          base [high - N, ∞) + end [high, ∞)
ge     th >= low                          base [low - N, ∞) + end [low, ∞)
lt     tl < low                           base (-∞, low]
eb     th < low                           base (-∞, low]
le     tl <= high                         base (-∞, high]
sa     tl > high                          base [high, ∞)
ap     overlaps [low, high] (widened)     base [low - N, high] + end [low, ∞)
ne     not eq                             None
====== ================================= ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ehr.fhir.search.encoding import NARROW_DATE_RANGE, shift_instant
from ehr.fhir.search.extract import END_PREFIX, IndexTerm, cut_sort
from ehr.fhir.search.query import SearchClause, SearchValue

STRING_PREFIX_END: Final = "\U0010ffff"  # prefix + this is the inclusive top of a prefix range
_UNPLANNABLE_MODIFIERS: Final = frozenset({"missing", "not", "contains", "text", "above", "below"})


@dataclass(frozen=True)
class KeyRange:
    """Index items of ``param`` with partition value ``key`` and sort value in the bounds."""

    param: str
    key: str
    sort_low: str | None = None
    sort_high: str | None = None
    exact: bool = True  # False: the candidates still need ``matches``

    def contains(self, term: IndexTerm) -> bool:
        return (
            term.param == self.param
            and term.key == self.key
            and (self.sort_low is None or term.sort >= self.sort_low)
            and (self.sort_high is None or term.sort <= self.sort_high)
        )


def key_ranges(clause: SearchClause) -> list[KeyRange] | None:
    """The OR'ed ranges that find every match of ``clause`` (None: it cannot drive a query)."""
    if clause.chain is not None or clause.modifier in _UNPLANNABLE_MODIFIERS:
        return None
    ranges: list[KeyRange] = []
    for value in clause.values:
        found = _value_ranges(clause, value)
        if found is None:
            return None
        ranges.extend(found)
    return list(dict.fromkeys(ranges))


def _value_ranges(clause: SearchClause, value: SearchValue) -> list[KeyRange] | None:
    code = clause.param.code
    kind = clause.param.type
    if kind == "token":
        return _token_ranges(code, value)
    if kind == "string":
        return _string_ranges(code, value, exact=clause.modifier == "exact")
    if kind == "date":
        return _ordered_ranges(code, "", value, dates=True)
    if kind == "number":
        return _ordered_ranges(code, "", value)
    if kind == "quantity":
        key = f"{value.system}|{value.code}" if value.system and value.code else ""
        ranges = _ordered_ranges(code, key, value)
        if ranges is not None and value.code and not value.system:
            ranges = [KeyRange(r.param, r.key, r.sort_low, r.sort_high, exact=False) for r in ranges]
        return ranges
    if kind in ("reference", "uri"):
        return [KeyRange(code, key) for key in value.keys]
    return None


def _token_ranges(code: str, value: SearchValue) -> list[KeyRange] | None:
    if value.system is None:
        return [KeyRange(code, value.code)]
    if not value.code:
        return None  # ``system|``: any code of a system has no key of its own
    if value.system == "":
        return [KeyRange(code, value.code, exact=False)]  # ``|code``: the term must lack a system
    return [KeyRange(code, f"{value.system}|{value.code}")]


def _string_ranges(code: str, value: SearchValue, *, exact: bool) -> list[KeyRange]:
    text = cut_sort(value.text)
    truncated = text != value.text
    if exact:
        high = text + STRING_PREFIX_END if truncated else text
        return [KeyRange(code, "", text, high, exact=False)]
    return [KeyRange(code, "", text, text + STRING_PREFIX_END, exact=not truncated)]


def _ordered_ranges(code: str, key: str, value: SearchValue, *, dates: bool = False) -> list[KeyRange] | None:
    """Ranges for a prefix; ``dates``: narrow targets (no end term) are found by their low end."""
    low, high, end = value.low, value.high, END_PREFIX + key

    def reach(bound: str) -> str:  # the lowest low end of a narrow target whose high end >= bound
        return shift_instant(bound, -NARROW_DATE_RANGE) if dates else bound

    prefix = value.prefix
    if prefix == "eq":
        return [KeyRange(code, key, low, high, exact=False)]
    if prefix == "gt":
        return [
            KeyRange(code, key, reach(high), None, exact=False),
            KeyRange(code, end, high, None, exact=False),
        ]
    if prefix == "ge":
        return [
            KeyRange(code, key, reach(low), None, exact=False),
            KeyRange(code, end, low, None, exact=False),
        ]
    if prefix in ("lt", "eb"):
        return [KeyRange(code, key, None, low, exact=False)]
    if prefix == "le":
        return [KeyRange(code, key, None, high, exact=False)]
    if prefix == "sa":
        return [KeyRange(code, key, high, None, exact=False)]
    if prefix == "ap":
        return [
            KeyRange(code, key, reach(low), high, exact=False),
            KeyRange(code, end, low, None, exact=False),
        ]
    return None  # ne
