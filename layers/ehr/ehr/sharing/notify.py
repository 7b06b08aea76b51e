"""Fan-out of committed changes: FHIR Subscriptions and cross-facility notifications.

Input: the ``ResourceChanged`` events the change publisher puts on the bus (ids only; it reads
the records table's stream, so only committed versions are announced). For each one:

1. the tenant's own active Subscriptions whose criteria match the changed version are notified
   (rest-hook, HMAC-signed, retried with back-off; a delivery that still fails is dead-lettered
   and shown on the Subscription as ``status: error`` with the reason in ``error``);
2. for every patient the resource belongs to, the master patient index names the same person's
   records at other facilities; each facility whose access the patient's Consent at the owning
   facility permits for this resource type (``ehr.sharing.consent``, evaluated now — a revoked
   consent stops notifications at once) gets
   - a ``CrossFacilityRecordUpdated`` event on the bus (ids only: the receiving tenant, its own
     patient reference, the source tenant, the resource type, id and version), and
   - its own Subscriptions evaluated against the change, with its patient standing for the
     owner's patient: B's ``Observation?patient={B's id}`` fires for A's Observation of the
     same person.

Nothing here puts PHI in an event or a webhook body: identifiers, types and versions only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ehr import names
from ehr.events.schema import CROSS_FACILITY_RECORD_UPDATED, RESOURCE_CHANGED
from ehr.sharing.consent import DEFAULT_PURPOSE, ConsentEvaluator, consents_in

if TYPE_CHECKING:
    from ehr.events.changes import EventPublisher
    from ehr.fhir.searching import SearchEngine
    from ehr.fhir.service import FhirService
    from ehr.sharing.mpi import MasterPatientIndex
    from ehr.sharing.subscriptions import DeadLetters, DeliveryResult, SubscriptionDeliverer
    from ehr.store.ports import StoredResource

log = logging.getLogger(__name__)
MAX_SUBSCRIPTIONS: Final = 1000
NOTIFIED_STATUSES: Final = ("active", "error")


@dataclass
class FanOutReport:
    """What one change caused (for logs and tests; identifiers only)."""

    delivered: list[str] = field(default_factory=list)  # "{tenant}/Subscription/{id}"
    failed: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


class Notifier:
    def __init__(
        self,
        *,
        fhir: FhirService,
        search: SearchEngine,
        mpi: MasterPatientIndex | None,
        deliverer: SubscriptionDeliverer,
        dead_letters: DeadLetters,
        publisher: EventPublisher,
        bus: str,
        clock: Callable[[], str],
    ) -> None:
        self.fhir = fhir
        self.store = fhir.store
        self.search = search
        self.mpi = mpi
        self.deliverer = deliverer
        self.dead_letters = dead_letters
        self.publisher = publisher
        self.bus = bus
        self.consents = ConsentEvaluator(self.store, consents_in(search), clock=clock)
        self._subscriptions: dict[str, list[StoredResource]] = {}

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, event: Mapping[str, Any]) -> FanOutReport:
        """One EventBridge event (the rule's target input)."""
        report = FanOutReport()
        if event.get("detail-type") != RESOURCE_CHANGED:
            return report
        detail = event.get("detail") or {}
        if isinstance(detail, str):
            detail = json.loads(detail)
        tenant = str(detail.get("tenant") or "")
        resource_type = str(detail.get("resourceType") or "")
        resource_id = str(detail.get("id") or "")
        version = str(detail.get("versionId") or "")
        if not (tenant and resource_type and resource_id and version.isdigit()):
            return report
        if detail.get("operation") == "delete":
            return report  # criteria cannot match a deletion; nothing to fetch
        stored = self.store.version(tenant, resource_type, resource_id, int(version))
        if stored is None or stored.body is None:
            return report
        self._subscriptions = {}
        self._notify(tenant, stored, tenant, {}, report)
        patients = [str(p).removeprefix("Patient/") for p in detail.get("patients") or []]
        if resource_type == "Patient" and resource_id not in patients:
            patients.append(resource_id)
        if self.mpi is not None:
            self._cross_facility(tenant, stored, patients, report)
        if report.events:
            for start in range(0, len(report.events), 10):
                self.publisher.publish(report.events[start : start + 10])
        return report

    # -- cross-facility ------------------------------------------------------------------------

    def _cross_facility(
        self, owner: str, stored: StoredResource, patients: Sequence[str], report: FanOutReport
    ) -> None:
        assert self.mpi is not None
        for patient_id in patients:
            for key in self.mpi.linked(owner, patient_id):
                if key.tenant == owner:
                    continue
                grant = self.consents.grant(owner, patient_id, key.tenant, DEFAULT_PURPOSE)
                if not grant.permits(stored.resource_type):
                    continue
                report.events.append(
                    {
                        "EventBusName": self.bus,
                        "Source": names.EVENT_SOURCE,
                        "DetailType": CROSS_FACILITY_RECORD_UPDATED,
                        "Detail": json.dumps(
                            {
                                "tenant": key.tenant,
                                "patient": f"Patient/{key.patient_id}",
                                "sourceTenant": owner,
                                "resourceType": stored.resource_type,
                                "id": stored.id,
                                "versionId": str(stored.version),
                                "consents": list(grant.consents),
                            },
                            separators=(",", ":"),
                        ),
                    }
                )
                aliases = {f"Patient/{key.patient_id}": f"Patient/{patient_id}"}
                self._notify(key.tenant, stored, owner, aliases, report)

    # -- subscriptions -------------------------------------------------------------------------

    def _notify(
        self,
        subscriber: str,
        stored: StoredResource,
        owner: str,
        aliases: Mapping[str, str],
        report: FanOutReport,
    ) -> None:
        from ehr.fhir.outcome import OperationOutcomeError
        from ehr.sharing.subscriptions import Notification, is_deliverable, parse_criteria

        assert stored.body is not None
        for subscription in self._active_subscriptions(subscriber):
            body = subscription.body or {}
            if not is_deliverable(body):
                continue  # past Subscription.end
            try:
                criteria = parse_criteria(str(body.get("criteria") or ""))
            except OperationOutcomeError:
                log.warning("subscription criteria no longer parse", extra={"subscription": subscription.id})
                continue
            if criteria.resource_type != stored.resource_type:
                continue
            if not criteria.matches(stored.body, patient_aliases=aliases):
                continue
            notification = Notification(
                tenant=subscriber,
                subscription_id=subscription.id,
                focus=stored.reference,
                focus_tenant=owner,
                event_number=stored.version,
                operation=stored.operation,
                version=stored.version,
            )
            result = self.deliverer.deliver(body, notification)
            label = f"{subscriber}/Subscription/{subscription.id}"
            if result.delivered:
                report.delivered.append(label)
            else:
                report.failed.append(label)
                self.dead_letters.put(notification, result)
            self._record_status(subscriber, subscription, result)

    def _record_status(self, tenant: str, subscription: StoredResource, result: DeliveryResult) -> None:
        from ehr.fhir.outcome import OperationOutcomeError
        from ehr.sharing.subscriptions import delivery_status_update

        updated = delivery_status_update(subscription.body or {}, result)
        if updated is None:
            return
        try:
            self.fhir.update(
                tenant,
                "Subscription",
                subscription.id,
                updated,
                if_match=f'W/"{subscription.version}"',
            )
        except OperationOutcomeError:
            return  # changed meanwhile (a client edited it): the client's version stands
        self._subscriptions.pop(tenant, None)

    def _active_subscriptions(self, tenant: str) -> list[StoredResource]:
        if tenant not in self._subscriptions:
            page = self.search.search(
                tenant,
                "Subscription",
                {"status": [",".join(NOTIFIED_STATUSES)], "_count": [str(MAX_SUBSCRIPTIONS)]},
                base="",
                strict=False,
            )
            self._subscriptions[tenant] = [r for r in page.resources if r.resource_type == "Subscription"]
        return self._subscriptions[tenant]
