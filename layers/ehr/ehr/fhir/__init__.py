"""FHIR R4 specifics: OperationOutcome errors, the CapabilityStatement, models and validation."""
