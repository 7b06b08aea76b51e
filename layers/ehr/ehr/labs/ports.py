"""Ports of the lab-order workflow, with in-memory fakes kept beside them.

- ``LabOrders``: one record per ordered ServiceRequest (who runs it, its placer number, the task
  token of the step waiting for results), and the placer-number index a lab's results are
  correlated by. Claims are conditional, so one ServiceRequest never runs two workflows.
- ``Partners``: the lab partners a tenant sends orders to (webhook URL and the name of the HMAC
  secret), keyed by the partner id in ``urn:ehr:partner|<id>``.
- ``WorkflowSignals``: resume (or fail) a waiting workflow step by its task token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ehr import names

PARTNER_SYSTEM = names.PARTNER_SYSTEM


class LabOrdersUnavailableError(Exception):
    """The order registry cannot be read or written now; retry later."""


@dataclass(frozen=True)
class LabOrder:
    tenant: str
    service_request_id: str
    execution: str
    partner: str = ""
    placer: str = ""
    task_id: str = ""
    token: str = ""  # the waiting step's task token, while results are awaited
    state: str = (
        "claimed"  # claimed, sent, awaiting, results, completed, rejected, on-hold, cancelled, failed
    )
    pending: str = ""  # a result (JSON) that arrived before the workflow started waiting for it


@dataclass(frozen=True)
class PlacerEntry:
    partner: str
    placer: str
    tenant: str
    service_request_id: str


@dataclass(frozen=True)
class Partner:
    partner_id: str
    webhook_url: str
    secret_name: str
    receiving_application: str = ""


class LabOrders(Protocol):
    def claim(self, order: LabOrder) -> LabOrder | None:
        """Record ``order`` unless its ServiceRequest has one: None if claimed now, else the existing."""
        ...

    def get(self, tenant: str, service_request_id: str) -> LabOrder | None: ...

    def update(self, order: LabOrder) -> None:
        """Write every field but ``pending``, which only ``set_pending`` changes."""
        ...

    def set_pending(self, order: LabOrder, value: str, *, expected_state: str) -> bool:
        """Set ``pending`` if the stored state is still ``expected_state``; False if it moved on."""
        ...

    def index_placer(self, entry: PlacerEntry) -> None: ...

    def by_placer(self, partner: str, placer: str) -> PlacerEntry | None: ...


class Partners(Protocol):
    def get(self, tenant: str, partner_id: str) -> Partner | None: ...

    def register(self, tenant: str, partner: Partner) -> None: ...


class WorkflowSignals(Protocol):
    def succeed(self, token: str, output: dict[str, Any]) -> bool:
        """Resume the step waiting on ``token``; False if no step waits on it any more."""
        ...


@dataclass
class InMemoryLabOrders:
    orders: dict[tuple[str, str], LabOrder] = field(default_factory=dict)
    placers: dict[tuple[str, str], PlacerEntry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, order: LabOrder) -> LabOrder | None:
        with self._lock:
            key = (order.tenant, order.service_request_id)
            if key in self.orders:
                return self.orders[key]
            self.orders[key] = order
            return None

    def get(self, tenant: str, service_request_id: str) -> LabOrder | None:
        return self.orders.get((tenant, service_request_id))

    def update(self, order: LabOrder) -> None:
        with self._lock:
            key = (order.tenant, order.service_request_id)
            kept = self.orders[key].pending if key in self.orders else ""
            self.orders[key] = replace(order, pending=kept)

    def set_pending(self, order: LabOrder, value: str, *, expected_state: str) -> bool:
        with self._lock:
            key = (order.tenant, order.service_request_id)
            current = self.orders.get(key)
            if current is None or current.state != expected_state:
                return False
            self.orders[key] = replace(current, pending=value)
            return True

    def index_placer(self, entry: PlacerEntry) -> None:
        self.placers[(entry.partner, entry.placer)] = entry

    def by_placer(self, partner: str, placer: str) -> PlacerEntry | None:
        return self.placers.get((partner, placer))


@dataclass
class InMemoryPartners:
    partners: dict[tuple[str, str], Partner] = field(default_factory=dict)

    def get(self, tenant: str, partner_id: str) -> Partner | None:
        return self.partners.get((tenant, partner_id))

    def register(self, tenant: str, partner: Partner) -> None:
        self.partners[(tenant, partner.partner_id)] = partner


@dataclass
class RecordingSignals:
    """A fake that records what would resume which step (and can run a callback, as moto does)."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    on_signal: Callable[[str, dict[str, Any]], bool] | None = None

    def succeed(self, token: str, output: dict[str, Any]) -> bool:
        self.sent.append((token, output))
        return self.on_signal(token, output) if self.on_signal else True
