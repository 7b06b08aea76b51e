"""Sharing notifier Lambda: ``ResourceChanged`` events in; Subscription webhooks and
cross-facility notifications out (``ehr.sharing.notify``)."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.bootstrap import bootstrap_notifier
from ehr.settings import SharingNotifierSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
notifier = bootstrap_notifier(load_settings(SharingNotifierSettings))


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Delivery failures are handled inside (retries, dead letter, status on the Subscription);
    # only an unavailable store raises, and EventBridge's retry policy then redelivers the event.
    report = notifier.handle(event)
    logger.info(
        "change fanned out",
        extra={
            "delivered": len(report.delivered),
            "failed": len(report.failed),
            "crossFacilityEvents": len(report.events),
        },
    )
    telemetry.count(metrics, "SubscriptionNotificationsDelivered", len(report.delivered))
    telemetry.count(metrics, "SubscriptionNotificationsFailed", len(report.failed))
    telemetry.count(metrics, "CrossFacilityNotifications", len(report.events))
    return {"delivered": len(report.delivered), "failed": len(report.failed), "events": len(report.events)}
