"""The steps of the lab-order workflow (``statemachines/lab_order.asl.json``), one method each.

Every step is idempotent: Step Functions retries a step after a timeout or a transient error,
so running it twice leaves the same chart. Writes are upserts on business identifiers (the
order's Task by ``urn:ehr:lab-order|{ServiceRequest id}``), status changes re-read the current
version and are skipped when already made, and the ORM sent to the lab has the same message
control id on every attempt.

The order's FHIR Task (``focus`` = the ServiceRequest) is where clients read the workflow:
``status`` (requested → accepted → in-progress → completed, or rejected / on-hold / cancelled /
failed) and ``businessStatus`` (what is happening in words).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ehr.fhir.outcome import OperationOutcomeError
from ehr.hl7v2 import orm
from ehr.labs import results, webhook
from ehr.labs.ports import (
    PARTNER_SYSTEM,
    LabOrder,
    LabOrders,
    LabOrdersUnavailableError,
    Partner,
    Partners,
    PlacerEntry,
    WorkflowSignals,
)

if TYPE_CHECKING:
    from ehr.fhir.bundles import BundleProcessor
    from ehr.store.ports import RecordStore, StoredResource

log = logging.getLogger("ehr.labs")

TASK_SYSTEM = "urn:ehr:lab-order"
ESCALATION_SYSTEM = "urn:ehr:critical-result"
LOINC = "http://loinc.org"
DEFAULT_RESULT_TIMEOUT_SECONDS = 72 * 3600
LAB_CATEGORY_CODES = frozenset({"laboratory", "108252007", "LAB"})


class TransientError(Exception):
    """Retry this step (the store is busy, a version moved under us)."""


class DeliveryError(Exception):
    """The lab's webhook could not take the message; the workflow retries, then dead-letters."""


@dataclass(frozen=True)
class OrderContext:
    tenant: str
    service_request: dict[str, Any]
    patient: dict[str, Any]
    partner: Partner
    practitioner: dict[str, Any] | None = None
    practitioner_role: dict[str, Any] | None = None
    specimen: dict[str, Any] | None = None
    coverage: dict[str, Any] | None = None
    payer: dict[str, Any] | None = None


class InvalidOrderError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LabWorkflow:
    def __init__(
        self,
        *,
        store: RecordStore,
        bundles: BundleProcessor,
        orders: LabOrders,
        partners: Partners,
        signals: WorkflowSignals,
        secret: Callable[[str], bytes],
        result_timeout_seconds: int = DEFAULT_RESULT_TIMEOUT_SECONDS,
        deliver: Callable[..., webhook.DeliveryResult] = webhook.deliver,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._bundles = bundles
        self._orders = orders
        self._partners = partners
        self._signals = signals
        self._secret = secret
        self._timeout = result_timeout_seconds
        self._deliver = deliver
        self._clock = clock or (lambda: datetime.now(UTC))

    # -- the dispatcher the Lambda handler calls -------------------------------------------------

    def run(self, event: Mapping[str, Any]) -> dict[str, Any]:
        if event.get("detail-type") == "LabOrderCancelled":  # the bus's rule, not the state machine
            detail = dict(event.get("detail") or {})
            resumed = self.cancelled(str(detail.get("tenant", "")), str(detail.get("serviceRequestId", "")))
            return {"resumed": resumed}
        step = str(event.get("step", ""))
        handler = {
            "claim": self.claim,
            "send": self.send,
            "await": self.await_result,
            "revoke": self.revoke,
            "hold": self.hold,
            "cancel": self.cancel,
            "complete": self.complete,
            "escalate": self.escalate,
            "fail": self.fail,
        }.get(step)
        if handler is None:
            raise ValueError(f"unknown workflow step {step!r}")
        try:
            return handler(event)
        except LabOrdersUnavailableError as error:
            raise TransientError("lab orders") from error
        except OperationOutcomeError as error:
            if error.status in (409, 412, 429) or error.status >= 500:
                raise TransientError(error.code) from error
            raise

    # -- steps -----------------------------------------------------------------------------------

    def claim(self, event: Mapping[str, Any]) -> dict[str, Any]:
        tenant, sr_id = str(event["tenant"]), str(event["serviceRequestId"])
        execution = str(event.get("execution", ""))
        answer = {
            "tenant": tenant,
            "serviceRequestId": sr_id,
            "taskId": "",
            "timeoutSeconds": self._timeout,
            "reason": "",
        }
        existing = self._orders.claim(LabOrder(tenant, sr_id, execution))
        if existing is not None and existing.execution != execution:
            return answer | {"outcome": "duplicate", "taskId": existing.task_id}
        try:
            context = self._context(tenant, sr_id)
            self._build_order(
                LabOrder(tenant, sr_id, execution), context
            )  # everything the ORM needs is there
        except InvalidOrderError as error:
            task_id = self._task(
                tenant, sr_id, None, status="failed", business="Order invalid", reason=error.reason
            )
            self._orders.update(LabOrder(tenant, sr_id, execution, task_id=task_id, state="failed"))
            return answer | {"outcome": "invalid", "taskId": task_id, "reason": error.reason}
        task_id = self._task(tenant, sr_id, context, status="requested", business="Order validated")
        self._orders.update(
            LabOrder(tenant, sr_id, execution, partner=context.partner.partner_id, task_id=task_id)
        )
        return answer | {"outcome": "ok", "taskId": task_id}

    def send(self, event: Mapping[str, Any]) -> dict[str, Any]:
        order = self._order(event)
        context = self._context(order.tenant, order.service_request_id)
        placer = orm.placer_order_number(context.service_request, namespace=_hd(order.tenant))
        message = self._build_order(order, context)
        # Indexed before delivery: a lab that answers at once finds the order.
        self._orders.index_placer(
            PlacerEntry(context.partner.partner_id, placer.value, order.tenant, order.service_request_id)
        )
        result = self._send(context.partner, message.encode("utf-8"), delivery_id=_control_id("O", order))
        current = self._orders.get(order.tenant, order.service_request_id) or order
        self._orders.update(
            replace(current, placer=placer.value, state="sent" if result.accepted else "rejected")
        )
        if result.accepted:
            self._set_task(order, status="accepted", business="Order accepted by the lab")
        return {
            "accepted": result.accepted,
            "reason": result.reason or result.ack_code,
            "placer": placer.value,
        }

    def await_result(self, event: Mapping[str, Any]) -> dict[str, Any]:
        order = self._order(event)
        token = str(event["token"])
        current = self._orders.get(order.tenant, order.service_request_id) or order
        after_preliminary = current.state == "results"
        if not current.pending:
            self._orders.update(replace(current, token=token, state="awaiting"))
            business = (
                "Preliminary results filed; awaiting final" if after_preliminary else "Awaiting results"
            )
            self._set_task(order, status="in-progress", business=business)
            # A result that arrived while this step was starting is kept on the order: look again.
            current = self._orders.get(order.tenant, order.service_request_id) or current
        if current.pending:  # the result came first: resume at once with it
            kept = current.pending
            if self._orders.set_pending(current, "", expected_state=current.state):
                self._orders.update(replace(current, token="", state="results"))
                self._signals.succeed(token, json.loads(kept))
                return {"waiting": False}
        return {"waiting": True}

    def revoke(self, event: Mapping[str, Any]) -> dict[str, Any]:
        order = self._order(event)
        reason = str(event.get("reason") or "The lab rejected the order.")
        self._set_request_status(order, "revoked", note=f"Rejected by the lab: {reason}")
        self._set_task(order, status="rejected", business="Rejected by the lab", reason=reason)
        self._set_state(order, "rejected")
        return {}

    def hold(self, event: Mapping[str, Any]) -> dict[str, Any]:
        order = self._order(event)
        hours = max(1, round(int(event.get("order", {}).get("timeoutSeconds", self._timeout)) / 3600))
        self._set_request_status(order, "on-hold", note=f"No result from the lab within {hours} h.")
        self._set_task(order, status="on-hold", business="No results in time", reason="Result timeout")
        self._set_state(order, "on-hold")
        return {}

    def cancel(self, event: Mapping[str, Any]) -> dict[str, Any]:
        order = self._order(event)
        context = self._context(order.tenant, order.service_request_id, for_cancel=True)
        envelope = orm.OrderEnvelope(
            sending_facility=_hd(order.tenant),
            receiving_facility=_hd(context.partner.partner_id),
            message_control_id=_control_id("C", order),
            clock=self._clock,
        )
        message = orm.build_cancel_order(envelope, _resources(context), reason="Cancelled by the clinic")
        self._send(context.partner, message.encode("utf-8"), delivery_id=_control_id("C", order))
        self._set_task(order, status="cancelled", business="Cancelled by the clinic")
        self._set_state(order, "cancelled")
        return {}

    def complete(self, event: Mapping[str, Any]) -> dict[str, Any]:
        order = self._order(event)
        result = dict(event.get("result") or {})
        report_id = str(result.get("reportId", ""))
        self._set_request_status(order, "completed")
        self._set_task(
            order,
            status="completed",
            business="Results filed" if result.get("status") != "corrected" else "Corrected results filed",
            output=f"DiagnosticReport/{report_id}" if report_id else None,
        )
        self._set_state(order, "completed")
        return {"critical": bool(result.get("critical")), "reportId": report_id}

    def escalate(self, event: Mapping[str, Any]) -> dict[str, Any]:
        order = self._order(event)
        report_id = str(event.get("reportId", ""))
        sr = self._current(order.tenant, "ServiceRequest", order.service_request_id)
        body = sr.body if sr is not None and sr.body else {}
        task: dict[str, Any] = {
            "resourceType": "Task",
            "identifier": [{"system": ESCALATION_SYSTEM, "value": report_id or order.service_request_id}],
            "status": "requested",
            "intent": "order",
            "priority": "stat",
            "code": {"text": "Critical lab result: review and act"},
            "description": "A result of this order is critical (HH, LL or AA). Review it now.",
            "focus": {
                "reference": f"DiagnosticReport/{report_id}"
                if report_id
                else f"ServiceRequest/{order.service_request_id}"
            },
            "basedOn": [{"reference": f"ServiceRequest/{order.service_request_id}"}],
            "authoredOn": _now(self._clock),
        }
        if isinstance(body.get("subject"), dict):
            task["for"] = body["subject"]
        if isinstance(body.get("requester"), dict):
            task["owner"] = body["requester"]
        self._upsert(order.tenant, task, ESCALATION_SYSTEM, report_id or order.service_request_id)
        return {}

    def fail(self, event: Mapping[str, Any]) -> dict[str, Any]:
        state = dict(event.get("input") or {})
        order = dict(state.get("order") or {})
        detail = state.get("detail") or {}
        tenant = str(order.get("tenant") or detail.get("tenant") or "")
        sr_id = str(order.get("serviceRequestId") or detail.get("serviceRequestId") or "")
        error = dict(state.get("error") or {})
        if not tenant or not sr_id:
            return {}
        reason = f"{error.get('Error', 'Error')}: {str(error.get('Cause', ''))[:200]}"
        current = self._orders.get(tenant, sr_id)
        if current is not None:
            self._set_task(current, status="failed", business="Workflow failed", reason=reason)
            self._orders.update(replace(current, state="failed"))
        return {}

    # -- signals from outside the state machine ----------------------------------------------

    def result_arrived(self, entry: PlacerEntry, summary: Mapping[str, Any]) -> bool:
        """Resume the order's waiting step with a result (see ``ehr.labs.results.resume``)."""
        return results.resume(self._orders, self._signals, entry, summary)

    def cancelled(self, tenant: str, service_request_id: str) -> bool:
        """The clinic cancelled the order: resume the waiting step towards CancelOrder."""
        order = self._orders.get(tenant, service_request_id)
        if order is None or not order.token or order.state != "awaiting":
            return False
        resumed = self._signals.succeed(order.token, {"event": "cancelled"})
        if resumed:
            self._orders.update(replace(order, token="", state="cancelling"))
        return resumed

    # -- helpers ---------------------------------------------------------------------------------

    def _build_order(self, order: LabOrder, context: OrderContext) -> str:
        envelope = orm.OrderEnvelope(
            sending_facility=_hd(order.tenant),
            receiving_facility=_hd(context.partner.partner_id),
            receiving_application=_hd(context.partner.receiving_application or context.partner.partner_id),
            message_control_id=_control_id("O", order),
            clock=self._clock,
        )
        try:
            return orm.build_new_order(envelope, _resources(context))
        except orm.OrmBuildError as error:
            raise InvalidOrderError(str(error)) from error

    def _send(self, partner: Partner, body: bytes, *, delivery_id: str) -> webhook.DeliveryResult:
        try:
            return self._deliver(
                partner.webhook_url, body, secret=self._secret(partner.secret_name), delivery_id=delivery_id
            )
        except webhook.DeliveryError as error:
            raise DeliveryError(str(error)) from error

    def _order(self, event: Mapping[str, Any]) -> LabOrder:
        order = dict(event.get("order") or {})
        tenant, sr_id = str(order.get("tenant", "")), str(order.get("serviceRequestId", ""))
        stored = self._orders.get(tenant, sr_id)
        if stored is None:
            raise ValueError("no lab order record for this execution")
        return stored

    def _set_state(self, order: LabOrder, state: str) -> None:
        current = self._orders.get(order.tenant, order.service_request_id) or order
        self._orders.update(replace(current, state=state, token=""))

    def _current(self, tenant: str, resource_type: str, resource_id: str) -> StoredResource | None:
        stored = self._store.current(tenant, resource_type, resource_id)
        return None if stored is None or stored.deleted else stored

    def _resolve(self, tenant: str, reference: Any, *types: str) -> dict[str, Any] | None:
        if not isinstance(reference, dict):
            return None
        ref = str(reference.get("reference", ""))
        if "/" not in ref:
            return None
        resource_type, resource_id = ref.split("/")[-2:]
        if types and resource_type not in types:
            return None
        stored = self._current(tenant, resource_type, resource_id)
        return dict(stored.body) if stored is not None and stored.body else None

    def _context(self, tenant: str, sr_id: str, *, for_cancel: bool = False) -> OrderContext:
        stored = self._current(tenant, "ServiceRequest", sr_id)
        if stored is None or not stored.body:
            raise InvalidOrderError(f"ServiceRequest/{sr_id} does not exist.")
        sr = dict(stored.body)
        if not for_cancel:
            if sr.get("status") != "active":
                raise InvalidOrderError(f"The order's status is {sr.get('status')!r}, not 'active'.")
            if sr.get("intent") != "order":
                raise InvalidOrderError("The order's intent is not 'order'.")
            if not _is_lab(sr):
                raise InvalidOrderError("The order's category is not laboratory.")
            if not any(
                c.get("system") == LOINC and c.get("code") for c in (sr.get("code") or {}).get("coding", [])
            ):
                raise InvalidOrderError("The order has no LOINC-coded test.")
        patient = self._resolve(tenant, sr.get("subject"), "Patient")
        if patient is None:
            raise InvalidOrderError("The order's subject is not a known Patient.")
        requester = sr.get("requester")
        practitioner = self._resolve(tenant, requester, "Practitioner")
        role = self._resolve(tenant, requester, "PractitionerRole")
        if role is not None:
            practitioner = self._resolve(tenant, role.get("practitioner"), "Practitioner")
        if practitioner is None and not for_cancel:
            raise InvalidOrderError("The order's requester is not a known Practitioner or PractitionerRole.")
        partner = self._partner(tenant, sr)
        specimens = sr.get("specimen") or []
        specimen = self._resolve(tenant, specimens[0], "Specimen") if specimens else None
        if specimens and specimen is None and not for_cancel:
            raise InvalidOrderError("The order's specimen is not a known Specimen.")
        insurance = sr.get("insurance") or []
        coverage = self._resolve(tenant, insurance[0], "Coverage") if insurance else None
        payers = (coverage or {}).get("payor") or []
        payer = self._resolve(tenant, payers[0], "Organization") if payers else None
        return OrderContext(tenant, sr, patient, partner, practitioner, role, specimen, coverage, payer)

    def _partner(self, tenant: str, sr: Mapping[str, Any]) -> Partner:
        for performer in sr.get("performer") or []:
            organization = self._resolve(tenant, performer, "Organization")
            for ident in (organization or {}).get("identifier") or []:
                if ident.get("system") == PARTNER_SYSTEM and ident.get("value"):
                    partner = self._partners.get(tenant, str(ident["value"]))
                    if partner is None:
                        raise InvalidOrderError(
                            f"Lab {ident['value']!r} is not a registered partner of this clinic."
                        )
                    return partner
        raise InvalidOrderError(
            f"The order's performer is not a lab Organization with an identifier in {PARTNER_SYSTEM}."
        )

    def _task(
        self,
        tenant: str,
        sr_id: str,
        context: OrderContext | None,
        *,
        status: str,
        business: str,
        reason: str = "",
    ) -> str:
        sr = self._current(tenant, "ServiceRequest", sr_id)
        body = dict(sr.body) if sr is not None and sr.body else {}
        task: dict[str, Any] = {
            "resourceType": "Task",
            "identifier": [{"system": TASK_SYSTEM, "value": sr_id}],
            "status": status,
            "businessStatus": {"text": business},
            "intent": "order",
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "focus": {"reference": f"ServiceRequest/{sr_id}"},
            "basedOn": [{"reference": f"ServiceRequest/{sr_id}"}],
            "authoredOn": _now(self._clock),
            "lastModified": _now(self._clock),
        }
        if isinstance(body.get("subject"), dict):
            task["for"] = body["subject"]
        if isinstance(body.get("requester"), dict):
            task["requester"] = body["requester"]
        performers = body.get("performer") or []
        if performers and isinstance(performers[0], dict):
            task["owner"] = performers[0]
        if reason:
            task["statusReason"] = {"text": reason[:500]}
        return self._upsert(tenant, task, TASK_SYSTEM, sr_id)

    def _set_task(
        self,
        order: LabOrder,
        *,
        status: str,
        business: str,
        reason: str = "",
        output: str | None = None,
    ) -> None:
        found = self._bundles.search.find(
            order.tenant,
            "Task",
            f"identifier={TASK_SYSTEM}|{order.service_request_id}",
            limit=1,
            header="Task",
        )
        if not found or not found[0].body:
            return
        task = dict(found[0].body)
        if task.get("status") == status and (task.get("businessStatus") or {}).get("text") == business:
            return  # already done by an earlier attempt of this step
        task.pop("meta", None)
        task["status"] = status
        task["businessStatus"] = {"text": business}
        task["lastModified"] = _now(self._clock)
        if reason:
            task["statusReason"] = {"text": reason[:500]}
        if output:
            task["output"] = [{"type": {"text": "DiagnosticReport"}, "valueReference": {"reference": output}}]
        self._write(order.tenant, "Task", task, found[0].version)

    def _set_request_status(self, order: LabOrder, status: str, *, note: str = "") -> None:
        stored = self._current(order.tenant, "ServiceRequest", order.service_request_id)
        if stored is None or not stored.body:
            return
        sr = dict(stored.body)
        if sr.get("status") == status:
            return
        sr.pop("meta", None)
        sr["status"] = status
        if note:
            sr["note"] = [*(sr.get("note") or []), {"text": note, "time": _now(self._clock)}]
        self._write(order.tenant, "ServiceRequest", sr, stored.version)

    def _write(self, tenant: str, resource_type: str, body: dict[str, Any], version: int) -> None:
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": body,
                    "request": {
                        "method": "PUT",
                        "url": f"{resource_type}/{body['id']}",
                        "ifMatch": f'W/"{version}"',
                    },
                }
            ],
        }
        self._bundles.process(tenant, bundle, base="")

    def _upsert(self, tenant: str, body: dict[str, Any], system: str, value: str) -> str:
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": body,
                    "request": {
                        "method": "PUT",
                        "url": f"{body['resourceType']}?identifier={system}|{value}",
                    },
                }
            ],
        }
        response = self._bundles.process(tenant, bundle, base="")
        location = str(response["entry"][0]["response"].get("location", ""))
        return location.split("/")[1] if "/" in location else ""


def _is_lab(sr: Mapping[str, Any]) -> bool:
    for category in sr.get("category") or []:
        for coding in (category or {}).get("coding") or []:
            if str(coding.get("code", "")) in LAB_CATEGORY_CODES:
                return True
    return False


def _resources(context: OrderContext) -> orm.OrderResources:
    return orm.OrderResources(
        service_request=context.service_request,
        patient=context.patient,
        practitioner=context.practitioner,
        practitioner_role=context.practitioner_role,
        specimen=context.specimen,
        coverage=context.coverage,
        payer=context.payer,
    )


def _control_id(prefix: str, order: LabOrder) -> str:
    """MSH-10 for this order's message: the same on every retry, at most 20 characters."""
    digest = hashlib.sha256(f"{order.tenant}/{order.service_request_id}".encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:19]


def _hd(value: str) -> str:
    """An HL7 namespace id (1-20 of letters, digits, space . _ -) from a tenant or partner id."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in value)[:20]
    return cleaned or "EHR"


def _now(clock: Callable[[], datetime]) -> str:
    return clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
