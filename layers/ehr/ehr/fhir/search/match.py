"""FHIR search semantics of one clause against a resource's index terms.

``matches(clause, terms)`` is true when the resource whose terms are given satisfies the clause
(the OR of its values). ``terms`` may hold every term of the resource: only those of the clause's
parameter count, and end terms (``>``-keyed, index-only) are ignored. Chained clauses must be
resolved by the caller first (``query.resolve_chain``).

Ordered values compare encoded strings (order-preserving, see ``encoding``); a target value is
the range ``[sort, high]`` (a point when they are equal); the prefixes follow the R4 spec:
``eq`` the target range lies inside the value's range, ``gt`` the target reaches above it,
``lt`` below it, ``sa`` starts after, ``eb`` ends before, ``ap`` overlaps the widened value,
``ne`` not ``eq``. ``ge``/``le`` are "reaches into or above/below the value" (target high end >=
value low end, target low end <= value high end): the spec's "gt or contained" would make a
period running through 30 June fail ``ge2020-06-30``; for points both readings agree. For number
and quantity ``eq``/``ne`` the value's implicit-precision range is half-open (``100`` is
[99.5, 100.5)).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from ehr.fhir.search.encoding import normalize_string
from ehr.fhir.search.extract import TEXT_SEPARATOR, IndexTerm
from ehr.fhir.search.query import SearchClause, SearchValue

_NON_WORD: Final = re.compile(r"[^\w]+")


def matches(clause: SearchClause, terms: Sequence[IndexTerm]) -> bool:
    """Whether a resource with these ``terms`` satisfies ``clause``."""
    if clause.chain is not None:
        raise ValueError("a chained clause must be resolved first (query.resolve_chain)")
    own = [t for t in terms if t.param == clause.param.code and not t.is_end]
    if clause.modifier == "missing":
        return any(value.missing == (not own) for value in clause.values)
    if clause.modifier == "not":
        return not any(_token(value, own) for value in clause.values)
    return any(_value_matches(clause, value, own) for value in clause.values)


def _value_matches(clause: SearchClause, value: SearchValue, own: Sequence[IndexTerm]) -> bool:
    kind = clause.param.type
    modifier = clause.modifier
    if kind == "token":
        return _text(value.text, own) if modifier == "text" else _token(value, own)
    if kind == "string":
        return _string(value, own, modifier)
    if kind in ("date", "number"):
        return any(_ordered(value, t, half_open=kind == "number") for t in own)
    if kind == "quantity":
        return any(_ordered(value, t, half_open=True) for t in _quantity_terms(value, own))
    if kind == "reference":
        keys = set(value.keys)
        return any(t.key in keys for t in own)
    if kind == "uri":
        if modifier == "below":
            return any(t.key.startswith(value.code) for t in own)
        if modifier == "above":
            return any(value.code.startswith(t.key) for t in own)
        return any(t.key == value.code for t in own)
    return False


def _token(value: SearchValue, own: Sequence[IndexTerm]) -> bool:
    code, system = value.code, value.system
    if system is None:
        return any(t.key == code for t in own)
    if not code:
        return any(t.key.startswith(f"{system}|") for t in own)
    if system:
        return any(t.key == f"{system}|{code}" for t in own)
    # ``|code``: a Coding/Identifier without a system (``|code`` term) or a plain code/boolean
    # value (a ``code`` term with no ``system|code`` beside it).
    bare = f"|{code}"
    if any(t.key == bare for t in own):
        return True
    return any(t.key == code for t in own) and not any(t.key.endswith(bare) for t in own)


def _pieces(term: IndexTerm) -> list[str]:
    return [piece for piece in term.text.split(TEXT_SEPARATOR) if piece]


def _words(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", normalize_string(text)).split())


def _text(query: str, own: Sequence[IndexTerm]) -> bool:
    """Token ``:text``: the words searched start a run of words of a display or concept text."""
    needle = f" {_words(query)}"
    return any(f" {_words(piece)}".find(needle) >= 0 for t in own for piece in _pieces(t))


def _full_strings(term: IndexTerm) -> list[str]:
    """The whole normalised values of a string term (its sort value may have been cut)."""
    return [normalize_string(piece) for piece in _pieces(term)] or [term.sort]


def _string(value: SearchValue, own: Sequence[IndexTerm], modifier: str | None) -> bool:
    if modifier == "exact":
        return any(piece == value.code for t in own for piece in _pieces(t))
    if modifier == "contains":
        return any(value.text in full for t in own for full in _full_strings(t))
    return any(full.startswith(value.text) for t in own for full in _full_strings(t))


def _quantity_terms(value: SearchValue, own: Sequence[IndexTerm]) -> list[IndexTerm]:
    if value.system and value.code:
        key = f"{value.system}|{value.code}"
        return [t for t in own if t.key == key]
    if value.code:  # ``number||code``: the code or the unit, any system
        code = value.code
        return [t for t in own if (t.key and t.key.split("|", 1)[-1] == code) or code in _pieces(t)]
    return [t for t in own if t.key == ""]


def _ordered(value: SearchValue, term: IndexTerm, *, half_open: bool) -> bool:
    low, high, prefix = value.low, value.high, value.prefix
    target_low, target_high = term.sort, term.high or term.sort
    if half_open and prefix in ("eq", "ne"):
        inside = low <= target_low and target_high < high
    else:
        inside = low <= target_low and target_high <= high
    if prefix == "eq":
        return inside
    if prefix == "ne":
        return not inside
    if prefix == "gt":
        return target_high > high
    if prefix == "lt":
        return target_low < low
    if prefix == "ge":
        return target_high >= low  # reaches into or above the value
    if prefix == "le":
        return target_low <= high  # reaches into or below the value
    if prefix == "sa":
        return target_low > high
    if prefix == "eb":
        return target_high < low
    # ap: overlaps the widened value
    return target_low <= high and target_high >= low
