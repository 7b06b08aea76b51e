"""Lab-order workflow Lambda: the Task states of statemachines/lab_order.asl.json, one step each."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.bootstrap import bootstrap_lab_workflow
from ehr.settings import LabWorkflowSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
workflow = bootstrap_lab_workflow(load_settings(LabWorkflowSettings))


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    step = str(event.get("step") or event.get("detail-type") or "unknown")
    logger.info("lab workflow step", extra={"step": step})
    result = workflow.run(event)
    telemetry.count(metrics, f"LabOrder{step[:1].upper()}{step[1:]}StepDone")
    return result
