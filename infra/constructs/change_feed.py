"""The records table's change feed: its DynamoDB stream, consumed by the ``change_publisher``
function (which puts ``ResourceChanged`` and lab-order events on the platform bus), and the queue
of batches it could not publish."""

from __future__ import annotations

from typing import Final

from aws_cdk import Duration, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ehr.store.keys import CURRENT
from ehr.store.schema import RECORDS_TABLE
from infra.config import EnvironmentConfig
from infra.constructs.audit_archive import stream_consumer_statements
from infra.constructs.nag import acknowledge
from infra.constructs.queues import dead_letter_queue

CHANGE_BATCH_SIZE: Final = 100
CHANGE_RETRY_ATTEMPTS: Final = 10
CHANGE_MAX_RECORD_AGE: Final = Duration.hours(12)  # of the stream's 24 h, half is left to replay by hand
# Only the current-version pointers (``sk = CUR``) announce a committed version; every other item
# of a write (versions, index and compartment items) is filtered out before Lambda is invoked.
# ``ehr.events.changes.committed`` skips the same records, so the filter only saves invocations.
CURRENT_POINTER_FILTER: Final = {
    "dynamodb": {
        "NewImage": {
            RECORDS_TABLE.sort_key or "sk": {RECORDS_TABLE.key_type: lambda_.FilterRule.is_equal(CURRENT)}
        }
    }
}


class ChangeFeed(Construct):
    """``dead_letter_queue`` (the shard and sequence ranges of batches that could not be published)
    and, after ``attach``, ``stream_mapping``."""

    def __init__(
        self, scope: Construct, construct_id: str, *, key: kms.IKey, config: EnvironmentConfig
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = key
        self.dead_letter_queue: sqs.Queue = dead_letter_queue(
            self,
            "DeadLetters",
            holds="the shard and sequence-number ranges of records stream batches the change_publisher "
            "function could not put on the bus (identifiers only; the items stay in the records table)",
            key=key,
            config=config,
        )
        self.stream_mapping: lambda_.EventSourceMapping | None = None

    def attach(self, table: dynamodb.Table, function: lambda_.IFunction, policy: iam.ManagedPolicy) -> None:
        """Feed ``table``'s stream to ``function`` and give its ``policy`` exactly what that takes."""
        if table.table_stream_arn is None:
            raise ValueError("the records table has no stream (RECORDS_TABLE.stream)")
        # The table is encrypted with the data key: reading its stream decrypts through DynamoDB.
        policy.add_statements(
            *stream_consumer_statements(table, self.key, self.dead_letter_queue, name="Records")
        )
        stack = Stack.of(self)
        table_id = stack.resolve(stack.get_logical_id(table.node.default_child))  # type: ignore[arg-type]
        acknowledge(
            policy,
            "dynamodb:ListStreams is granted on the records table's streams ('/stream/*', as AWS documents "
            "for Lambda stream consumers): a stream ARN ends in a label that changes whenever the stream "
            "is re-created, and ListStreams returns stream ARNs only, no items.",
            f"AwsSolutions-IAM5[Resource::<{table_id}.Arn>/stream/*]",
        )
        self.stream_mapping = lambda_.EventSourceMapping(
            self,
            "StreamMapping",
            target=function,
            event_source_arn=table.table_stream_arn,
            starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            batch_size=CHANGE_BATCH_SIZE,
            bisect_batch_on_error=True,
            retry_attempts=CHANGE_RETRY_ATTEMPTS,
            max_record_age=CHANGE_MAX_RECORD_AGE,
            # The handler raises on failure (no partial batch responses): the batch is retried,
            # bisected, and finally its range goes to the queue; the shard keeps its order.
            report_batch_item_failures=False,
            on_failure=event_sources.SqsDlq(self.dead_letter_queue),
            filters=[lambda_.FilterCriteria.filter(CURRENT_POINTER_FILTER)],
        )
        self.stream_mapping.node.add_dependency(policy)
