"""Index terms of a resource: what each search parameter's FHIRPath expression finds in it.

Each supported parameter's expression (from ``definitions``) is evaluated with ``fhirpathpy``
against the R4 model (which resolves choice types such as ``Observation.effective``) and the
values found become ``IndexTerm`` s, the rows the store writes as search-index items and the
input of ``match.matches``. Expressions are compiled once per expression text and cached.

``fhirpathpy`` has no ``resolve()``. The spec uses it in one shape only,
``X.subject.where(resolve() is Patient)``; that suffix is removed before compiling and the
references found are kept only when they point at the named type (``Patient/…`` or
``Reference.type``). Measured on Observation.patient: 15 µs per evaluation against 64 µs with a
``resolve()`` registered in fhirpathpy's user invocation table (which would also have to invent
typed resource nodes for ``is`` to work).

Bad data in a stored resource never raises here: a value that cannot be indexed is skipped.

No two terms of one resource share ``(param, key, sort)`` (one DynamoDB transaction cannot write
the same item twice): values that would are merged into one term, their texts joined with
``TEXT_SEPARATOR`` and the wider ``high`` kept.

Term shapes (``key`` goes in the index partition key, ``sort`` in its sort key):

========== ============================================================= =======================
type       key                                                           sort / high / text
========== ============================================================= =======================
token      ``system|code`` and ``code`` (``|code`` too when no system);   text: normalised
           Identifier ``system|value`` and ``value``; ContactPoint        display / CodeableConcept
           ``value``; boolean ``true``/``false``; a text-only concept:     text (for ``:text``)
           key "" (match-only)
string     ""                                                            sort: normalised value
                                                                         (truncated), text: original
date       "" (and ``>`` for the high end of ranges of a day or more)    sort: low, high: high
number     "" (and ``>``)                                                sort: low, high: high
quantity   "", ``system|code`` (``|code`` with no system) (and ``>`` +   sort: low, high: high,
           key)                                                          text: unit
reference  ``Type/id``, absolute URL, canonical (and without             -
           ``|version``); ``identifier:system|value``,
           ``identifier:value``
uri        the uri (and without ``|version``)                            -
========== ============================================================= =======================

``>``-keyed terms ("end terms") index the high end of a range (``sort`` = high) so that
``gt``/``ge``/``ap`` can find long periods whose low end is far before the searched value;
``match`` ignores them. Points (numbers, quantities) have none, and neither have date ranges
narrower than ``encoding.NARROW_DATE_RANGE`` (a day: every instant, dateTime and full date),
which ``plan`` finds from their low end instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from ehr.fhir.search.definitions import (
    SearchParameter,
    compartment_params,
    search_parameters,
    supported_parameters,
)
from ehr.fhir.search.encoding import (
    DECIMAL_MAX,
    DECIMAL_MIN,
    date_range,
    encode_decimal,
    is_wide_date_range,
    normalize_string,
    period_range,
    timing_range,
    to_decimal,
)

END_PREFIX: Final = ">"  # key prefix of the terms that index the high end of a range
IDENTIFIER_PREFIX: Final = "identifier:"  # key prefix of Reference.identifier terms
MAX_SORT_BYTES: Final = 512  # string sort values are cut to this many UTF-8 bytes (sort keys: 1024)
TEXT_SEPARATOR: Final = "\x1f"  # between the texts of values merged into one term
ISO_4217: Final = "urn:iso:std:iso:4217"

_OPTIONS: Final = {"returnRawData": True}
_RESOLVE_IS: Final = re.compile(r"^(?P<path>.+)\.where\(\s*resolve\(\)\s+is\s+(?P<type>[A-Z][A-Za-z]+)\s*\)$")
_FIRST_ELEMENT: Final = re.compile(r"^[A-Z][A-Za-z]*\.(?P<name>[a-z][A-Za-z0-9]*)")
_NOT_A_PLAIN_PATH: Final = ("exists(", "empty(", "not(", "iif(", " and ", " or ", " xor ", " implies ")
_RELATIVE: Final = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ABSOLUTE_TAIL: Final = re.compile(
    r"/(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)
_SYSTEM_TYPES: Final = {
    "System.String": "string",
    "System.Boolean": "boolean",
    "System.Decimal": "decimal",
    "System.Integer": "integer",
    "System.Date": "date",
    "System.DateTime": "dateTime",
    "System.Time": "time",
}
_QUANTITY_TYPES: Final = frozenset(
    {"Quantity", "SimpleQuantity", "Age", "Count", "Distance", "Duration", "MoneyQuantity"}
)


@dataclass(frozen=True)
class IndexTerm:
    """One value of one search parameter in one resource."""

    param: str  # search parameter code
    key: str  # equality part: goes into the DynamoDB partition key (may be "")
    sort: str = ""  # ordered part: order-preserving encoding of the low end
    high: str = ""  # high end for ranges (dates by precision, periods, Range)
    text: str = ""  # token: normalised display text; string: original value; quantity: unit

    @property
    def match_only(self) -> bool:
        """A term that only serves ``matches`` (token ``:text``) and drives no index query."""
        return not self.key and not self.sort

    @property
    def is_end(self) -> bool:
        """A term indexing the high end of a range (``sort`` = high); ``matches`` ignores it."""
        return self.key.startswith(END_PREFIX)


# --- compiling ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Branch:
    path: str  # the FHIRPath compiled (without the resolve() filter)
    evaluate: Callable[..., list[Any]]  # fhirpathpy's compiled expression
    resolve_type: str | None  # keep only references to this type (``.where(resolve() is T)``)
    first_element: str | None  # a plain path finds nothing when the resource lacks this element

    def may_match(self, resource: Mapping[str, Any]) -> bool:
        name = self.first_element
        if name is None:
            return True
        size = len(name)
        # ``effective`` is present as ``effectiveDateTime``, ``effectivePeriod``, ... (choice types).
        return any(k == name or (k.startswith(name) and k[size : size + 1].isupper()) for k in resource)


def _split_union(expression: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for index, char in enumerate(expression):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif char == "|" and depth == 0 and not quoted:
            parts.append(expression[start:index].strip())
            start = index + 1
    parts.append(expression[start:].strip())
    return [part for part in parts if part]


def _strip_parentheses(part: str) -> str:
    while part.startswith("(") and part.endswith(")"):
        depth = 0
        for index, char in enumerate(part):
            depth += char == "("
            depth -= char == ")"
            if depth == 0 and index < len(part) - 1:
                return part  # the opening parenthesis closes early: "(a) | (b)"-like
        part = part[1:-1].strip()
    return part


@cache
def _r4_model() -> Any:
    # Imported on first use: fhirpathpy loads every FHIR version's model (tens of ms), which
    # code that only parses queries or plans ranges should not pay for at cold start.
    from fhirpathpy.models import models

    return models["r4"]


@cache
def _compile(expression: str) -> tuple[_Branch, ...]:
    import fhirpathpy

    branches: list[_Branch] = []
    for raw in _split_union(expression):
        part = _strip_parentheses(raw)
        resolve_type = None
        match = _RESOLVE_IS.match(part)
        if match is not None:
            part, resolve_type = match.group("path"), match.group("type")
        if "resolve()" in part:
            continue  # no other use of resolve() in R4; never index what we cannot evaluate
        first = _FIRST_ELEMENT.match(part)
        plain = first is not None and not any(marker in part for marker in _NOT_A_PLAIN_PATH)
        branches.append(
            _Branch(
                part,
                fhirpathpy.compile(part, _r4_model(), _OPTIONS),
                resolve_type,
                first.group("name") if first is not None and plain else None,
            )
        )
    return tuple(branches)


_Found = list[tuple[str | None, Any]]  # (FHIR type of the value when known, the value)


def _evaluate(branch: _Branch, resource: Mapping[str, Any], memo: dict[str, _Found] | None) -> _Found:
    """What the branch finds in ``resource``; ``memo`` shares results between parameters with the
    same path in one resource (``name``/``phonetic``, ``subject``/``patient``, ``code``/``combo-code``).
    """
    if memo is not None and branch.path in memo:
        return memo[branch.path]
    found: _Found = []
    if branch.may_match(resource):
        try:
            nodes = branch.evaluate(resource)
        except Exception:  # noqa: BLE001 - bad stored data must not break a write; skip the branch
            nodes = []
        for node in nodes:
            path = getattr(node, "path", None)
            data = getattr(node, "data", node)
            fhir_type = _SYSTEM_TYPES.get(path, path) if isinstance(path, str) else None
            found.append((fhir_type, data))
    if memo is not None:
        memo[branch.path] = found
    return found


# --- per-type terms -------------------------------------------------------------------------


def _joined_text(*texts: Any) -> str:
    """The distinct normalised texts, joined with ``TEXT_SEPARATOR``."""
    seen: dict[str, None] = {}
    for text in texts:
        if isinstance(text, str):
            normalised = normalize_string(text)
            if normalised:
                seen[normalised] = None
    return TEXT_SEPARATOR.join(seen)


def _code_terms(code: str, system: Any, value: Any, text: str) -> Iterator[IndexTerm]:
    if not isinstance(value, str) or not value:
        return
    if isinstance(system, str) and system:
        yield IndexTerm(code, f"{system}|{value}")
        yield IndexTerm(code, value, text=text)
    else:
        yield IndexTerm(code, value, text=text)
        yield IndexTerm(code, f"|{value}")


def _token_terms(code: str, fhir_type: str | None, data: Any) -> Iterator[IndexTerm]:
    if isinstance(data, bool):
        yield IndexTerm(code, "true" if data else "false")
    elif isinstance(data, str):
        if data:
            yield IndexTerm(code, data)
    elif isinstance(data, int):
        yield IndexTerm(code, str(data))
    elif isinstance(data, Mapping):
        kind = fhir_type if fhir_type in ("CodeableConcept", "Coding", "Identifier", "ContactPoint") else None
        if kind is None:  # untyped (should not happen with the R4 model): go by shape
            if "coding" in data or ("text" in data and "value" not in data):
                kind = "CodeableConcept"
            elif "code" in data:
                kind = "Coding"
            elif "value" in data:
                kind = "Identifier"
        if kind == "CodeableConcept":
            concept_text = data.get("text")
            codings = [c for c in data.get("coding") or () if isinstance(c, Mapping)]
            coded = False
            for coding in codings:
                if coding.get("code"):
                    coded = True
                    text = _joined_text(coding.get("display"), concept_text)
                    yield from _code_terms(code, coding.get("system"), coding.get("code"), text)
            if not coded:  # nothing to search by code: keep the words for :text
                text = _joined_text(concept_text, *(c.get("display") for c in codings))
                if text:
                    yield IndexTerm(code, "", text=text)
        elif kind == "Coding":
            display = _joined_text(data.get("display"))
            yield from _code_terms(code, data.get("system"), data.get("code"), display)
        elif kind == "Identifier":
            identifier_type = data.get("type")
            type_text = ""
            if isinstance(identifier_type, Mapping):
                type_codings = identifier_type.get("coding") or ()
                displays = [c.get("display") for c in type_codings if isinstance(c, Mapping)]
                type_text = _joined_text(identifier_type.get("text"), *displays)
            yield from _code_terms(code, data.get("system"), data.get("value"), type_text)
        elif kind == "ContactPoint":
            value = data.get("value")
            if isinstance(value, str) and value:
                yield IndexTerm(code, value)


_HUMAN_NAME_PARTS: Final = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS: Final = ("line", "city", "district", "state", "postalCode", "country", "text")


def _string_values(fhir_type: str | None, data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
        return
    if not isinstance(data, Mapping):
        return
    if fhir_type == "HumanName" or (fhir_type is None and ("family" in data or "given" in data)):
        parts: Sequence[str] = _HUMAN_NAME_PARTS
    elif fhir_type == "Address" or (fhir_type is None and ("city" in data or "line" in data)):
        parts = _ADDRESS_PARTS
    else:
        return
    for part in parts:
        value = data.get(part)
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, str):
                yield item


def cut_sort(text: str) -> str:
    """``text`` cut to at most ``MAX_SORT_BYTES`` UTF-8 bytes (on a character boundary)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_SORT_BYTES:
        return text
    return encoded[:MAX_SORT_BYTES].decode("utf-8", errors="ignore")


def _string_terms(code: str, fhir_type: str | None, data: Any) -> Iterator[IndexTerm]:
    for value in _string_values(fhir_type, data):
        normalised = normalize_string(value)
        if normalised:
            yield IndexTerm(code, "", sort=cut_sort(normalised), text=value)


def _ranged(code: str, key: str, low: str, high: str, text: str = "") -> Iterator[IndexTerm]:
    yield IndexTerm(code, key, sort=low, high=high, text=text)
    if high != low:
        yield IndexTerm(code, END_PREFIX + key, sort=high)


def _date_terms(code: str, fhir_type: str | None, data: Any) -> Iterator[IndexTerm]:
    found: tuple[str, str] | None = None
    if isinstance(data, str):
        found = date_range(data)
    elif isinstance(data, Mapping):
        if fhir_type == "Period" or (fhir_type is None and ("start" in data or "end" in data)):
            found = period_range(data)
        elif fhir_type == "Timing" or (fhir_type is None and ("event" in data or "repeat" in data)):
            found = timing_range(data)
    if found is not None:
        low, high = found
        yield IndexTerm(code, "", sort=low, high=high)
        if is_wide_date_range(low, high):
            yield IndexTerm(code, END_PREFIX, sort=high)


def _number_terms(code: str, fhir_type: str | None, data: Any) -> Iterator[IndexTerm]:
    if isinstance(data, Mapping):
        if fhir_type == "Range" or (fhir_type is None and ("low" in data or "high" in data)):
            low, high = _range_bounds(data)
            if low is not None or high is not None:
                yield from _ranged(code, "", low or DECIMAL_MIN, high or DECIMAL_MAX)
            return
        data = data.get("value")  # a Quantity searched as a number
    number = to_decimal(data) if not isinstance(data, str) else None
    if number is not None:
        encoded = encode_decimal(number)
        yield IndexTerm(code, "", sort=encoded, high=encoded)


def _range_bounds(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    bounds: list[str | None] = []
    for end in ("low", "high"):
        quantity = data.get(end)
        number = to_decimal(quantity.get("value")) if isinstance(quantity, Mapping) else None
        bounds.append(encode_decimal(number) if number is not None else None)
    return bounds[0], bounds[1]


def _unit_keys(quantity: Mapping[str, Any], currency: bool) -> tuple[list[str], str]:
    if currency:
        unit = quantity.get("currency")
        system: Any = ISO_4217
        unit_code = unit
    else:
        unit = quantity.get("unit")
        system, unit_code = quantity.get("system"), quantity.get("code")
    keys = [""]
    if isinstance(unit_code, str) and unit_code:
        keys.append(f"{system}|{unit_code}" if isinstance(system, str) and system else f"|{unit_code}")
    display = unit if isinstance(unit, str) and unit else unit_code if isinstance(unit_code, str) else ""
    return keys, display


def _quantity_terms(code: str, fhir_type: str | None, data: Any) -> Iterator[IndexTerm]:
    if not isinstance(data, Mapping):
        return
    if fhir_type == "Range" or (fhir_type is None and ("low" in data or "high" in data)):
        low, high = _range_bounds(data)
        if low is None and high is None:
            return
        unit_source = data.get("low") if isinstance(data.get("low"), Mapping) else data.get("high")
        assert isinstance(unit_source, Mapping)
        keys, unit = _unit_keys(unit_source, currency=False)
        for key in keys:
            yield from _ranged(code, key, low or DECIMAL_MIN, high or DECIMAL_MAX, unit)
        return
    if fhir_type not in _QUANTITY_TYPES and fhir_type not in ("Money", None):
        return
    number = to_decimal(data.get("value"))
    if number is None:
        return
    encoded = encode_decimal(number)
    keys, unit = _unit_keys(data, currency=fhir_type == "Money" or "currency" in data)
    for key in keys:
        yield IndexTerm(code, key, sort=encoded, high=encoded, text=unit)


def reference_key(reference: str) -> str | None:
    """The index key of a literal reference: ``Type/id`` (history dropped), else the URL itself.

    None for what cannot be searched: contained (``#id``) and conditional (``Type?…``) references.
    """
    reference = reference.strip()
    if not reference or reference.startswith("#") or "?" in reference:
        return None
    match = _RELATIVE.match(reference)
    if match is not None:
        return f"{match.group('type')}/{match.group('id')}"
    if "/_history/" in reference:
        reference = reference.split("/_history/", 1)[0]
    return reference


def reference_type(reference: str) -> str | None:
    """The resource type a relative or absolute RESTful reference points at."""
    match = _RELATIVE.match(reference) or _ABSOLUTE_TAIL.search(reference)
    return match.group("type") if match is not None else None


def _canonical_keys(code: str, value: str) -> Iterator[IndexTerm]:
    value = value.strip()
    if value:
        yield IndexTerm(code, value)
        if "|" in value:
            yield IndexTerm(code, value.split("|", 1)[0])


def _reference_terms(code: str, data: Any, resolve_type: str | None) -> Iterator[IndexTerm]:
    if isinstance(data, str):  # canonical or uri
        if resolve_type is None or reference_type(data) == resolve_type:
            yield from _canonical_keys(code, data)
        return
    if not isinstance(data, Mapping):
        return
    reference = data.get("reference")
    declared = data.get("type") if isinstance(data.get("type"), str) else None
    if isinstance(reference, str):
        kind = reference_type(reference) or declared
        key = reference_key(reference)
        if key is not None and (resolve_type is None or kind == resolve_type):
            yield IndexTerm(code, key)
    identifier = data.get("identifier")
    if isinstance(identifier, Mapping) and (resolve_type is None or declared == resolve_type):
        value, system = identifier.get("value"), identifier.get("system")
        if isinstance(value, str) and value:
            if isinstance(system, str) and system:
                yield IndexTerm(code, f"{IDENTIFIER_PREFIX}{system}|{value}")
            yield IndexTerm(code, f"{IDENTIFIER_PREFIX}{value}")


def _uri_terms(code: str, data: Any) -> Iterator[IndexTerm]:
    if isinstance(data, str):
        yield from _canonical_keys(code, data)


def _terms_of(
    param: SearchParameter, fhir_type: str | None, data: Any, resolve: str | None
) -> Iterator[IndexTerm]:
    code = param.code
    if param.type == "token":
        return _token_terms(code, fhir_type, data)
    if param.type == "string":
        return _string_terms(code, fhir_type, data)
    if param.type == "date":
        return _date_terms(code, fhir_type, data)
    if param.type == "number":
        return _number_terms(code, fhir_type, data)
    if param.type == "quantity":
        return _quantity_terms(code, fhir_type, data)
    if param.type == "reference":
        return _reference_terms(code, data, resolve)
    if param.type == "uri":
        return _uri_terms(code, data)
    return iter(())


def param_terms(
    resource: Mapping[str, Any], param: SearchParameter, memo: dict[str, _Found] | None = None
) -> list[IndexTerm]:
    """The terms of one parameter in ``resource`` (no duplicates; [] for unsupported types)."""
    if not param.supported:
        return []
    terms: dict[tuple[str, str], IndexTerm] = {}
    for branch in _compile(param.expression):
        for fhir_type, data in _evaluate(branch, resource, memo):
            try:
                for term in _terms_of(param, fhir_type, data, branch.resolve_type):
                    slot = (term.key, term.sort)
                    seen = terms.get(slot)
                    terms[slot] = term if seen is None else _merge(seen, term)
            except (ValueError, TypeError, ArithmeticError, AttributeError, KeyError, AssertionError):
                continue  # a value that cannot be indexed is skipped, never raised
    return list(terms.values())


def _merge(first: IndexTerm, second: IndexTerm) -> IndexTerm:
    """One term for two values with the same (param, key, sort): texts kept, the wider high end."""
    pieces = (*first.text.split(TEXT_SEPARATOR), *second.text.split(TEXT_SEPARATOR))
    texts = dict.fromkeys(piece for piece in pieces if piece)
    return IndexTerm(
        first.param, first.key, first.sort, max(first.high, second.high), TEXT_SEPARATOR.join(texts)
    )


def index_terms(resource: Mapping[str, Any], params: Iterable[str] | None = None) -> list[IndexTerm]:
    """Every index term of ``resource`` (or only of the parameters named in ``params``)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return []
    available = supported_parameters(resource_type)
    chosen = available.values() if params is None else [available[p] for p in params if p in available]
    terms: list[IndexTerm] = []
    memo: dict[str, _Found] = {}
    for param in chosen:
        terms.extend(param_terms(resource, param, memo))
    return terms


def compartment_patients(resource: Mapping[str, Any]) -> set[str]:
    """Ids of the Patients whose compartment ``resource`` is in (a Patient is in its own)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return set()
    patients: set[str] = set()
    if resource_type == "Patient" and isinstance(resource.get("id"), str):
        patients.add(resource["id"])
    definitions = search_parameters(resource_type)
    for code in compartment_params(resource_type):
        param = definitions.get(code)
        if param is None:
            continue
        for term in param_terms(resource, param):
            if term.key.startswith("Patient/") and "/" not in term.key[8:]:
                patients.add(term.key[8:])
    return patients
