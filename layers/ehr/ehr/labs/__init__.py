"""The lab-order workflow: orders to partner labs as HL7 ORM, results back as ORU, filed in the chart."""
