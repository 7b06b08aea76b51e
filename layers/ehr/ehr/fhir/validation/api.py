"""The validation entry points the FHIR API calls: parse a body, validate a resource or a Bundle."""

from __future__ import annotations

import codecs
import json
from decimal import Decimal
from typing import Any, NoReturn

from ehr.fhir.outcome import OperationOutcomeError, invalid
from ehr.fhir.validation.bundle import submission_issues
from ehr.fhir.validation.definitions import definitions
from ehr.fhir.validation.issues import Issues, show
from ehr.fhir.validation.model import model_issues
from ehr.fhir.validation.structure import Walker


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return value


def _constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes) -> Any:
    """The body as JSON, numbers with a fraction or exponent as ``Decimal`` (precision kept).

    A UTF-8 byte order mark is ignored. Anything that is not one UTF-8 JSON object with unique
    property names is refused with a 400 OperationOutcome.
    """
    data = bytes(body)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"The body is not valid UTF-8 (byte {exc.start}); FHIR JSON is UTF-8.") from exc
    try:
        value = json.loads(text, parse_float=Decimal, parse_constant=_constant, object_pairs_hook=_object)
    except _DuplicateKeyError as exc:
        raise invalid(
            f"The body has the property {show(exc.key)} twice in one object; JSON for FHIR cannot "
            "repeat a property.",
            code="structure",
        ) from exc
    except json.JSONDecodeError as exc:
        raise invalid(
            f"The body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise invalid("The body is not valid JSON for FHIR (a number or nesting it cannot hold).") from exc
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else "a single value"
        raise invalid(
            f"The body must be a JSON object holding a FHIR resource, not {kind}.", code="structure"
        )
    return value


def known_resource_types() -> frozenset[str]:
    """The resource types this server validates: R4's that ``fhir.resources.R4B`` has a model for."""
    return definitions().resource_types


def _resource_issues(
    resource: object, expected_type: str | None, expected_id: str | None, require_id: bool
) -> Issues:
    issues = Issues()
    if not isinstance(resource, dict):
        issues.add("structure", None, "The body must be a JSON object holding a FHIR resource.")
        return issues
    resource_type = resource.get("resourceType")
    if resource_type is None:
        issues.add(
            "required",
            "resourceType",
            'resourceType is missing; a resource names its type ("resourceType": "Patient").',
        )
        return issues
    if not isinstance(resource_type, str) or not resource_type:
        issues.add(
            "invalid",
            "resourceType",
            'resourceType must name the type of the resource as a string, e.g. "Patient"; it is '
            + ("empty." if resource_type == "" else "not a string."),
        )
        return issues
    if resource_type not in known_resource_types():
        issues.add(
            "invalid",
            "resourceType",
            f"{show(resource_type)} is not a FHIR R4 resource type this server knows.",
        )
        return issues
    if expected_type is not None and resource_type != expected_type:
        issues.add(
            "invalid",
            "resourceType",
            f"The body is a {resource_type} but the request is for a {show(expected_type)}.",
        )
        return issues
    resource_id = resource.get("id")
    where = f"{resource_type}.id"
    if expected_id is not None and isinstance(resource_id, str) and resource_id != expected_id:
        issues.add(
            "invalid",
            where,
            f"{where}: {show(resource_id)} does not match the id in the URL ({show(expected_id)}).",
        )
    if require_id and resource_id is None:
        issues.add("required", where, f"{where}: an update needs the resource's id in the body.")
    walker = Walker(issues)
    try:
        walker.resource(resource, resource_type, resource_type)
    except RecursionError:
        walker.too_deep = True
        issues.add("structure", resource_type, "The JSON is nested too deeply to be a FHIR resource.")
    if not walker.too_deep:
        reported = issues.expressions()
        issues.extend(model_issues(resource, resource_type, resource_type, reported))
    return issues


def validate_resource(
    resource: dict[str, Any],
    *,
    expected_type: str | None = None,
    expected_id: str | None = None,
    require_id: bool = False,
) -> None:
    """Raise a 400 OperationOutcomeError listing every way ``resource`` is not valid FHIR R4.

    ``expected_type``/``expected_id`` are the type and id in the request URL; ``require_id`` asks
    for an id in the body (an update). The resource is only read, never changed.
    """
    issues = _resource_issues(resource, expected_type, expected_id, require_id)
    if issues:
        raise issues.error()


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Raise a 400 OperationOutcomeError unless ``bundle`` is a valid batch/transaction for the base.

    Every entry's resource is validated as :func:`validate_resource` would (its issues are under
    ``Bundle.entry[i].resource``), and all issues of the Bundle are listed together.
    """
    issues = _resource_issues(bundle, "Bundle", None, False)
    if isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle":
        submission_issues(bundle, issues, known_resource_types())
    if issues:
        raise issues.error()


__all__ = [
    "OperationOutcomeError",
    "known_resource_types",
    "parse_json",
    "validate_bundle",
    "validate_resource",
]
