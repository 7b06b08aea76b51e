"""Audit archiver Lambda: the audit table's stream into the Object Lock bucket (partial batch response)."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from ehr import telemetry
from ehr.audit_archive import build_archiver
from ehr.settings import AuditArchiverSettings, load_settings

logger, tracer, metrics = telemetry.powertools()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
archiver = build_archiver(
    load_settings(AuditArchiverSettings),
    observe=lambda name: metrics.add_metric(name=name, unit=MetricUnit.Count, value=1),
)


def archive(record: DynamoDBRecord) -> None:
    archiver.archive(record.raw_event)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=archive, processor=processor, context=context)
