"""FHIR REST API Lambda: Powertools around the core's FHIR ``Api``."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.api.fhir_api import build_fhir_api
from ehr.bootstrap import bootstrap_fhir
from ehr.settings import FhirApiSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
app = build_fhir_api(
    bootstrap_fhir(load_settings(FhirApiSettings)), logger=logger, observe=telemetry.count_requests(metrics)
)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
