"""FHIR R4 search: parameters, index terms, query parsing, index plans and matching."""
