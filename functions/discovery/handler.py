"""Discovery Lambda: health, OpenAPI, SMART configuration and JWKS."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.api.discovery import build_discovery_api
from ehr.settings import DiscoverySettings, load_settings

logger, tracer, metrics = telemetry.powertools()
app = build_discovery_api(
    load_settings(DiscoverySettings), logger=logger, observe=telemetry.count_requests(metrics)
)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
