"""Committed changes of the records table, as events on the platform's bus.

The records table's stream carries every item write. A resource version is committed when its
current pointer (``sk = CUR``) gets a new version number: a transaction writes it together with
the version, and a staged commit first locks the pointer (pending attributes, same version) and
only then promotes it. So the publisher announces exactly the versions that committed, each once
per stream delivery, and never a write that was rolled back; because it reads the stream, nothing
committed can be missed when the API's own process dies right after the commit.

Events carry identifiers only, never PHI:

- ``ResourceChanged`` for every committed version: tenant, type, id, version, operation (create,
  update, delete), lastUpdated, and the ids of the patients whose compartment holds it;
- ``LabOrderRequested`` when a laboratory ServiceRequest with intent ``order`` becomes ``active``
  (its first active version): the lab-order workflow's rule starts an execution for it;
- ``LabOrderCancelled`` when such an order moves to ``revoked`` (or ``entered-in-error``): the
  waiting workflow sends the lab a cancellation.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ehr import names
from ehr.events.schema import LAB_ORDER_CANCELLED, LAB_ORDER_REQUESTED, RESOURCE_CHANGED

LAB_CATEGORY_CODES = frozenset({"laboratory", "108252007", "LAB"})
CANCELLED_STATUSES = frozenset({"revoked", "entered-in-error"})


@dataclass(frozen=True)
class Change:
    tenant: str
    resource_type: str
    resource_id: str
    version: int
    operation: str
    last_updated: str
    patients: tuple[str, ...]
    body: dict[str, Any] | None
    previous: dict[str, Any] | None


class EventPublisher(Protocol):
    def publish(self, events: Sequence[dict[str, Any]]) -> None:
        """Put the events on the bus or raise (the stream batch is then retried)."""
        ...


def _value(attribute: Mapping[str, Any] | None) -> Any:
    """A DynamoDB-JSON attribute value (as the stream event carries it) as Python."""
    if not attribute:
        return None
    kind, value = next(iter(attribute.items()))
    if kind == "N":
        return int(value) if str(value).lstrip("-").isdigit() else float(value)
    if kind == "B":
        return base64.b64decode(value) if isinstance(value, str) else bytes(value)
    if kind == "SS":
        return list(value)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    return value


def _body(image: Mapping[str, Any]) -> dict[str, Any] | None:
    blob = _value(image.get("b"))
    if not blob:
        return None
    try:
        body = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError):
        return None
    return body if isinstance(body, dict) else None


def committed(records: Iterable[Mapping[str, Any]]) -> list[Change]:
    """The committed resource versions of a batch of stream records (Lambda's event shape)."""
    out: list[Change] = []
    for record in records:
        data = record.get("dynamodb") or {}
        new = data.get("NewImage") or {}
        old = data.get("OldImage") or {}
        if _value(new.get("sk")) != "CUR" or _value(new.get("v")) is None:
            continue
        version = int(_value(new.get("v")))
        if old and _value(old.get("v")) == version:
            continue  # a lock or an unlock of the pointer (staged commit), not a new version
        pk = str(_value(new.get("pk")))
        parts = pk.split("#")
        if len(parts) < 4 or parts[0] != "T":
            continue
        out.append(
            Change(
                tenant=parts[1],
                resource_type=str(_value(new.get("rt")) or parts[2]),
                resource_id=str(_value(new.get("rid")) or parts[3]),
                version=version,
                operation=str(_value(new.get("op")) or "update"),
                last_updated=str(_value(new.get("lu")) or ""),
                patients=tuple(sorted(_value(new.get("cp")) or ())),
                body=_body(new),
                previous=_body(old) if old else None,
            )
        )
    return out


def _is_lab_order(body: Mapping[str, Any] | None) -> bool:
    if not body or body.get("intent") != "order":
        return False
    for category in body.get("category") or []:
        for coding in (category or {}).get("coding") or []:
            if str(coding.get("code", "")) in LAB_CATEGORY_CODES:
                return True
    return False


def events(change: Change, *, bus: str) -> list[dict[str, Any]]:
    """The EventBridge entries announcing ``change`` (PutEvents shape)."""
    base = {"tenant": change.tenant, "resourceType": change.resource_type, "id": change.resource_id}
    detail = base | {
        "versionId": str(change.version),
        "operation": change.operation,
        "lastUpdated": change.last_updated,
        "patients": [f"Patient/{p}" for p in change.patients],
    }
    entries = [_entry(RESOURCE_CHANGED, detail, bus)]
    if change.resource_type == "ServiceRequest" and _is_lab_order(change.body):
        assert change.body is not None
        status = change.body.get("status")
        before = (change.previous or {}).get("status")
        order = {
            "tenant": change.tenant,
            "serviceRequestId": change.resource_id,
            "versionId": str(change.version),
        }
        if status == "active" and before != "active":
            entries.append(_entry(LAB_ORDER_REQUESTED, order, bus))
        elif (
            status in CANCELLED_STATUSES and before not in CANCELLED_STATUSES and change.previous is not None
        ):
            entries.append(_entry(LAB_ORDER_CANCELLED, order, bus))
    return entries


def _entry(detail_type: str, detail: dict[str, Any], bus: str) -> dict[str, Any]:
    return {
        "EventBusName": bus,
        "Source": names.EVENT_SOURCE,
        "DetailType": detail_type,
        "Detail": json.dumps(detail, separators=(",", ":")),
    }


class PatientIndexer(Protocol):
    """The master patient index as the publisher feeds it (``ehr.sharing.mpi``)."""

    def record(self, tenant: str, patient_id: str, version: int, body: dict[str, Any] | None) -> None: ...


def publish_changes(
    records: Iterable[Mapping[str, Any]],
    publisher: EventPublisher,
    *,
    bus: str,
    patients: PatientIndexer | None = None,
) -> int:
    """Announce every committed version of the batch; returns how many events were put.

    With ``patients``, every committed Patient version first updates the master patient index,
    so a ``ResourceChanged`` consumer already finds the person linked; a failure raises and the
    batch is retried (indexing is idempotent per version)."""
    changes = committed(records)
    if patients is not None:
        for change in changes:
            if change.resource_type == "Patient":
                body = None if change.operation == "delete" else change.body
                patients.record(change.tenant, change.resource_id, change.version, body)
    entries = [e for change in changes for e in events(change, bus=bus)]
    for start in range(0, len(entries), 10):  # PutEvents takes at most 10 entries
        publisher.publish(entries[start : start + 10])
    return len(entries)


class InMemoryEventPublisher:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, events: Sequence[dict[str, Any]]) -> None:
        self.events.extend(events)


class PublishError(Exception):
    """Some events were not accepted by the bus; the batch is retried."""
