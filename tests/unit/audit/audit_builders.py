"""Builders of audit records and of the DynamoDB stream changes their items produce.

Identifiers only, and obviously fake: tenants ``clinic-a``/``clinic-b``, patients ``pat-*``.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from ehr.security.audit import AuditRecord
from ehr.store.audit_dynamo import (
    DAY_KIND,
    PATIENT_KIND,
    audit_sk,
    day_pk,
    pack_record,
    patient_pk,
    recorded_key,
)

STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/audit/stream/2024-04-30T08:00:00.000"


def audit_record(**overrides: Any) -> AuditRecord:
    """A successful read of ``Patient/pat-1`` by a practitioner's app; ``overrides`` replace fields."""
    values: dict[str, Any] = {
        "id": "rec-0001",
        "tenant": "clinic-a",
        "recorded": "2024-05-01T09:30:00.123456Z",
        "action": "R",
        "subtype": "read",
        "outcome": "0",
        "status": 200,
        "client_id": "clinic-a-portal",
        "user": "user-3f1e9a7c",
        "fhir_user": "Practitioner/prac-7",
        "source_ip": "198.51.100.23",
        "request_id": "req-0001",
        "purpose_of_use": "TREAT",
        "entities": ("Patient/pat-1",),
        "patients": ("pat-1",),
        "resource_type": "Patient",
    }
    values.update(overrides)
    return AuditRecord(**values)


def renamed(record: AuditRecord, **changes: Any) -> AuditRecord:
    return dataclasses.replace(record, **changes)


def item_image(record: AuditRecord, *, patient: str | None = None) -> dict[str, Any]:
    """The NewImage (DynamoDB JSON) of the record's day item, or of its copy for ``patient``."""
    if patient is None:
        pk, kind = day_pk(record.tenant, recorded_key(record.recorded)[:10]), DAY_KIND
    else:
        pk, kind = patient_pk(record.tenant, patient), PATIENT_KIND
    return {
        "pk": {"S": pk},
        "sk": {"S": audit_sk(record)},
        "kind": {"S": kind},
        "tenant": {"S": record.tenant},
        "rid": {"S": record.id},
        "r": {"B": base64.b64encode(pack_record(record)).decode("ascii")},
    }


def stream_change(
    record: AuditRecord | None = None,
    *,
    sequence: str,
    event_name: str = "INSERT",
    patient: str | None = None,
    image: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One record of a Lambda DynamoDB-stream event, as the event source mapping delivers it."""
    if image is None:
        assert record is not None
        image = item_image(record, patient=patient)
    data: dict[str, Any] = {
        "ApproximateCreationDateTime": 1714555800,
        "Keys": {"pk": image["pk"], "sk": image["sk"]},
        "SequenceNumber": sequence,
        "SizeBytes": 600,
        "StreamViewType": "NEW_IMAGE",
    }
    if event_name != "REMOVE":
        data["NewImage"] = image
    return {
        "eventID": f"event-{sequence}",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": data,
        "eventSourceARN": STREAM_ARN,
    }
