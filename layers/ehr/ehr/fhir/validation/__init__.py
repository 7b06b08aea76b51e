"""FHIR R4 validation of what clients send: the checks that make what is stored valid R4.

The pydantic models of ``fhir.resources`` check structure only; this package also checks the R4
element tree (cardinality, JSON kinds, primitive formats), required value-set bindings, core
invariants (per-1, rng-2, ref-1, ext-1, ele-1, obs-6/7, pat-1, the Bundle rules, ...) and what a
batch/transaction sent to the server base needs. Every problem found is reported at once, as
OperationOutcome issues whose ``expression`` points at the element (``Patient.name[0].period``).

The client's JSON is judged as sent (``parse_json`` keeps decimals as ``Decimal``) and never
changed. See docs/validation.md for the list of checks.
"""

from ehr.fhir.validation.api import (
    known_resource_types,
    parse_json,
    validate_bundle,
    validate_resource,
)

__all__ = ["known_resource_types", "parse_json", "validate_bundle", "validate_resource"]
