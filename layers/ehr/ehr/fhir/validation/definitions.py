"""The R4 element tree and required bindings, loaded from the generated data files.

``layers/ehr/codegen/generate_bindings.py`` writes ``ehr/fhir/data/validation_elements.json`` and
``ehr/fhir/data/required_bindings.json`` from the official definitions; this module turns them into
lookups the walker uses: for a structure (a resource type, a data type or a backbone element such as
``Observation.component``), which JSON keys are allowed and what each one holds. Structures are
built on first use, so a cold start pays only for the types it sees.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

DATA_DIR: Final = Path(__file__).resolve().parent.parent / "data"
ELEMENTS_FILE: Final = DATA_DIR / "validation_elements.json"
BINDINGS_FILE: Final = DATA_DIR / "required_bindings.json"

# Types whose JSON value is an object walked with a structure of its own name.
RESOURCE: Final = "Resource"
BACKBONE: Final = frozenset({"BackboneElement", "Element"})
# Profiles of Quantity used as element types; their JSON names use the base type.
PROFILE_BASE: Final[Mapping[str, str]] = {"SimpleQuantity": "Quantity", "MoneyQuantity": "Quantity"}
# Primitive types whose JSON form is a number or a boolean; every other primitive is a string.
INTEGER_TYPES: Final = frozenset({"integer", "positiveInt", "unsignedInt"})
CODED_TYPES: Final = frozenset({"code", "Coding", "CodeableConcept", "string", "uri"})


@dataclass(frozen=True, slots=True)
class ValueSet:
    url: str
    codes_by_system: Mapping[str, frozenset[str]]
    codes: frozenset[str]

    def contains(self, system: str | None, code: str) -> bool:
        if system is None:
            return code in self.codes
        codes = self.codes_by_system.get(system)
        return codes is not None and code in codes

    def describe_codes(self, limit: int = 20) -> str:
        if len(self.codes) > limit:
            return ""
        return ", ".join(sorted(self.codes))


@dataclass(frozen=True, slots=True)
class ElementInfo:
    """One JSON key of a structure: ``valueQuantity`` is the Quantity choice of ``value[x]``."""

    key: str  # the JSON property name
    name: str  # the element name in the definition (``value[x]``)
    path: str  # the definition path (``Observation.value[x]``)
    min: int
    max: int | None  # None: unbounded
    type: str  # the FHIR type this key holds
    children: str | None  # structure path of a backbone element's children
    choice: bool
    binding: ValueSet | None

    @property
    def repeats(self) -> bool:
        return self.max is None or self.max > 1


@dataclass(frozen=True, slots=True)
class RequiredElement:
    name: str  # element name for messages (``value[x]``)
    keys: tuple[str, ...]  # JSON keys any of which makes it present (incl. ``_name`` of primitives)


@dataclass(frozen=True, slots=True)
class Structure:
    path: str
    by_key: Mapping[str, ElementInfo]
    required: tuple[RequiredElement, ...]
    choices: Mapping[str, tuple[str, ...]]  # element name -> its JSON keys (only choice elements)


class Definitions:
    """Lookups over the generated files; one shared instance (see :func:`definitions`)."""

    def __init__(self, elements: Mapping[str, Any], bindings: Mapping[str, Any]) -> None:
        self.resource_types: frozenset[str] = frozenset(elements["resourceTypes"])
        self.data_types: frozenset[str] = frozenset(elements["dataTypes"])
        self.primitive_regex: dict[str, re.Pattern[str] | None] = {
            name: re.compile(regex, re.ASCII) if regex else None
            for name, regex in elements["primitiveTypes"].items()
        }
        self.primitive_types: frozenset[str] = frozenset(self.primitive_regex)
        self._raw: Mapping[str, Mapping[str, list[Any]]] = elements["structures"]
        self._binding_by_path: dict[str, str] = {
            path: url for paths in bindings["bindings"].values() for path, url in paths.items()
        }
        self._value_set_data: Mapping[str, Mapping[str, list[str]]] = bindings["valueSets"]
        self._value_sets: dict[str, ValueSet] = {}
        self._structures: dict[str, Structure] = {}
        self.skipped_value_sets: frozenset[str] = frozenset(bindings["skipped"])

    def value_set(self, url: str) -> ValueSet:
        vs = self._value_sets.get(url)
        if vs is None:
            by_system = {s: frozenset(c) for s, c in self._value_set_data[url].items()}
            vs = ValueSet(url, by_system, frozenset().union(*by_system.values()))
            self._value_sets[url] = vs
        return vs

    def has_structure(self, path: str) -> bool:
        return path in self._raw

    def structure(self, path: str) -> Structure:
        found = self._structures.get(path)
        if found is None:
            found = self._build(path)
            self._structures[path] = found
        return found

    def _build(self, path: str) -> Structure:
        by_key: dict[str, ElementInfo] = {}
        required: list[RequiredElement] = []
        choices: dict[str, tuple[str, ...]] = {}
        for name, spec in self._raw[path].items():
            minimum, maximum, types = spec[0], spec[1], spec[2]
            children = spec[3] if len(spec) > 3 else None
            element_path = f"{path}.{name}"
            url = self._binding_by_path.get(element_path)
            binding = self.value_set(url) if url is not None else None
            choice = name.endswith("[x]")
            keys: list[str] = []
            for fhir_type in types:
                if choice:
                    base = PROFILE_BASE.get(fhir_type, fhir_type)
                    key = name[:-3] + base[0].upper() + base[1:]
                else:
                    key = name
                by_key[key] = ElementInfo(
                    key=key,
                    name=name,
                    path=element_path,
                    min=minimum,
                    max=None if maximum < 0 else maximum,
                    type=fhir_type,
                    children=children,
                    choice=choice,
                    binding=binding if fhir_type in CODED_TYPES else None,
                )
                keys.append(key)
                if fhir_type in self.primitive_types:
                    keys.append("_" + key)
            if choice:
                choices[name] = tuple(k for k in keys if not k.startswith("_"))
            if minimum > 0:
                required.append(RequiredElement(name, tuple(keys)))
        return Structure(path, by_key, tuple(required), choices)


@cache
def definitions() -> Definitions:
    elements = json.loads(ELEMENTS_FILE.read_bytes())
    bindings = json.loads(BINDINGS_FILE.read_bytes())
    return Definitions(elements, bindings)
