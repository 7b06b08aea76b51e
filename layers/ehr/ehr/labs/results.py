"""Lab results arriving as ORU^R01, correlated with the orders the platform sent.

A lab posts results to its own HL7 endpoint (``/tenants/{lab}/hl7v2``, with its own
credentials). Each OBR's placer order number (OBR-2, else ORC-2) is looked up in the lab's
placer index, written when the order was sent:

- a match files the results in the **ordering clinic's** chart: the DiagnosticReport and its
  Observations get ``basedOn`` the ServiceRequest, their subject is the order's patient (the
  lab's copy of the demographics never creates a second patient in the clinic), and the waiting
  workflow step is resumed with the report's status, whether a result is critical, and its id;
- no match keeps the results in the lab's own tenant with a review Task (``urn:ehr:unmatched-result``)
  so nothing is dropped and someone can route them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ehr.fhir import jsonio
from ehr.hl7v2.er7 import Message
from ehr.labs.ports import LabOrders, PlacerEntry, WorkflowSignals

CRITICAL_INTERPRETATIONS = frozenset({"HH", "LL", "AA", "CRIT", "critical"})
UNMATCHED_SYSTEM = "urn:ehr:unmatched-result"


@dataclass(frozen=True)
class Correlation:
    entry: PlacerEntry
    subject: dict[str, Any] | None  # the ServiceRequest's subject in the clinic's chart


def placer_numbers(message: Message) -> list[str]:
    out: list[str] = []
    for obr in message.all("OBR"):
        value = obr.get(2)
        if not value:
            orc = next((s for s in reversed(message.segments[: obr.position - 1]) if s.name == "ORC"), None)
            value = orc.get(2) if orc is not None else ""
        if value and value not in out:
            out.append(value)
    return out


def correlate(message: Message, lab: str, orders: LabOrders) -> PlacerEntry | None:
    """The order these results answer, if one of the message's placer numbers is the lab's."""
    for placer in placer_numbers(message):
        entry = orders.by_placer(lab, placer)
        if entry is not None:
            return entry
    return None


def file_in_order(
    bundle: Mapping[str, Any], entry: PlacerEntry, subject: dict[str, Any] | None
) -> dict[str, Any]:
    """The mapped bundle rewritten for the ordering clinic: basedOn the order, subject its patient."""
    out: dict[str, Any] = jsonio.loads(jsonio.dumps(bundle))
    entries = list(out.get("entry") or [])
    if subject is not None:
        patients = {
            e.get("fullUrl")
            for e in entries
            if (e.get("resource") or {}).get("resourceType") == "Patient" and e.get("fullUrl")
        }
        entries = [e for e in entries if e.get("fullUrl") not in patients]
        for patient_url in patients:
            entries = jsonio.loads(
                jsonio.dumps(entries).replace(f'"{patient_url}"', json.dumps(subject["reference"]))
            )
    based_on = {"reference": f"ServiceRequest/{entry.service_request_id}"}
    for item in entries:
        resource = item.get("resource") or {}
        if resource.get("resourceType") in ("DiagnosticReport", "Observation"):
            refs = [r for r in resource.get("basedOn") or [] if r != based_on]
            resource["basedOn"] = [*refs, based_on]
    out["entry"] = entries
    return out


def with_review_task(bundle: Mapping[str, Any], sender: str) -> dict[str, Any]:
    """Results that match no order, kept with a Task asking someone to review and route them."""
    out: dict[str, Any] = jsonio.loads(jsonio.dumps(bundle))
    entries = list(out.get("entry") or [])
    for item in list(entries):
        resource = item.get("resource") or {}
        if resource.get("resourceType") != "DiagnosticReport":
            continue
        key = next((i.get("value") for i in resource.get("identifier") or [] if i.get("value")), None)
        if not key:
            continue
        task: dict[str, Any] = {
            "resourceType": "Task",
            "identifier": [{"system": UNMATCHED_SYSTEM, "value": str(key)}],
            "status": "requested",
            "intent": "order",
            "code": {"text": "Review a lab result that matches no order"},
            "description": f"Results from {sender} name no order sent by this platform; route or file them.",
            "focus": {"reference": item["fullUrl"]},
        }
        if isinstance(resource.get("subject"), dict):
            task["for"] = resource["subject"]
        entries.append(
            {
                "resource": task,
                "request": {"method": "PUT", "url": f"Task?identifier={UNMATCHED_SYSTEM}|{key}"},
            }
        )
    out["entry"] = entries
    return out


def summary(response: Mapping[str, Any], bundle: Mapping[str, Any]) -> dict[str, Any]:
    """What resumes the workflow: the report's status and id, and whether a result is critical."""
    status, report_id, critical = "final", "", False
    for sent, answered in zip(bundle.get("entry") or [], response.get("entry") or [], strict=False):
        resource = sent.get("resource") or {}
        kind = resource.get("resourceType")
        if kind == "DiagnosticReport" and not report_id:
            status = str(resource.get("status", "final"))
            location = str((answered.get("response") or {}).get("location", ""))
            report_id = location.split("/")[1] if "/" in location else ""
        if kind == "Observation":
            for concept in resource.get("interpretation") or []:
                for coding in concept.get("coding") or []:
                    if coding.get("code") in CRITICAL_INTERPRETATIONS:
                        critical = True
    if status in ("partial", "preliminary", "registered"):
        status = "preliminary"
    elif status in ("corrected", "amended", "appended"):
        status = "corrected"
    elif status != "cancelled":
        status = "final"
    return {"status": status, "critical": critical, "reportId": report_id}


def resume(
    orders: LabOrders, signals: WorkflowSignals, entry: PlacerEntry, result: Mapping[str, Any]
) -> bool:
    """Resume the order's waiting step with ``result``. When the step has not started waiting yet
    (results faster than the workflow), the result is kept on the order for the step to pick up;
    the write is conditional on the state it read, so a step that starts waiting in between is
    found on the next look. False when the workflow no longer waits (finished: a late correction
    is filed, nothing is resumed)."""
    output = {"event": "result", **result}
    for _ in range(5):
        order = orders.get(entry.tenant, entry.service_request_id)
        if order is None:
            return False
        if order.state == "awaiting" and order.token:
            if signals.succeed(order.token, output):
                orders.update(replace(order, token="", state="results"))
                return True
            return False
        if order.state not in ("claimed", "sent", "results"):
            return False
        if orders.set_pending(order, json.dumps(output), expected_state=order.state):
            return True
    return False
