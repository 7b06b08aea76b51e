"""HL7 v2 inbound Lambda: Powertools around the core's HL7 v2 ``Api``."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.api.hl7v2_api import build_hl7v2_api
from ehr.bootstrap import bootstrap_hl7v2
from ehr.settings import Hl7v2InboundSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
app = build_hl7v2_api(
    *bootstrap_hl7v2(load_settings(Hl7v2InboundSettings)),
    logger=logger,
    observe=telemetry.count_requests(metrics),
)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
