"""Document verifier Lambda: an S3 "Object Created" event (EventBridge) in, the DocumentReference
set ``final`` or ``entered-in-error`` (``ehr.documents.verify``). Invoked asynchronously: a failure
raises, Lambda retries, and what still fails lands in the function's dead-letter queue."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.bootstrap import bootstrap_verifier
from ehr.documents.verify import object_keys
from ehr.settings import DocumentVerifierSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
settings = load_settings(DocumentVerifierSettings)
verifier = bootstrap_verifier(settings)

METRICS = {"final": "DocumentVerified", "entered-in-error": "DocumentRejected"}


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    results = []
    for bucket, key in object_keys(event):
        if bucket != settings.documents_bucket:
            continue
        outcome = verifier.verify_key(key)
        if outcome.result in METRICS:
            metrics.add_metric(name=METRICS[outcome.result], unit=MetricUnit.Count, value=1)
        results.append(outcome.result)
    return {"results": results}
