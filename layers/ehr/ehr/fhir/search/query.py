"""Parse a FHIR search query string into a typed ``SearchQuery``.

Input is what a URL's query string gives: ``Mapping[str, Sequence[str]]`` (a name may repeat).
Repeating a parameter ANDs its clauses; a comma inside one value ORs values; ``\\,``, ``\\|``,
``\\$`` and ``\\\\`` escape those characters. Malformed input raises ``invalid(...)`` (HTTP 400)
with ``expression=[<the query parameter name>]``; parameter names this server does not know (or
does not support: composite, special, ``_has``, ``_text`` …) are collected in
``SearchQuery.unknown_params`` so that the caller decides between lenient and strict handling.
``_format`` and ``_pretty`` are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Final, Literal, cast

from ehr.fhir.outcome import invalid
from ehr.fhir.search.definitions import SearchParameter, resource_types, search_parameters
from ehr.fhir.search.encoding import (
    INSTANT_MAX,
    INSTANT_MIN,
    encode_decimal,
    encode_instant,
    normalize_string,
    parse_date_range,
    precision_range,
)
from ehr.fhir.search.extract import IDENTIFIER_PREFIX, reference_key

DEFAULT_COUNT: Final = 20
MAX_COUNT: Final = 1000

Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
PREFIXES: Final[frozenset[str]] = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
SUMMARY_VALUES: Final[frozenset[str]] = frozenset({"count", "true", "false", "text", "data"})
TOTAL_VALUES: Final[frozenset[str]] = frozenset({"none", "estimate", "accurate"})
SORTABLE_TYPES: Final[frozenset[str]] = frozenset({"date", "string", "number", "quantity", "token"})
IGNORED_PARAMS: Final[frozenset[str]] = frozenset({"_format", "_pretty"})

# Modifiers this engine implements, per parameter type (``:missing`` applies to every type;
# ``:[Type]`` on references is checked against the parameter's targets).
MODIFIERS: Final[Mapping[str, frozenset[str]]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"not", "text", "missing"}),
    "reference": frozenset({"identifier", "missing"}),
    "uri": frozenset({"above", "below", "missing"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
}
# Spec modifiers known but not implemented (answered with a clear 400, not "unknown").
UNSUPPORTED_MODIFIERS: Final[frozenset[str]] = frozenset(
    {"in", "not-in", "of-type", "above", "below", "type"}
)

_ESCAPE: Final = re.compile(r"\\([\\,|$])")
_ELEMENT: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*(\[x\])?$")
_RESOURCE_TYPE: Final = re.compile(r"^[A-Z][A-Za-z]+$")
_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_STRING_MAX: Final = "\U0010ffff"  # the largest code point: prefix + this bounds a prefix range
_AP_MIN_DATE_TOLERANCE: Final = timedelta(days=1)


@dataclass(frozen=True)
class SearchValue:
    """One OR'ed value of a clause, parsed for its parameter's type.

    Which fields are set depends on the type:

    - token: ``system`` (None: not given; "": explicitly no system, ``|code``) and ``code``;
      ``:text`` puts the normalised text in ``text``.
    - string: ``text`` (normalised) and ``code`` (as given, for ``:exact``).
    - date / number / quantity: ``prefix`` and the encoded ``low``/``high`` bounds (inclusive;
      for number and quantity ``eq``/``ne`` the high bound is exclusive: implicit precision);
      quantity also ``system``/``code`` (``system`` None with a ``code``: ``||code``).
    - reference: ``keys``: the index keys any of which matches (``Type/id`` per target type for
      a bare id, ``identifier:system|value`` for ``:identifier``).
    - uri: ``code``.
    - ``:missing``: ``missing``.
    """

    raw: str
    prefix: Prefix = "eq"
    system: str | None = None
    code: str = ""
    text: str = ""
    low: str = ""
    high: str = ""
    keys: tuple[str, ...] = ()
    missing: bool | None = None


@dataclass(frozen=True)
class SearchClause:
    """One query parameter occurrence: the OR of its values, for one search parameter."""

    param: SearchParameter
    modifier: str | None
    values: tuple[SearchValue, ...]
    chain: Chain | None = None
    name: str = ""  # the query parameter as given ("subject:Patient.name:exact")


@dataclass(frozen=True)
class Chain:
    """``subject:Patient.name=x``: ``clause`` runs against each of ``target_types``.

    The caller searches ``target_types`` with ``clause`` and then replaces the chained clause
    with ``resolve_chain(outer, found_references)``. ``clause.param`` comes from the first target
    type; code and type are the same on every listed target.
    """

    target_types: tuple[str, ...]
    clause: SearchClause


@dataclass(frozen=True)
class Include:
    """``_include`` / ``_revinclude`` = ``source_type:param[:target_type]`` (``*``: param None)."""

    source_type: str
    param: str | None
    target_type: str | None = None
    iterate: bool = False


@dataclass(frozen=True)
class SortKey:
    param: SearchParameter
    descending: bool = False


@dataclass(frozen=True)
class SearchQuery:
    resource_type: str
    clauses: tuple[SearchClause, ...] = ()
    count: int = DEFAULT_COUNT
    sort: tuple[SortKey, ...] = ()
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    summary: str | None = None
    total: str | None = None
    elements: tuple[str, ...] = ()
    unknown_params: tuple[str, ...] = ()


# --- escaping -------------------------------------------------------------------------------


def split_escaped(text: str, separator: str) -> list[str]:
    """Split on ``separator`` where it is not escaped by a backslash; escapes are kept."""
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    return _ESCAPE.sub(r"\1", text)


# --- values ---------------------------------------------------------------------------------


def _split_prefix(raw: str, name: str) -> tuple[Prefix, str]:
    if raw[:2].isalpha():
        prefix = raw[:2]
        if prefix not in PREFIXES:
            raise invalid(f"Unknown search prefix '{prefix}' in '{raw}'.", expression=[name])
        return cast(Prefix, prefix), raw[2:]
    return "eq", raw


def _date_value(raw: str, name: str, now: datetime) -> SearchValue:
    prefix, text = _split_prefix(unescape(raw), name)
    try:
        low, high = parse_date_range(text)
    except ValueError:
        raise invalid(f"'{text}' is not a valid FHIR date or dateTime.", expression=[name]) from None
    if prefix == "ap":
        tolerance = max(abs(now - low) / 10, _AP_MIN_DATE_TOLERANCE)
        low_text = _shifted(low, -tolerance, INSTANT_MIN)
        high_text = _shifted(high, tolerance, INSTANT_MAX)
    else:
        low_text, high_text = encode_instant(low), encode_instant(high)
    return SearchValue(raw=raw, prefix=prefix, low=low_text, high=high_text)


def _shifted(moment: datetime, delta: timedelta, limit: str) -> str:
    try:
        return encode_instant(moment + delta)
    except OverflowError:
        return limit


def _number(text: str, raw: str, name: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise invalid(f"'{raw}' is not a valid number.", expression=[name]) from None
    if not number.is_finite():
        raise invalid(f"'{raw}' is not a valid number.", expression=[name])
    return number


def _number_bounds(prefix: Prefix, number: Decimal) -> tuple[str, str]:
    if prefix in ("eq", "ne"):
        low, high = precision_range(number)
    elif prefix == "ap":
        spread = abs(number) / 10
        low, high = (number - spread, number + spread) if spread else precision_range(number)
    else:
        low = high = number
    return encode_decimal(low), encode_decimal(high)


def _number_value(raw: str, name: str) -> SearchValue:
    prefix, text = _split_prefix(unescape(raw), name)
    low, high = _number_bounds(prefix, _number(text, raw, name))
    return SearchValue(raw=raw, prefix=prefix, low=low, high=high)


def _quantity_value(raw: str, name: str) -> SearchValue:
    parts = [unescape(p) for p in split_escaped(raw, "|")]
    if len(parts) not in (1, 3):
        raise invalid(
            f"'{raw}' is not a quantity: use number, number|system|code or number||code.", expression=[name]
        )
    prefix, text = _split_prefix(parts[0], name)
    low, high = _number_bounds(prefix, _number(text, raw, name))
    system: str | None = None
    code = ""
    if len(parts) == 3:
        system, code = parts[1] or None, parts[2]
        if system and not code:
            raise invalid(f"'{raw}' names a unit system without a unit code.", expression=[name])
    return SearchValue(raw=raw, prefix=prefix, system=system, code=code, low=low, high=high)


def _token_value(raw: str, name: str, modifier: str | None) -> SearchValue:
    if modifier == "text":
        text = normalize_string(unescape(raw))
        return SearchValue(raw=raw, code=text, text=text)
    parts = split_escaped(raw, "|")
    if len(parts) > 2:
        raise invalid(f"'{raw}' is not a token: use code, system|code, |code or system|.", expression=[name])
    if len(parts) == 1:
        return SearchValue(raw=raw, code=unescape(parts[0]))
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system and not code:
        raise invalid("'|' alone is not a token.", expression=[name])
    return SearchValue(raw=raw, system=system, code=code)


def _string_value(raw: str) -> SearchValue:
    text = unescape(raw)
    return SearchValue(raw=raw, code=text, text=normalize_string(text))


def _reference_value(raw: str, name: str, param: SearchParameter, modifier: str | None) -> SearchValue:
    text = unescape(raw)
    if modifier == "identifier":
        parts = [unescape(p) for p in split_escaped(raw, "|")]
        if len(parts) == 1 and parts[0]:
            return SearchValue(raw=raw, code=parts[0], keys=(f"{IDENTIFIER_PREFIX}{parts[0]}",))
        if len(parts) == 2 and parts[1]:
            system, value = parts
            key = f"{IDENTIFIER_PREFIX}{system}|{value}" if system else f"{IDENTIFIER_PREFIX}{value}"
            return SearchValue(raw=raw, system=system, code=value, keys=(key,))
        raise invalid(f"'{raw}' is not an identifier: use system|value or value.", expression=[name])
    targets = (modifier,) if modifier is not None else param.targets
    if _ID.match(text):  # a bare id: any of the target types
        if not targets:
            raise invalid(f"'{text}' needs a resource type: use Type/id.", expression=[name])
        return SearchValue(raw=raw, code=text, keys=tuple(f"{t}/{text}" for t in targets))
    if "://" in text or text.startswith(("urn:", "#")):
        if modifier is not None:
            raise invalid(f"':{modifier}' needs an id or {modifier}/id, not '{text}'.", expression=[name])
        return SearchValue(raw=raw, code=text, keys=(text,))
    literal = reference_key(text)
    kind = literal.split("/", 1)[0] if literal is not None and "/" in literal else None
    if literal is None or kind is None or not _RESOURCE_TYPE.match(kind) or "/" in literal[len(kind) + 1 :]:
        raise invalid(f"'{text}' is not a reference: use Type/id, an id or a URL.", expression=[name])
    if targets and kind not in targets:
        raise invalid(f"'{name}' cannot refer to a {kind}.", expression=[name])
    return SearchValue(raw=raw, code=text, keys=(literal,))


def _missing_value(raw: str, name: str) -> SearchValue:
    text = unescape(raw)
    if text not in ("true", "false"):
        raise invalid(f"':missing' takes true or false, not '{text}'.", expression=[name])
    return SearchValue(raw=raw, missing=text == "true")


def _parse_value(
    param: SearchParameter, modifier: str | None, raw: str, name: str, now: datetime
) -> SearchValue:
    if modifier == "missing":
        return _missing_value(raw, name)
    if param.type == "token":
        return _token_value(raw, name, modifier)
    if param.type == "string":
        return _string_value(raw)
    if param.type == "date":
        return _date_value(raw, name, now)
    if param.type == "number":
        return _number_value(raw, name)
    if param.type == "quantity":
        return _quantity_value(raw, name)
    if param.type == "reference":
        return _reference_value(raw, name, param, modifier)
    if param.type == "uri":
        text = unescape(raw)
        return SearchValue(raw=raw, code=text, keys=(text,))
    raise invalid(f"Search parameter '{param.code}' is not supported.", expression=[name])


# --- clauses --------------------------------------------------------------------------------


def _check_modifier(param: SearchParameter, modifier: str | None, name: str) -> None:
    if modifier is None:
        return
    if param.type == "reference" and modifier in param.targets:
        return
    if modifier in MODIFIERS.get(param.type, frozenset()):
        return
    if modifier in UNSUPPORTED_MODIFIERS:
        raise invalid(
            f"The ':{modifier}' modifier is not supported on '{param.code}' ({param.type}).",
            expression=[name],
        )
    if param.type == "reference" and _RESOURCE_TYPE.match(modifier):
        raise invalid(f"'{param.code}' cannot refer to a {modifier}.", expression=[name])
    raise invalid(
        f"Unknown modifier ':{modifier}' for the {param.type} parameter '{param.code}'.", expression=[name]
    )


def _values(
    param: SearchParameter, modifier: str | None, raw: str, name: str, now: datetime
) -> tuple[SearchValue, ...]:
    parts = [part for part in split_escaped(raw, ",") if part != ""]
    return tuple(_parse_value(param, modifier, part, name, now) for part in parts)


def _clause(resource_type: str, name: str, raw: str, now: datetime) -> SearchClause | None:
    """The clause of one ``name=raw`` (None: the name is unknown here or not supported)."""
    head, dot, tail = name.partition(".")
    code, _, modifier_text = head.partition(":")
    param = search_parameters(resource_type).get(code)
    if param is None or not param.supported:
        return None
    modifier = modifier_text or None
    if dot:
        return _chained_clause(param, modifier, tail, raw, name=name, now=now)
    _check_modifier(param, modifier, name)
    values = _values(param, modifier, raw, name, now)
    if not values:
        return None  # an empty value is ignored, as if the parameter were absent
    return SearchClause(param=param, modifier=modifier, values=values, name=name)


def _chained_clause(
    param: SearchParameter, modifier: str | None, tail: str, raw: str, *, name: str, now: datetime
) -> SearchClause:
    if param.type != "reference":
        raise invalid(
            f"'{param.code}' is not a reference parameter: it cannot be chained.", expression=[name]
        )
    if modifier is not None and modifier not in param.targets:
        if modifier in MODIFIERS["reference"] or not _RESOURCE_TYPE.match(modifier):
            raise invalid(f"':{modifier}' cannot be used in a chain.", expression=[name])
        raise invalid(f"'{param.code}' cannot refer to a {modifier}.", expression=[name])
    if not tail or "." in tail:
        raise invalid("Chains deeper than one level are not supported.", expression=[name])
    chained_code, _, chained_modifier_text = tail.partition(":")
    chained_modifier = chained_modifier_text or None
    candidates = (modifier,) if modifier is not None else param.targets
    found: list[tuple[str, SearchParameter]] = []
    for target in sorted(candidates):
        target_param = search_parameters(target).get(chained_code)
        if target_param is not None and target_param.supported:
            found.append((target, target_param))
    if not found:
        raise invalid(
            f"'{chained_code}' is not a supported search parameter of {', '.join(sorted(candidates))}.",
            expression=[name],
        )
    first = found[0][1]
    target_types = tuple(t for t, p in found if p.type == first.type)
    _check_modifier(first, chained_modifier, name)
    values = _values(first, chained_modifier, raw, name, now)
    if not values:
        raise invalid("A chained parameter needs a value.", expression=[name])
    inner = SearchClause(param=first, modifier=chained_modifier, values=values, name=tail)
    return SearchClause(
        param=param, modifier=modifier, values=(), chain=Chain(target_types, inner), name=name
    )


def resolve_chain(clause: SearchClause, references: Iterable[str]) -> SearchClause:
    """The chained ``clause`` as a plain reference clause on the references the chain found.

    ``references`` are ``Type/id`` of the target resources that matched ``clause.chain.clause``;
    with none, the result matches nothing (and ``plan.key_ranges`` gives no ranges).
    """
    keys = tuple(dict.fromkeys(references))
    values = tuple(SearchValue(raw=key, code=key, keys=(key,)) for key in keys)
    return replace(clause, modifier=None, values=values, chain=None)


# --- result parameters ----------------------------------------------------------------------


def _single(name: str, values: Sequence[str]) -> str:
    if len(values) != 1:
        raise invalid(f"'{name}' may be given only once.", expression=[name])
    return values[0]


def _count(values: Sequence[str]) -> int:
    text = _single("_count", values).strip()
    if not (text.isascii() and text.isdigit()):
        raise invalid(f"_count must be a whole number from 0 to {MAX_COUNT}.", expression=["_count"])
    count = int(text)
    if count > MAX_COUNT:
        raise invalid(f"_count must be a whole number from 0 to {MAX_COUNT}.", expression=["_count"])
    return count


def _sort(resource_type: str, values: Sequence[str]) -> tuple[SortKey, ...]:
    keys: list[SortKey] = []
    for item in _single("_sort", values).split(","):
        text = item.strip()
        if not text:
            continue
        descending = text.startswith("-")
        code = text[1:] if descending else text
        param = search_parameters(resource_type).get(code)
        if param is None:
            raise invalid(f"Cannot sort by '{code}': no such search parameter.", expression=["_sort"])
        if param.type not in SORTABLE_TYPES:
            raise invalid(f"Cannot sort by '{code}' ({param.type} parameter).", expression=["_sort"])
        keys.append(SortKey(param, descending))
    return tuple(keys)


def _include(resource_type: str, name: str, raw: str, reverse: bool, iterate: bool) -> Include:
    if raw == "*":
        return Include(resource_type, None, None, iterate)
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise invalid(f"'{raw}' is not an include: use Type:param[:targetType] or *.", expression=[name])
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in resource_types():
        raise invalid(f"Unknown resource type '{source}' in '{raw}'.", expression=[name])
    if code == "*":
        if target is not None:
            raise invalid(f"'{raw}' is not an include: '*' takes no target type.", expression=[name])
        return Include(source, None, None, iterate)
    param = search_parameters(source).get(code)
    if param is None or param.type != "reference":
        raise invalid(f"'{code}' is not a reference search parameter of {source}.", expression=[name])
    if target is not None and target not in param.targets:
        raise invalid(f"'{source}:{code}' cannot refer to a {target}.", expression=[name])
    if not iterate:
        if not reverse and source != resource_type:
            raise invalid(f"'{raw}' must start with {resource_type} (or use :iterate).", expression=[name])
        if reverse and resource_type not in param.targets:
            raise invalid(f"'{source}:{code}' never refers to a {resource_type}.", expression=[name])
    return Include(source, code, target, iterate)


def _elements(values: Sequence[str]) -> tuple[str, ...]:
    elements: list[str] = []
    for value in values:
        for item in value.split(","):
            text = item.strip()
            if not text:
                continue
            if not _ELEMENT.match(text):
                raise invalid(f"'{text}' is not an element name.", expression=["_elements"])
            elements.append(text)
    return tuple(dict.fromkeys(elements))


def _choice(name: str, values: Sequence[str], allowed: frozenset[str]) -> str:
    value = _single(name, values)
    if value not in allowed:
        raise invalid(f"{name} must be one of {', '.join(sorted(allowed))}.", expression=[name])
    return value


# --- the query ------------------------------------------------------------------------------


def parse_query(
    resource_type: str, params: Mapping[str, Sequence[str]], *, now: datetime | None = None
) -> SearchQuery:
    """The typed search of ``resource_type`` described by the query parameters ``params``.

    ``now`` (default: the current time) anchors the ``ap`` prefix on dates.
    """
    if resource_type not in resource_types():
        raise invalid(f"Unknown resource type '{resource_type}'.")
    moment = now if now is not None else datetime.now(UTC)
    clauses: list[SearchClause] = []
    includes: list[Include] = []
    revincludes: list[Include] = []
    unknown: list[str] = []
    count = DEFAULT_COUNT
    sort: tuple[SortKey, ...] = ()
    summary: str | None = None
    total: str | None = None
    elements: tuple[str, ...] = ()
    for name, given in params.items():
        values: Sequence[str] = [given] if isinstance(given, str) else given  # never iterate a str
        base = name.split(":", 1)[0]
        if base in IGNORED_PARAMS:
            continue
        if base in ("_include", "_revinclude"):
            modifier = name[len(base) + 1 :] if ":" in name else ""
            if modifier not in ("", "iterate", "recurse"):
                raise invalid(f"Unknown modifier ':{modifier}' on {base}.", expression=[name])
            target = revincludes if base == "_revinclude" else includes
            for value in values:
                target.append(_include(resource_type, name, value, base == "_revinclude", bool(modifier)))
            continue
        if base in ("_count", "_sort", "_summary", "_total", "_elements") and name != base:
            raise invalid(f"'{base}' takes no modifier.", expression=[name])
        if name == "_count":
            count = _count(values)
        elif name == "_sort":
            sort = _sort(resource_type, values)
        elif name == "_summary":
            summary = _choice(name, values, SUMMARY_VALUES)
        elif name == "_total":
            total = _choice(name, values, TOTAL_VALUES)
        elif name == "_elements":
            elements = _elements(values)
        else:
            for value in values:
                clause = _clause(resource_type, name, value, moment)
                if clause is not None:
                    clauses.append(clause)
                elif not _known_supported(resource_type, name):
                    unknown.append(name)
    return SearchQuery(
        resource_type=resource_type,
        clauses=tuple(clauses),
        count=count,
        sort=sort,
        includes=tuple(includes),
        revincludes=tuple(revincludes),
        summary=summary,
        total=total,
        elements=elements,
        unknown_params=tuple(dict.fromkeys(unknown)),
    )


def _known_supported(resource_type: str, name: str) -> bool:
    code = name.split(".", 1)[0].split(":", 1)[0]
    param = search_parameters(resource_type).get(code)
    return param is not None and param.supported
