"""Cognito pre token generation trigger (V3_0): the tenant an administrator bound to the app client
goes into the access token's tenant claim; nothing the client sends is read
(``ehr.security.cognito_claims``)."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.security.cognito_claims import build_token_customizer
from ehr.settings import TokenCustomizerSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
customize = build_token_customizer(load_settings(TokenCustomizerSettings))


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # A client whose name cannot be read raises: Cognito then refuses the token request (fail closed).
    decision = customize(event)
    ids = {"clientId": decision.client_id, "userPoolId": decision.user_pool_id, "tenant": decision.tenant}
    if decision.tenant:
        logger.info("tenant claim issued", extra=ids)
    else:
        logger.warning(
            "no tenant claim: %s", decision.reason, extra={**ids, "trigger": decision.trigger_source}
        )
    telemetry.count(metrics, "TenantClaimIssued" if decision.tenant else "TenantClaimWithheld")
    return event
