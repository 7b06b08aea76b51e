"""The R4B pydantic model (``fhir.resources``) as a second opinion on structure.

The definitions-driven walk (:mod:`.structure`) is the authority on which elements exist and how
often (it follows R4, where the R4B models differ in places). The model adds what its validators
check and the walk might not. Its errors are translated into issues with FHIR paths; the kinds the
walk already reports (unknown elements, missing elements, wrong JSON kinds, choice conflicts) are
left out, and so is any error at or under an element the walk has already reported.

The model is validated on a copy of the client's JSON, which is never changed; ``Decimal`` values
are accepted as they are.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ehr.fhir.outcome import Issue
from ehr.fhir.validation.definitions import definitions

LOGGER: Final = logging.getLogger(__name__)

# Error kinds the walk reports itself, in its own words.
COVERED_BY_WALK: Final = frozenset(
    {
        "extra_forbidden",
        "missing",
        "model_field_validation.missing",
        "list_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
        "model_validation_format",
        "fhir-validation-wrong-resource-type",
        "fhir-validation-missing-resource-type",
        "string_type",
        "bool_type",
        "bool_parsing",
        "int_type",
        "int_parsing",
        "int_from_float",
        "float_type",
        "float_parsing",
        "decimal_type",
        "decimal_parsing",
        "json_invalid",
        "json_type",
        "none_required",
    }
)
CHOICE_MESSAGES: Final = ("Any of one field value", "Expect any of field value")
# loc parts pydantic adds for unions, wrappers and validators; not element names.
_ELEMENT_NAME: Final = re.compile(r"_?[A-Za-z][A-Za-z0-9_]*")
_NOT_ELEMENTS: Final = frozenset({"root", "str", "int", "bool", "float", "list", "dict", "decimal", "bytes"})


def _copy(value: Any) -> Any:
    """A deep copy of parsed JSON (dicts, lists and immutable scalars), faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def expression_for(prefix: str, loc: Sequence[int | str]) -> str:
    """``('name', 0, 'period')`` under ``Patient`` -> ``Patient.name[0].period``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _NOT_ELEMENTS or not _ELEMENT_NAME.fullmatch(part):
            continue
        else:
            out += "." + (part[1:] if part.startswith("_") else part)
    return out


def _message(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    text = str(error.get("msg", ""))
    if text.startswith("Value error, "):
        text = text[len("Value error, ") :]
    if kind.startswith(("less_than", "greater_than")):
        return f"the number is out of range ({text[0].lower() + text[1:]})"
    if kind == "string_pattern_mismatch":
        return "the value does not have the form FHIR R4 requires for this element"
    if "``" in text or "fhir.resources" in text or "Model" in text or len(text) > 200:
        return "the value does not conform to the FHIR R4 definition of this element"
    text = text.replace("spec regex", "FHIR format").rstrip(".")
    return text[0].lower() + text[1:] if text else "the value is not valid here"


def _under(expression: str, reported: set[str]) -> bool:
    """True if ``expression`` is, or is inside, an element (not the resource) already reported."""
    probe = expression
    while True:
        if probe in reported:
            return True
        cut = max(probe.rfind("."), probe.rfind("["))
        if cut <= 0:
            return False
        probe = probe[:cut]
        if "." not in probe and "[" not in probe:
            return False


def _parts(
    data: dict[str, Any], resource_type: str, prefix: str
) -> Iterator[tuple[dict[str, Any], str, str]]:
    """The resource, with a Bundle's entry resources taken out and given as parts of their own.

    The model validates a whole Bundle much more slowly than its resources one by one.
    """
    if resource_type == "Bundle":
        entries = data.get("entry")
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            inner = entry.get("resource") if isinstance(entry, dict) else None
            inner_type = inner.get("resourceType") if isinstance(inner, dict) else None
            if (
                isinstance(inner, dict)
                and isinstance(inner_type, str)
                and inner_type in definitions().resource_types
            ):
                del entry["resource"]
                yield from _parts(inner, inner_type, f"{prefix}.entry[{i}].resource")
    yield data, resource_type, prefix


def model_issues(
    resource: dict[str, Any], resource_type: str, prefix: str, reported: set[str]
) -> Iterator[Issue]:
    """Issues the R4B model finds that the walk has not already reported."""
    for part, part_type, where in list(_parts(_copy(resource), resource_type, prefix)):
        yield from _part_issues(part, part_type, where, reported)


def _part_issues(
    data: dict[str, Any], resource_type: str, prefix: str, reported: set[str]
) -> Iterator[Issue]:
    try:
        get_fhir_model_class(resource_type).model_validate(data)
        return
    except ValidationError as exc:
        try:
            errors = exc.errors(include_url=False, include_input=False)
        except UnicodeError:  # pydantic cannot render a message about a lone surrogate
            errors = None
    except Exception:  # the model crashes on some input the walk rejects (unknown nested types)
        LOGGER.debug("R4B model could not validate a %s", resource_type, exc_info=True)
        errors = None
    if errors is None:
        if not reported:
            yield Issue(
                code="structure",
                diagnostics=f"The {resource_type} could not be read as FHIR R4; check its structure.",
                expression=(prefix,),
            )
        return
    for error in errors:
        kind = str(error.get("type", ""))
        if kind in COVERED_BY_WALK:
            continue
        if any(str(error.get("msg", "")).find(m) >= 0 for m in CHOICE_MESSAGES):
            continue
        expression = expression_for(prefix, error.get("loc", ()))
        if _under(expression, reported):
            continue
        yield Issue(code="value", diagnostics=f"{expression}: {_message(error)}.", expression=(expression,))
