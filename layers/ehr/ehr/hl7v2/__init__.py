"""HL7 v2: normalise and parse ER7, build ACKs, map v2 messages to FHIR, build outbound ORMs."""
