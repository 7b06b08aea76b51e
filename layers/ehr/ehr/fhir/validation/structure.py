"""The walk: a client's JSON checked element by element against the R4 definitions.

For every object the walk knows which structure it is (``Patient``, ``HumanName``,
``Observation.component``, ...) from the generated element tree, so it can tell unknown elements,
arrays where one value is allowed (and the reverse), missing required elements, two types of one
choice element, nulls and empty values (ele-1), JSON kinds that do not fit the primitive type
(``"true"`` for a boolean), values that do not match the primitive's format, and codes outside a
required value set. After an object's elements it runs the invariants registered for its structure.
It only reads the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from ehr.fhir.validation import bundle, invariants, temporal
from ehr.fhir.validation.definitions import (
    BACKBONE,
    INTEGER_TYPES,
    RESOURCE,
    Definitions,
    ElementInfo,
    Structure,
    ValueSet,
    definitions,
)
from ehr.fhir.validation.issues import Issues, show
from ehr.fhir.validation.scope import Check, Contained, Scope

CHECKS: Final[Mapping[str, tuple[Check, ...]]] = {
    **invariants.DATA_TYPE_CHECKS,
    **invariants.RESOURCE_CHECKS,
    **bundle.CHECKS,
}
# Deeper than any real resource; keeps a hostile body from exhausting the stack.
MAX_DEPTH: Final = 64
MAX_STRING: Final = 1_048_576  # string.maxLength in R4
INTEGER_RANGE: Final[Mapping[str, tuple[int, str]]] = {
    "integer": (-(2**31), "a whole number"),
    "unsignedInt": (0, "a whole number, zero or more"),
    "positiveInt": (1, "a whole number, one or more"),
}
INTEGER_MAX: Final = 2**31 - 1
TEMPORAL_TYPES: Final = frozenset({"date", "dateTime", "instant"})
URI_TYPES: Final = frozenset({"uri", "url", "canonical"})
FORMAT_HINTS: Final[Mapping[str, str]] = {
    "id": "an id is 1 to 64 letters, digits, '-' or '.'",
    "date": "a date is YYYY, YYYY-MM or YYYY-MM-DD, on the calendar",
    "dateTime": (
        "a dateTime is YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff] with a time zone "
        "(Z or +hh:mm), on the calendar"
    ),
    "instant": "an instant is YYYY-MM-DDThh:mm:ss[.fff] with a time zone (Z or +hh:mm)",
    "time": "a time is hh:mm:ss[.fff]",
    "code": "a code has no leading, trailing or repeated whitespace",
    "uri": "a URI has no whitespace",
    "url": "a URL has no whitespace",
    "canonical": "a canonical URL has no whitespace",
    "oid": "an OID is urn:oid: followed by dotted numbers",
    "uuid": "a UUID is urn:uuid: followed by a lower-case UUID",
    "base64Binary": "base64Binary must be base64-encoded",
    "string": "a string may contain tabs, carriage returns and line feeds but no other whitespace controls",
    "markdown": "markdown may contain tabs, carriage returns and line feeds but no other whitespace controls",
}
# Values worth echoing in a diagnostic: identifiers of things, never clinical content.
ECHO_TYPES: Final = frozenset({"id", "code", "uri", "url", "canonical", "oid", "uuid"})
_BASE64_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a value JSON cannot hold"


def _is_base64(value: str) -> bool:
    compact = "".join(value.split())
    if len(compact) % 4 or not set(compact) <= _BASE64_ALPHABET:
        return False
    stripped = compact.rstrip("=")
    return "=" not in stripped and len(compact) - len(stripped) <= 2


def _is_valid_unicode(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Walker:
    """One validation's walk; collects into ``issues``."""

    def __init__(self, issues: Issues, defs: Definitions | None = None) -> None:
        self.issues = issues
        self.defs = defs or definitions()
        self.depth = 0
        self.too_deep = False

    # --- resources --------------------------------------------------------------------------------

    def resource(self, value: dict[str, Any], resource_type: str, loc: str) -> None:
        """Walk a resource that is not contained (the body, a Bundle entry, a Parameters resource)."""
        scope = Scope(resource_type, loc)
        self._resource_body(value, resource_type, loc, scope)
        invariants.end_of_scope(self.issues, scope)

    def _resource_body(self, value: dict[str, Any], resource_type: str, loc: str, scope: Scope) -> None:
        structure = self.defs.structure(resource_type)
        self._object(value, structure, loc, scope, resource=True)

    def _nested_resource(self, value: object, info: ElementInfo, loc: str, scope: Scope) -> None:
        if not isinstance(value, dict):
            self.issues.add(
                "structure", loc, f"{loc}: must be a JSON object holding a resource, not {_kind(value)}."
            )
            return
        item: Contained | None = None
        if info.name == "contained":  # known even if broken, so references to it are not reported too
            contained_id = value.get("id")
            item = Contained(contained_id if isinstance(contained_id, str) else None, loc)
            scope.contained.append(item)
        resource_type = value.get("resourceType")
        if not isinstance(resource_type, str) or not resource_type:
            self.issues.add("required", loc, f"{loc}: a resource needs a resourceType.")
            return
        if resource_type not in self.defs.resource_types:
            self.issues.add(
                "invalid",
                loc,
                f"{loc}: {show(resource_type)} is not a FHIR R4 resource type this server knows.",
            )
            return
        if info.type not in (RESOURCE, resource_type):
            self.issues.add("invalid", loc, f"{loc}: must be a {info.type}, not a {show(resource_type)}.")
            return
        if item is None:
            self.resource(value, resource_type, loc)
            return
        invariants.contained_resource(self.issues, value, loc)
        outer, scope.current = scope.current, item
        try:
            self._resource_body(value, resource_type, loc, scope)
        finally:
            scope.current = outer

    # --- objects ----------------------------------------------------------------------------------

    def _object(
        self, value: dict[str, Any], structure: Structure, loc: str, scope: Scope, *, resource: bool = False
    ) -> None:
        if self.depth >= MAX_DEPTH:
            if not self.too_deep:
                self.too_deep = True
                self.issues.add(
                    "structure", loc, f"{loc}: the JSON is nested too deeply to be a FHIR resource."
                )
            return
        self.depth += 1
        try:
            self._elements(value, structure, loc, scope, resource)
        finally:
            self.depth -= 1
        for check in CHECKS.get(structure.path, ()):
            check(self.issues, value, loc, scope)

    def _elements(
        self, value: dict[str, Any], structure: Structure, loc: str, scope: Scope, resource: bool
    ) -> None:
        by_key = structure.by_key
        issues = self.issues
        chosen: dict[str, str] = {}
        for key, item in value.items():
            info = by_key.get(key)
            if info is None:
                if resource and key == "resourceType":
                    continue
                if key.startswith("_"):
                    base = by_key.get(key[1:])
                    if base is not None and base.type in self.defs.primitive_types:
                        self._primitive_extension(item, base, value.get(base.key), f"{loc}.{base.key}", scope)
                        self._note_choice(base, chosen, loc)
                        continue
                where = f"{loc}.{_safe_key(key)}"
                issues.add(
                    "structure",
                    where,
                    f"{where}: {show(key)} is not an element of {structure.path} in FHIR R4.",
                )
                continue
            if info.choice:
                self._note_choice(info, chosen, loc)
            where = f"{loc}.{key}"
            if info.max == 0:
                rule = " (sqty-1)" if structure.path == "SimpleQuantity" else ""
                issues.add("structure", where, f"{where}: is not allowed in a {structure.path}{rule}.")
                continue
            if isinstance(item, list):
                if not info.repeats:
                    issues.add("structure", where, f"{where}: must be a single value, not an array.")
                    continue
                self._array(item, info, where, value.get("_" + key), scope)
            elif item is None:
                if "_" + key not in value:
                    issues.add(
                        "structure", where, f"{where}: null is not allowed; leave the element out instead."
                    )
            elif info.repeats:
                issues.add("structure", where, f"{where}: must be an array, since the element can repeat.")
            else:
                self._value(item, info, where, scope)
        for required in structure.required:
            if not any(k in value for k in required.keys):
                where = f"{loc}.{required.name}"
                issues.add("required", where, f"{where} is required but missing.")

    def _note_choice(self, info: ElementInfo, chosen: dict[str, str], loc: str) -> None:
        if not info.choice:
            return
        key = info.key
        earlier = chosen.setdefault(info.name, key)
        if earlier != key:
            where = f"{loc}.{info.name}"
            self.issues.add(
                "structure",
                where,
                f"{where}: only one type may be given for a choice element; found {earlier} and {key}.",
            )

    def _array(
        self, items: list[Any], info: ElementInfo, where: str, extensions: object, scope: Scope
    ) -> None:
        if not items:
            self.issues.add(
                "invariant", where, f"{where}: an empty array is not allowed; leave it out (ele-1)."
            )
            return
        if info.max is not None and len(items) > info.max:
            self.issues.add("structure", where, f"{where}: at most {info.max} allowed, found {len(items)}.")
        if len(items) < info.min:
            self.issues.add("required", where, f"{where}: at least {info.min} required, found {len(items)}.")
        ext = extensions if isinstance(extensions, list) else None
        for i, item in enumerate(items):
            at = f"{where}[{i}]"
            if item is None:
                if ext is None or i >= len(ext) or ext[i] is None:
                    self.issues.add("structure", at, f"{at}: null is not allowed here.")
                continue
            self._value(item, info, at, scope)

    # --- values -----------------------------------------------------------------------------------

    def _value(self, value: object, info: ElementInfo, where: str, scope: Scope) -> None:
        fhir_type = info.type
        defs = self.defs
        if fhir_type in defs.primitive_types:
            self._primitive(value, fhir_type, where, scope)
            if info.binding is not None and isinstance(value, str):
                self._bound_code(value, info.binding, where)
            return
        if fhir_type == RESOURCE or fhir_type in defs.resource_types:
            self._nested_resource(value, info, where, scope)
            return
        if not isinstance(value, dict):
            self.issues.add(
                "structure", where, f"{where}: must be a JSON object ({fhir_type}), not {_kind(value)}."
            )
            return
        if not value or (len(value) == 1 and "id" in value):
            self.issues.add(
                "invariant",
                where,
                f"{where}: an element needs a value or child elements; leave empty ones out (ele-1).",
            )
            return
        path = info.children if fhir_type in BACKBONE and info.children else fhir_type
        if not defs.has_structure(path):
            return  # a type the definitions do not describe (none in R4 core)
        self._object(value, defs.structure(path), where, scope)
        if info.binding is not None:
            if fhir_type == "Coding":
                self._bound_coding(value, info.binding, where)
            elif fhir_type == "CodeableConcept":
                self._bound_concept(value, info.binding, where)

    def _primitive_extension(
        self, value: object, info: ElementInfo, primitive: object, where: str, scope: Scope
    ) -> None:
        """``_name``: the id and extensions of a primitive (a list, aligned, for repeating ones)."""
        element = self.defs.structure("Element")
        if info.repeats:
            if not isinstance(value, list):
                self.issues.add("structure", where, f"{where}: _{info.key} must be an array like {info.key}.")
                return
            if isinstance(primitive, list) and len(primitive) != len(value):
                self.issues.add(
                    "structure", where, f"{where}: _{info.key} must have as many items as {info.key}."
                )
            for i, item in enumerate(value):
                if item is None:
                    if not isinstance(primitive, list) or i >= len(primitive) or primitive[i] is None:
                        self.issues.add(
                            "structure", f"{where}[{i}]", f"{where}[{i}]: has neither a value nor extensions."
                        )
                    continue
                self._primitive_element(item, element, f"{where}[{i}]", scope)
            return
        if value is None:
            if primitive is None:
                self.issues.add(
                    "structure", where, f"{where}: null is not allowed; leave the element out instead."
                )
            return
        if primitive is None and isinstance(value, dict) and list(value) == ["id"]:
            self.issues.add(
                "invariant", where, f"{where}: has neither a value nor extensions, only an id (ele-1)."
            )
            return
        self._primitive_element(value, element, where, scope)

    def _primitive_element(self, value: object, element: Structure, where: str, scope: Scope) -> None:
        if not isinstance(value, dict):
            self.issues.add(
                "structure", where, f"{where}: the id and extensions of a value must be a JSON object."
            )
        elif not value:
            self.issues.add(
                "invariant", where, f"{where}: an empty object is not allowed; leave it out (ele-1)."
            )
        else:
            self._object(value, element, where, scope)

    def _primitive(self, value: object, fhir_type: str, where: str, scope: Scope) -> None:
        issues = self.issues
        if fhir_type == "boolean":
            if not isinstance(value, bool):
                issues.add(
                    "structure",
                    where,
                    f"{where}: must be a JSON boolean (true or false), not {_kind(value)}.",
                )
            return
        if fhir_type in INTEGER_TYPES:
            if not isinstance(value, int) or isinstance(value, bool):
                issues.add(
                    "structure",
                    where,
                    f"{where}: must be a JSON number without a fraction or exponent, not {_kind(value)}.",
                )
                return
            low, text = INTEGER_RANGE[fhir_type]
            if not low <= value <= INTEGER_MAX:
                issues.add("value", where, f"{where}: must be {text} up to {INTEGER_MAX} ({fhir_type}).")
            return
        if fhir_type == "decimal":
            if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
                issues.add("structure", where, f"{where}: must be a JSON number, not {_kind(value)}.")
            elif (isinstance(value, Decimal) and not value.is_finite()) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                issues.add("value", where, f"{where}: must be a finite number.")
            return
        if not isinstance(value, str):
            issues.add(
                "structure", where, f"{where}: must be a JSON string ({fhir_type}), not {_kind(value)}."
            )
            return
        if not value:
            issues.add(
                "invariant", where, f"{where}: an empty string is not allowed; leave the element out (ele-1)."
            )
            return
        valid = _is_valid_unicode(value)
        if valid:
            if fhir_type == "base64Binary":
                valid = _is_base64(value)
            elif fhir_type != "xhtml":
                pattern = self.defs.primitive_regex.get(fhir_type)
                valid = pattern is None or pattern.fullmatch(value) is not None
                if valid and fhir_type in TEMPORAL_TYPES:
                    valid = temporal.is_real_date(value)
        if not valid:
            shown = show(value) if fhir_type in ECHO_TYPES else "the value"
            hint = FORMAT_HINTS.get(fhir_type)
            issues.add(
                "value",
                where,
                f"{where}: {shown} is not a valid {fhir_type}" + (f"; {hint}." if hint else "."),
            )
        elif len(value) > MAX_STRING and fhir_type != "base64Binary":  # the 1 MB rule is for strings
            issues.add("value", where, f"{where}: is longer than FHIR allows ({MAX_STRING} characters).")
        if fhir_type in URI_TYPES and value.startswith("#") and len(value) > 1:
            scope.uri_targets.add(value[1:])

    # --- required bindings ------------------------------------------------------------------------

    def _allowed(self, vs: ValueSet) -> str:
        codes = vs.describe_codes()
        return f"; allowed: {codes}" if codes else ""

    def _bound_code(self, code: str, vs: ValueSet, where: str) -> None:
        if not vs.contains(None, code):
            self.issues.add(
                "code-invalid",
                where,
                f"{where}: {show(code)} is not in the required value set {vs.url}{self._allowed(vs)}.",
            )

    def _bound_coding(self, coding: dict[str, Any], vs: ValueSet, where: str) -> None:
        code, system = coding.get("code"), coding.get("system")
        if not isinstance(code, str) or (system is not None and not isinstance(system, str)):
            return
        if not vs.contains(system, code):
            shown = f"{show(system)}|{show(code)}" if system else show(code)
            self.issues.add(
                "code-invalid",
                where,
                f"{where}: {shown} is not in the required value set {vs.url}{self._allowed(vs)}.",
            )

    def _bound_concept(self, concept: dict[str, Any], vs: ValueSet, where: str) -> None:
        raw = concept.get("coding")
        codings = [c for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []
        coded: list[tuple[str | None, str]] = []
        for coding in codings:
            code, system = coding.get("code"), coding.get("system")
            if isinstance(code, str):
                coded.append((system if isinstance(system, str) else None, code))
        if any(vs.contains(system, code) for system, code in coded):
            return
        text = "none of its codings is" if coded else "it has no coding"
        self.issues.add(
            "code-invalid",
            where,
            f"{where}: {text} from the required value set {vs.url}{self._allowed(vs)}.",
        )


def _safe_key(key: str) -> str:
    """A JSON key fit for an expression: printable, short."""
    cleaned = "".join(ch for ch in key[:64] if ch.isprintable() and ch not in " .[]")
    return cleaned.encode("utf-8", "backslashreplace").decode("utf-8") or "?"
