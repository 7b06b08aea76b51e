"""Change publisher Lambda: the records table's stream in, change events on the bus out, and the
master patient index kept up to date with every committed Patient version."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.bootstrap import master_patient_index
from ehr.events.changes import publish_changes
from ehr.events.eventbridge import EventBridgePublisher
from ehr.settings import ChangePublisherSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
settings = load_settings(ChangePublisherSettings)
publisher = EventBridgePublisher()
patients = master_patient_index(settings)  # None when this deployment has no patient index


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # A failure raises: Lambda retries the batch (bisecting it) and the stream keeps its order.
    count = publish_changes(
        event.get("Records") or [], publisher, bus=settings.event_bus_name, patients=patients
    )
    logger.info("changes published", extra={"records": len(event.get("Records") or []), "events": count})
    telemetry.count(metrics, "ChangeEventsPublished", count)
    return {"published": count}
