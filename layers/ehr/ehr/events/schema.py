"""The event bus and its rules: the single definition used by CDK and the local emulator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from ehr import names

# Detail types the platform publishes (docs/events.md describes each payload).
RESOURCE_CHANGED: Final = "ResourceChanged"
LAB_ORDER_REQUESTED: Final = "LabOrderRequested"
LAB_ORDER_CANCELLED: Final = "LabOrderCancelled"
LAB_ORDER_REJECTED: Final = "LabOrderRejected"
LAB_ORDER_TIMED_OUT: Final = "LabOrderTimedOut"
LAB_ORDER_DELIVERY_FAILED: Final = "LabOrderDeliveryFailed"
LAB_RESULT_AVAILABLE: Final = "LabResultAvailable"
CRITICAL_LAB_RESULT: Final = "CriticalLabResult"
CROSS_FACILITY_RECORD_UPDATED: Final = "CrossFacilityRecordUpdated"

TargetKind = Literal["lab_order_state_machine", "lab_workflow_function", "sharing_notifier_function"]


@dataclass(frozen=True)
class RuleDefinition:
    """An EventBridge rule: its pattern and which platform component it targets."""

    logical_id: str
    description: str
    event_pattern: dict[str, Any]
    target: TargetKind


ARCHIVE_RETENTION_DAYS: Final = 365

RULES: Final[tuple[RuleDefinition, ...]] = (
    RuleDefinition(
        logical_id="LabOrderRequestedRule",
        description="Start the lab-order workflow when a laboratory order is placed.",
        event_pattern={"source": [names.EVENT_SOURCE], "detail-type": [LAB_ORDER_REQUESTED]},
        target="lab_order_state_machine",
    ),
    RuleDefinition(
        logical_id="LabOrderCancelledRule",
        description="Tell a waiting lab-order workflow that the clinic cancelled its order.",
        event_pattern={"source": [names.EVENT_SOURCE], "detail-type": [LAB_ORDER_CANCELLED]},
        target="lab_workflow_function",
    ),
    RuleDefinition(
        logical_id="ResourceChangedRule",
        description="Fan committed changes out to Subscriptions and to the facilities a patient "
        "consented to share with.",
        event_pattern={"source": [names.EVENT_SOURCE], "detail-type": [RESOURCE_CHANGED]},
        target="sharing_notifier_function",
    ),
)
