"""Gateway audit Lambda: requests API Gateway refused at the authorizer, from its access log,
into the tenant's audit trail (a CloudWatch Logs subscription filter invokes it)."""

from typing import Any

from aws_lambda_powertools.utilities.data_classes import CloudWatchLogsEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.bootstrap import bootstrap_gateway_audit
from ehr.settings import GatewayAuditSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
auditor = bootstrap_gateway_audit(load_settings(GatewayAuditSettings))


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    logs = CloudWatchLogsEvent(event).parse_logs_data()
    # An AuditUnavailableError propagates: Lambda retries the batch, then keeps it in the
    # on-failure queue. Records already stored are recognised by their id on the retry.
    counts = auditor.record_log_events((log.timestamp, log.message) for log in logs.log_events)
    telemetry.count(metrics, "RefusalRecorded", counts.recorded)
    telemetry.count(metrics, "RefusalForUnknownTenant", counts.unknown_tenant)
    return counts.as_dict()
