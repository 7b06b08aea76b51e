"""API Gateway TOKEN authorizer Lambda: verifies the bearer JWT at the edge."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.bootstrap import authenticator
from ehr.security.authorizer import UnauthorizedError, authorize_token_event
from ehr.settings import AuthorizerSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
authenticate = authenticator(load_settings(AuthorizerSettings))


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        policy = authorize_token_event(event, authenticate)
    except UnauthorizedError:
        telemetry.count(metrics, "TokenRejected")
        raise
    telemetry.count(metrics, "TokenAccepted")
    return policy
