"""Stream records of the records table → the events the bus gets (identifiers only)."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

from ehr.events.changes import InMemoryEventPublisher, committed, publish_changes

ORDER = {
    "resourceType": "ServiceRequest",
    "id": "sr-1",
    "status": "active",
    "intent": "order",
    "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
    "subject": {"reference": "Patient/p-1", "display": "Secret Name"},
}


def image(
    body: dict[str, Any] | None, version: int, *, pending: bool = False, patients: tuple[str, ...] = ("p-1",)
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": {"S": f"T#clinic-a#{(body or ORDER)['resourceType']}#{(body or ORDER)['id']}"},
        "sk": {"S": "CUR"},
        "rt": {"S": (body or ORDER)["resourceType"]},
        "rid": {"S": (body or ORDER)["id"]},
        "v": {"N": str(version)},
        "op": {"S": "create" if version == 1 else "update"},
        "lu": {"S": "2026-01-01T00:00:00Z"},
        "cp": {"SS": list(patients)},
    }
    if body is not None:
        item["b"] = {"B": base64.b64encode(zlib.compress(json.dumps(body).encode())).decode()}
    if pending:
        item["p_v"] = {"N": str(version + 1)}
    return item


def record(new: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"NewImage": new}
    if old is not None:
        data["OldImage"] = old
    return {"eventName": "MODIFY" if old else "INSERT", "dynamodb": data}


def published(*records: dict[str, Any]) -> list[dict[str, Any]]:
    bus = InMemoryEventPublisher()
    publish_changes(records, bus, bus="bus")
    return [{"type": e["DetailType"], "detail": json.loads(e["Detail"])} for e in bus.events]


def test_a_new_version_is_announced_with_ids_only() -> None:
    events = published(record(image({**ORDER, "intent": "plan"}, 1)))
    assert events == [
        {
            "type": "ResourceChanged",
            "detail": {
                "tenant": "clinic-a",
                "resourceType": "ServiceRequest",
                "id": "sr-1",
                "versionId": "1",
                "operation": "create",
                "lastUpdated": "2026-01-01T00:00:00Z",
                "patients": ["Patient/p-1"],
            },
        }
    ]
    assert "Secret Name" not in json.dumps(events)


def test_a_lock_of_the_current_pointer_is_not_a_change() -> None:
    # a staged commit locks the pointer (pending attributes, same version): nothing committed yet
    assert published(record(image(ORDER, 3, pending=True), old=image(ORDER, 3))) == []
    assert committed([record({"pk": {"S": "T#clinic-a#IX#x"}, "sk": {"S": "abc"}})]) == []


def test_an_active_lab_order_is_requested_once_and_a_revocation_cancels_it() -> None:
    created = published(record(image(ORDER, 1)))
    assert [e["type"] for e in created] == ["ResourceChanged", "LabOrderRequested"]
    assert created[1]["detail"] == {"tenant": "clinic-a", "serviceRequestId": "sr-1", "versionId": "1"}
    # a later edit of the still-active order does not request it again
    assert [e["type"] for e in published(record(image(ORDER, 2), old=image(ORDER, 1)))] == ["ResourceChanged"]
    revoked = published(record(image({**ORDER, "status": "revoked"}, 3), old=image(ORDER, 2)))
    assert [e["type"] for e in revoked] == ["ResourceChanged", "LabOrderCancelled"]
