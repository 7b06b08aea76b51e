"""Invariants (``constraint`` entries of the R4 StructureDefinitions) checked in Python.

Each check is registered under the structure it belongs to (a data type such as ``Period``, a
resource such as ``Observation`` or a backbone element such as ``Patient.contact``), so it runs
wherever that structure appears: a Period inside ``Patient.name[0]`` is checked as well as one in
``Encounter.period``. The walk calls a check only after the object passed its structural checks
enough to be walked; checks still read defensively, since they also see objects with other issues.

Semantics follow R4's FHIRPath expressions; where a check is stricter or looser, its docstring says
so (and docs/validation.md lists every invariant, implemented or not).
"""

from __future__ import annotations

import html.entities
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from ehr.fhir.validation import temporal
from ehr.fhir.validation.issues import Issues
from ehr.fhir.validation.scope import Check, Scope

UCUM: Final = "http://unitsofmeasure.org"
CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
XHTML_NS: Final = "http://www.w3.org/1999/xhtml"


# --- helpers --------------------------------------------------------------------------------------


def _exists(obj: Mapping[str, Any], name: str) -> bool:
    """FHIRPath ``name.exists()``: the element is there (a primitive may have only extensions)."""
    return obj.get(name) not in (None, [], {}) or obj.get("_" + name) not in (None, [], {})


def _choice_exists(obj: Mapping[str, Any], name: str) -> bool:
    """``name[x]`` is present under any of its type names (``valueQuantity``, ``_valueString``)."""
    size = len(name)
    for key in obj:
        bare = key[1:] if key.startswith("_") else key
        if len(bare) > size and bare.startswith(name) and bare[size].isupper():
            return True
    return False


def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _dict(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name)
    return value if isinstance(value, dict) else {}


def _list(obj: Mapping[str, Any], name: str) -> list[Any]:
    value = obj.get(name)
    return value if isinstance(value, list) else []


def _codings(concept: object) -> Iterator[tuple[object, object]]:
    if isinstance(concept, dict):
        for coding in _list(concept, "coding"):
            if isinstance(coding, dict):
                yield coding.get("system"), coding.get("code")


def _has_code(concept: object, system: str, codes: tuple[str, ...]) -> bool:
    return any(s == system and c in codes for s, c in _codings(concept))


def _items(value: object) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                yield i, item


def _fail(issues: Issues, loc: str, key: str, text: str) -> None:
    issues.add("invariant", loc, f"{loc}: {text} ({key}).")


# --- data types -----------------------------------------------------------------------------------


def period(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """per-1: start <= end, with FHIRPath's rule that different precisions may not be comparable."""
    start, end = obj.get("start"), obj.get("end")
    if not isinstance(start, str) or not isinstance(end, str):
        return
    a, b = temporal.parse(start), temporal.parse(end)
    if a is None or b is None:
        return  # the walk reports the malformed value
    order = temporal.compare(a, b)
    if order is None:
        _fail(
            issues,
            loc,
            "per-1",
            f"start ({a.precision_name} precision) and end ({b.precision_name} precision) are equal "
            "as far as both are given, so R4 cannot show that start is not after end; give them "
            "with the same precision",
        )
    elif order > 0:
        _fail(issues, loc, "per-1", "start is after end; a period cannot end before it starts")


def _comparable_units(low: Mapping[str, Any], high: Mapping[str, Any]) -> bool:
    if low.get("code") is not None or high.get("code") is not None:
        return low.get("code") == high.get("code") and low.get("system") == high.get("system")
    return low.get("unit") is None or high.get("unit") is None or low.get("unit") == high.get("unit")


def range_(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """rng-2: low <= high. Values in different units are not compared (no UCUM conversion)."""
    low, high = obj.get("low"), obj.get("high")
    if not isinstance(low, dict) or not isinstance(high, dict) or not _comparable_units(low, high):
        return
    lo, hi = _number(low.get("value")), _number(high.get("value"))
    if lo is not None and hi is not None and lo > hi:
        _fail(issues, loc, "rng-2", "low is greater than high")


def quantity(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """qty-3: a unit code needs the system it comes from."""
    if _exists(obj, "code") and not _exists(obj, "system"):
        _fail(issues, loc, "qty-3", "a code for the unit is given, so its system is required")


def _ucum_system(issues: Issues, obj: dict[str, Any], loc: str, key: str) -> None:
    system = obj.get("system")
    if isinstance(system, str) and system != UCUM:
        _fail(issues, loc, key, f"the system of the unit must be {UCUM}")


def age(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """age-1: a value needs a (UCUM) code and must be positive."""
    quantity(issues, obj, loc, scope)
    value = _number(obj.get("value"))
    if value is not None and not _exists(obj, "code"):
        _fail(issues, loc, "age-1", "an age with a value needs a unit code")
    _ucum_system(issues, obj, loc, "age-1")
    if value is not None and value <= 0:
        _fail(issues, loc, "age-1", "an age must be greater than zero")


def count(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """cnt-3: code '1' when there is a value, UCUM system, whole non-negative value."""
    quantity(issues, obj, loc, scope)
    value = _number(obj.get("value"))
    if value is not None and not _exists(obj, "code"):
        _fail(issues, loc, "cnt-3", "a count with a value needs the unit code '1'")
    code = obj.get("code")
    if isinstance(code, str) and code != "1":
        _fail(issues, loc, "cnt-3", "the unit code of a count must be '1'")
    _ucum_system(issues, obj, loc, "cnt-3")
    if value is not None and (value < 0 or value != value.to_integral_value()):
        _fail(issues, loc, "cnt-3", "a count must be a whole number, zero or more")


def distance(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """dis-1: a value needs a (UCUM) code."""
    quantity(issues, obj, loc, scope)
    if _number(obj.get("value")) is not None and not _exists(obj, "code"):
        _fail(issues, loc, "dis-1", "a distance with a value needs a unit code")
    _ucum_system(issues, obj, loc, "dis-1")


def duration(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """drt-1: a code needs the UCUM system and a value."""
    quantity(issues, obj, loc, scope)
    if _exists(obj, "code"):
        if obj.get("system") != UCUM:
            _fail(issues, loc, "drt-1", f"a duration with a unit code needs the system {UCUM}")
        if not _exists(obj, "value"):
            _fail(issues, loc, "drt-1", "a duration with a unit code needs a value")


def attachment(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "data") and not _exists(obj, "contentType"):
        _fail(issues, loc, "att-1", "an attachment with data needs a contentType")


def contact_point(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "value") and not _exists(obj, "system"):
        _fail(issues, loc, "cpt-2", "a contact point with a value needs a system (phone, email, ...)")


def ratio(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    numerator, denominator = _exists(obj, "numerator"), _exists(obj, "denominator")
    if numerator != denominator:
        _fail(issues, loc, "rat-1", "numerator and denominator must both be present, or both absent")
    elif not numerator and not _exists(obj, "extension"):
        _fail(issues, loc, "rat-1", "a ratio without numerator and denominator needs an extension")


def reference(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """ref-2 (R5; R4 has only ele-1) and the local part of R4's ref-1 (judged at the scope's end)."""
    target = obj.get("reference")
    if not (
        _exists(obj, "reference")
        or _exists(obj, "identifier")
        or _exists(obj, "display")
        or _exists(obj, "extension")
    ):
        _fail(issues, loc, "ref-2", "a reference needs at least one of reference, identifier or display")
    if isinstance(target, str) and target.startswith("#"):
        if target == "#":
            if scope.current is not None:
                scope.current.refers_to_container = True
        else:
            scope.local_references.append((target[1:], f"{loc}.reference"))


def extension(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """ext-1: an extension has either a value or nested extensions, never both, never neither."""
    has_value = _choice_exists(obj, "value")
    has_children = _exists(obj, "extension")
    if has_value and has_children:
        _fail(issues, loc, "ext-1", "an extension has either a value or nested extensions, not both")
    elif not has_value and not has_children:
        _fail(issues, loc, "ext-1", "an extension needs a value or nested extensions")


# txt-1: the elements and attributes a narrative may use (FHIR narrative.html; as the Java validator).
NARRATIVE_ELEMENTS: Final = frozenset(
    (
        "p",
        "br",
        "div",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "a",
        "span",
        "b",
        "em",
        "i",
        "strong",
        "small",
        "big",
        "tt",
        "dfn",
        "q",
        "var",
        "abbr",
        "acronym",
        "cite",
        "blockquote",
        "hr",
        "address",
        "bdo",
        "kbd",
        "sub",
        "sup",
        "ul",
        "ol",
        "li",
        "dl",
        "dt",
        "dd",
        "pre",
        "table",
        "caption",
        "colgroup",
        "col",
        "thead",
        "tr",
        "tfoot",
        "tbody",
        "th",
        "td",
        "code",
        "samp",
        "img",
        "map",
        "area",
    )
)
_XML_ENTITIES: Final = frozenset({"amp", "lt", "gt", "quot", "apos"})
_ENTITY: Final = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
_UNSAFE_URL: Final = re.compile(r"^\s*(javascript|vbscript|data\s*:\s*text/html)", re.IGNORECASE)


def _xml_entities(text: str) -> str:
    """HTML's named entities (``&nbsp;``) as characters, so the XML parser accepts them."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in _XML_ENTITIES or name not in html.entities.name2codepoint:
            return match.group(0)
        return chr(html.entities.name2codepoint[name])

    return _ENTITY.sub(replace, text)


def narrative(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """txt-1 and txt-2: well-formed XHTML in a ``div``, basic formatting only, some content."""
    div = obj.get("div")
    if not isinstance(div, str) or not div:
        return
    where = f"{loc}.div"
    if "<!DOCTYPE" in div.upper() or "<!ENTITY" in div.upper():
        issues.add("invariant", where, f"{where}: a narrative cannot declare a DTD or entities (txt-1).")
        return
    try:
        root = ET.fromstring(_xml_entities(div))  # noqa: S314 - no DTD, so no entity expansion
    except ET.ParseError as exc:
        issues.add("value", where, f"{where}: the narrative is not well-formed XHTML ({exc}).")
        return
    except UnicodeError:
        return  # not valid Unicode: the walk reports the value
    if root.tag != f"{{{XHTML_NS}}}div":
        issues.add(
            "value",
            where,
            f'{where}: the narrative must be a <div> element in the XHTML namespace (xmlns="{XHTML_NS}").',
        )
        return
    bad: set[str] = set()
    for element in root.iter():
        name = element.tag.rsplit("}", 1)[-1] if isinstance(element.tag, str) else ""
        if not element.tag.startswith(f"{{{XHTML_NS}}}") or name not in NARRATIVE_ELEMENTS:
            bad.add(f"<{name}>")
        for attribute, value in element.attrib.items():
            attribute_name = attribute.rsplit("}", 1)[-1].lower()
            if attribute_name.startswith("on"):
                bad.add(f"the {attribute_name} attribute")
            elif attribute_name in ("href", "src") and _UNSAFE_URL.match(value):
                bad.add(f"a script URL in {attribute_name}")
    if bad:
        _fail(
            issues,
            where,
            "txt-1",
            "the narrative may only use basic HTML formatting; not allowed: " + ", ".join(sorted(bad)),
        )
    text = "".join(root.itertext())
    if not text.strip() and root.find(f".//{{{XHTML_NS}}}img") is None:
        _fail(issues, where, "txt-2", "the narrative must have some non-whitespace content")


def timing_repeat(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """tim-1, tim-2, tim-4 .. tim-10."""
    pairs = (
        ("duration", "durationUnit", "tim-1", "a duration needs a durationUnit"),
        ("period", "periodUnit", "tim-2", "a period needs a periodUnit"),
        ("periodMax", "period", "tim-6", "a periodMax needs a period"),
        ("durationMax", "duration", "tim-7", "a durationMax needs a duration"),
        ("countMax", "count", "tim-8", "a countMax needs a count"),
    )
    for present, needed, key, text in pairs:
        if _exists(obj, present) and not _exists(obj, needed):
            _fail(issues, loc, key, text)
    for name, key in (("duration", "tim-4"), ("period", "tim-5")):
        value = _number(obj.get(name))
        if value is not None and value < 0:
            _fail(issues, loc, key, f"{name} cannot be negative")
    when = obj.get("when")
    if _exists(obj, "offset"):
        meal_times = isinstance(when, list) and any(w in ("C", "CM", "CD", "CV") for w in when)
        if not _exists(obj, "when") or meal_times:
            _fail(issues, loc, "tim-9", "an offset needs a when that is not a meal (C, CM, CD, CV)")
    if _exists(obj, "timeOfDay") and _exists(obj, "when"):
        _fail(issues, loc, "tim-10", "give either timeOfDay or when, not both")


# --- resources and their backbone elements --------------------------------------------------------


def observation(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    has_value = _choice_exists(obj, "value")
    if has_value and _exists(obj, "dataAbsentReason"):
        _fail(issues, loc, "obs-6", "dataAbsentReason is only allowed when there is no value")
    if has_value:
        own = [c for c in _list(_dict(obj, "code"), "coding") if isinstance(c, dict)]
        for i, component in _items(obj.get("component")):
            if any(c in own for c in _list(_dict(component, "code"), "coding")):
                _fail(
                    issues,
                    f"{loc}.component[{i}]",
                    "obs-7",
                    "this component has the Observation's own code, so the Observation itself "
                    "cannot have a value (put it in the component)",
                )


def observation_reference_range(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "low") or _exists(obj, "high") or _exists(obj, "text")):
        _fail(issues, loc, "obs-3", "a reference range needs at least a low, a high or a text")


def patient_contact(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not any(_exists(obj, n) for n in ("name", "telecom", "address", "organization")):
        _fail(
            issues,
            loc,
            "pat-1",
            "a contact needs at least a name, telecom, address or organization",
        )


def organization(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "identifier") or _exists(obj, "name")):
        _fail(issues, loc, "org-1", "an organization needs at least a name or an identifier")
    for element, key in (("telecom", "org-3"), ("address", "org-2")):
        for i, item in _items(obj.get(element)):
            if item.get("use") == "home":
                _fail(
                    issues, f"{loc}.{element}[{i}]", key, f"the {element} of an organization cannot be 'home'"
                )


def condition(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    clinical = obj.get("clinicalStatus")
    abated = _choice_exists(obj, "abatement")
    if abated and not _has_code(clinical, CONDITION_CLINICAL, ("resolved", "remission", "inactive")):
        _fail(
            issues,
            loc,
            "con-4",
            "an abated condition needs clinicalStatus resolved, remission or inactive "
            f"(from {CONDITION_CLINICAL})",
        )
    entered_in_error = _has_code(obj.get("verificationStatus"), CONDITION_VERIFICATION, ("entered-in-error",))
    if entered_in_error and _exists(obj, "clinicalStatus"):
        _fail(issues, loc, "con-5", "a condition entered in error cannot have a clinicalStatus")


def condition_stage(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "summary") or _exists(obj, "assessment")):
        _fail(issues, loc, "con-1", "a stage needs a summary or an assessment")


def condition_evidence(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "code") or _exists(obj, "detail")):
        _fail(issues, loc, "con-2", "evidence needs a code or a detail")


def allergy_intolerance(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    entered_in_error = _has_code(obj.get("verificationStatus"), ALLERGY_VERIFICATION, ("entered-in-error",))
    if not entered_in_error and not _exists(obj, "clinicalStatus"):
        _fail(issues, loc, "ait-1", "clinicalStatus is required unless the record was entered in error")
    if entered_in_error and _exists(obj, "clinicalStatus"):
        _fail(issues, loc, "ait-2", "an allergy entered in error cannot have a clinicalStatus")


def appointment(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    start, end = _exists(obj, "start"), _exists(obj, "end")
    if start != end:
        _fail(issues, loc, "app-2", "give both start and end, or neither")
    if not (start and end) and obj.get("status") not in ("proposed", "cancelled", "waitlist"):
        _fail(issues, loc, "app-3", "only proposed, cancelled or waitlisted appointments can lack start/end")
    if _exists(obj, "cancelationReason") and obj.get("status") not in ("noshow", "cancelled"):
        _fail(issues, loc, "app-4", "a cancelationReason is only for cancelled or no-show appointments")


def appointment_participant(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "type") or _exists(obj, "actor")):
        _fail(issues, loc, "app-1", "a participant needs a type or an actor")


def composition_section(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "text") or _exists(obj, "entry") or _exists(obj, "section")):
        _fail(issues, loc, "cmp-1", "a section needs text, entries or sub-sections")
    if _exists(obj, "emptyReason") and _exists(obj, "entry"):
        _fail(issues, loc, "cmp-2", "a section with entries cannot have an emptyReason")


def service_request(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "orderDetail") and not _exists(obj, "code"):
        _fail(issues, loc, "prr-1", "orderDetail is only allowed when there is a code")


def immunization_education(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "documentType") or _exists(obj, "reference")):
        _fail(issues, loc, "imm-1", "education needs a documentType or a reference")


def care_plan_activity(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "detail") and _exists(obj, "reference"):
        _fail(issues, loc, "cpl-3", "give either a reference or a detail, not both")


def task(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """inv-1: lastModified >= authoredOn (FHIRPath ordering, see per-1)."""
    modified, authored = obj.get("lastModified"), obj.get("authoredOn")
    if not isinstance(modified, str) or not isinstance(authored, str):
        return
    a, b = temporal.parse(authored), temporal.parse(modified)
    if a is not None and b is not None:
        order = temporal.compare(a, b)
        if order is None or order > 0:
            _fail(issues, loc, "inv-1", "lastModified cannot be before authoredOn")


def audit_event_entity(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "name") and _exists(obj, "query"):
        _fail(issues, loc, "sev-1", "give either a name or a query, not both")


def medication_administration_dosage(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "dose") or _choice_exists(obj, "rate")):
        _fail(issues, loc, "mad-1", "a dosage needs a dose or a rate")


def goal_target(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _choice_exists(obj, "detail") and not _exists(obj, "measure"):
        _fail(issues, loc, "gol-1", "a target with a detail needs a measure")


def questionnaire_response_item(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "answer") and _exists(obj, "item"):
        _fail(issues, loc, "qrs-1", "nested items go under the answer or under the item, not both")


def parameters_parameter(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    part, value, resource = _exists(obj, "part"), _choice_exists(obj, "value"), _exists(obj, "resource")
    if not ((part and not value and not resource) or (not part and value != resource)):
        _fail(issues, loc, "inv-1", "a parameter has exactly one of value[x], resource or part")


def group(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "member") and obj.get("actual") is not True:
        _fail(issues, loc, "grp-1", "only an actual group (actual = true) can list members")


def consent(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "policy") or _exists(obj, "policyRule")):
        _fail(issues, loc, "ppc-1", "a consent needs a policy or a policyRule")


def appointment_response(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "participantType") or _exists(obj, "actor")):
        _fail(issues, loc, "apr-1", "a response needs a participantType or an actor")


def family_member_history(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    has_age = _choice_exists(obj, "age")
    if has_age and _choice_exists(obj, "born"):
        _fail(issues, loc, "fhs-1", "give either age[x] or born[x], not both")
    if _exists(obj, "estimatedAge") and not has_age:
        _fail(issues, loc, "fhs-2", "estimatedAge is only allowed with an age[x]")


def list_(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "emptyReason") and _exists(obj, "entry"):
        _fail(issues, loc, "lst-1", "a list with entries cannot have an emptyReason")
    entries = [entry for _, entry in _items(obj.get("entry"))]
    if obj.get("mode") != "changes" and any(_exists(e, "deleted") for e in entries):
        _fail(issues, loc, "lst-2", "entry.deleted is only allowed when the mode is 'changes'")
    if obj.get("mode") != "working" and any(_exists(e, "date") for e in entries):
        _fail(issues, loc, "lst-3", "entry.date is only allowed when the mode is 'working'")


def medication_dispense(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    """mdd-1: whenHandedOver >= whenPrepared (FHIRPath ordering, see per-1)."""
    prepared, handed_over = obj.get("whenPrepared"), obj.get("whenHandedOver")
    if not isinstance(prepared, str) or not isinstance(handed_over, str):
        return
    a, b = temporal.parse(prepared), temporal.parse(handed_over)
    if a is not None and b is not None:
        order = temporal.compare(a, b)
        if order is None or order > 0:
            _fail(issues, loc, "mdd-1", "whenHandedOver cannot be before whenPrepared")


def immunization_recommendation_item(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "vaccineCode") or _exists(obj, "targetDisease")):
        _fail(issues, loc, "imr-1", "a recommendation needs a vaccineCode or a targetDisease")


def risk_assessment_prediction(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    probability = _number(obj.get("probabilityDecimal"))
    if probability is not None and probability > 100:
        _fail(issues, loc, "ras-2", "a probability cannot be more than 100")


def coverage_eligibility_item(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "category") == _exists(obj, "productOrService"):
        _fail(
            issues,
            loc,
            "ces-1",
            "give either a category or a productOrService (billcode), not both or neither",
        )


def insurance_plan(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if not (_exists(obj, "identifier") or _exists(obj, "name")):
        _fail(issues, loc, "ipn-1", "an insurance plan needs at least a name or an identifier")


def linkage(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if len(_list(obj, "item")) < 2:
        _fail(issues, loc, "lnk-1", "a linkage needs at least two items")


def request_group_action(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if _exists(obj, "resource") == _exists(obj, "action"):
        _fail(issues, loc, "rqg-1", "an action has either a resource or nested actions, not both or neither")


def measure_report(issues: Issues, obj: dict[str, Any], loc: str, scope: Scope) -> None:
    if obj.get("type") == "data-collection" and _exists(obj, "group"):
        _fail(issues, loc, "mrp-1", "a data-collection report cannot carry groups and scores")


def _contained_meta(issues: Issues, obj: dict[str, Any], loc: str) -> None:
    meta = obj.get("meta")
    if not isinstance(meta, dict):
        return
    if _exists(meta, "versionId") or _exists(meta, "lastUpdated"):
        _fail(issues, loc, "dom-4", "a contained resource cannot have meta.versionId or meta.lastUpdated")
    if _exists(meta, "security"):
        _fail(issues, loc, "dom-5", "a contained resource cannot have security labels")


def contained_resource(issues: Issues, obj: dict[str, Any], loc: str) -> None:
    """dom-2, dom-4, dom-5 for one contained resource (dom-3 is judged at the end of its scope)."""
    if _exists(obj, "contained"):
        _fail(issues, loc, "dom-2", "a contained resource cannot contain resources itself")
    _contained_meta(issues, obj, loc)


def end_of_scope(issues: Issues, scope: Scope) -> None:
    """ref-1 and dom-3 once the whole resource has been walked."""
    ids = {c.id for c in scope.contained if c.id is not None}
    for target, where in scope.local_references:
        if target not in ids:
            _fail(issues, where, "ref-1", f"there is no contained resource with id '{target}'")
    referenced = {t for t, _ in scope.local_references} | scope.uri_targets
    for item in scope.contained:
        if item.id is None:
            _fail(issues, item.loc, "dom-3", "a contained resource needs an id to be referred to")
        elif item.id not in referenced and not item.refers_to_container:
            _fail(
                issues,
                item.loc,
                "dom-3",
                f"the contained resource '{item.id}' is not referred to from elsewhere in the "
                "resource and does not refer to it",
            )


DATA_TYPE_CHECKS: Final[Mapping[str, tuple[Check, ...]]] = {
    "Period": (period,),
    "Range": (range_,),
    "Quantity": (quantity,),
    "SimpleQuantity": (quantity,),
    "MoneyQuantity": (quantity,),
    "Age": (age,),
    "Count": (count,),
    "Distance": (distance,),
    "Duration": (duration,),
    "Attachment": (attachment,),
    "ContactPoint": (contact_point,),
    "Ratio": (ratio,),
    "Reference": (reference,),
    "Extension": (extension,),
    "Narrative": (narrative,),
    "Timing.repeat": (timing_repeat,),
}

RESOURCE_CHECKS: Final[Mapping[str, tuple[Check, ...]]] = {
    "Observation": (observation,),
    "Observation.referenceRange": (observation_reference_range,),
    "Patient.contact": (patient_contact,),
    "Organization": (organization,),
    "Condition": (condition,),
    "Condition.stage": (condition_stage,),
    "Condition.evidence": (condition_evidence,),
    "AllergyIntolerance": (allergy_intolerance,),
    "Appointment": (appointment,),
    "Appointment.participant": (appointment_participant,),
    "Composition.section": (composition_section,),
    "ServiceRequest": (service_request,),
    "Immunization.education": (immunization_education,),
    "CarePlan.activity": (care_plan_activity,),
    "Task": (task,),
    "AuditEvent.entity": (audit_event_entity,),
    "MedicationAdministration.dosage": (medication_administration_dosage,),
    "Goal.target": (goal_target,),
    "QuestionnaireResponse.item": (questionnaire_response_item,),
    "Parameters.parameter": (parameters_parameter,),
    "Group": (group,),
    "Consent": (consent,),
    "AppointmentResponse": (appointment_response,),
    "FamilyMemberHistory": (family_member_history,),
    "List": (list_,),
    "MedicationDispense": (medication_dispense,),
    "ImmunizationRecommendation.recommendation": (immunization_recommendation_item,),
    "RiskAssessment.prediction": (risk_assessment_prediction,),
    "CoverageEligibilityResponse.insurance.item": (coverage_eligibility_item,),
    "InsurancePlan": (insurance_plan,),
    "Linkage": (linkage,),
    "RequestGroup.action": (request_group_action,),
    "MeasureReport": (measure_report,),
}
