"""Lambda's DynamoDB-stream event source mapping, done locally for the audit table.

A poller reads the emulated stream (moto's DynamoDB Streams API) and invokes the real
``audit_archiver`` handler with the event Lambda would send: the same record shape (binary
attributes base64, times in epoch seconds, ``eventSourceARN``), batches in stream order, and
the partial batch response honoured — a batch is resumed from its first failed record, which is
retried up to ``max_attempts`` times and then skipped with a warning (in the cloud it would go to
the on-failure queue). Nothing here archives anything itself.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config

log = logging.getLogger("ehr_local.audit_stream")

Invoke = Callable[[dict[str, Any]], Any]


def wire(value: Any) -> Any:
    """A DynamoDB JSON value as Lambda's event carries it (``bytes`` -> base64 text)."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {key: wire(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [wire(item) for item in value]
    return value


def lambda_record(record: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """One ``GetRecords`` record (as boto3 parses it) in the shape of a Lambda event record."""
    data = dict(record["dynamodb"])
    created = data.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        data["ApproximateCreationDateTime"] = int(created.timestamp())
    shaped = {key: wire(value) for key, value in record.items() if key != "dynamodb"}
    return {**shaped, "dynamodb": wire(data), "eventSourceARN": stream_arn}


class StreamPoller:
    """Delivers a table's stream to ``invoke`` in batches; ``poll()`` once, or ``start()`` a thread."""

    def __init__(
        self,
        table_name: str,
        invoke: Invoke,
        *,
        region: str,
        batch_size: int = 100,
        max_attempts: int = 3,
        endpoint_url: str | None = None,
    ) -> None:
        self.table_name = table_name
        self._invoke = invoke
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self._dynamodb = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint_url)
        # Account-based endpoints (``{account}.streams-ddb…``) are not emulated: use the regional one.
        self._streams = boto3.client(
            "dynamodbstreams",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(account_id_endpoint_mode="disabled"),
        )
        self._iterators: dict[str, str | None] = {}
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stream_arn(self) -> str:
        table = self._dynamodb.describe_table(TableName=self.table_name)["Table"]
        return str(table["LatestStreamArn"])

    def poll(self) -> int:
        """Deliver every change written so far; returns how many records the handler took."""
        with self._lock:
            arn = self.stream_arn
            delivered = 0
            for shard in self._streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
                delivered += self._drain(arn, shard["ShardId"])
            return delivered

    def _drain(self, arn: str, shard: str) -> int:
        if shard not in self._iterators:
            self._iterators[shard] = self._streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
        delivered = 0
        while (iterator := self._iterators[shard]) is not None:
            page = self._streams.get_records(ShardIterator=iterator, Limit=self._batch_size)
            records = page.get("Records") or []
            if not records:
                self._iterators[shard] = page.get("NextShardIterator")
                return delivered
            failed = self._deliver(arn, records)
            if failed is None:
                self._iterators[shard] = page.get("NextShardIterator")
                delivered += len(records)
                continue
            delivered += [r["dynamodb"]["SequenceNumber"] for r in records].index(failed)
            self._iterators[shard] = self._resume(arn, shard, failed)
            return delivered  # retried on the next poll, as Lambda retries the failed part
        return delivered

    def _deliver(self, arn: str, records: list[dict[str, Any]]) -> str | None:
        """The sequence number to resume from, or None when the whole batch succeeded."""
        event = {"Records": [lambda_record(r, arn) for r in records]}
        try:
            response = self._invoke(event)
        except Exception:  # a crashed invocation fails the whole batch, as in Lambda
            log.exception("audit archiver invocation failed")
            return str(records[0]["dynamodb"]["SequenceNumber"])
        failures = (response or {}).get("batchItemFailures") or []
        if not failures:
            return None
        sequences = [r["dynamodb"]["SequenceNumber"] for r in records]
        return min((str(f["itemIdentifier"]) for f in failures), key=sequences.index)

    def _resume(self, arn: str, shard: str, sequence: str) -> str:
        attempts = self._attempts.get(sequence, 0) + 1
        self._attempts[sequence] = attempts
        kind = "AT_SEQUENCE_NUMBER"
        if attempts >= self._max_attempts:
            log.warning("audit stream record %s skipped after %d attempts", sequence, attempts)
            kind = "AFTER_SEQUENCE_NUMBER"
            self._attempts.pop(sequence, None)
        return str(
            self._streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard, ShardIteratorType=kind, SequenceNumber=sequence
            )["ShardIterator"]
        )

    def start(self, interval: float = 1.0) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.poll()
                except Exception:  # keep polling; the emulation may be shutting down
                    log.exception("audit stream poll failed")

        self._stop.clear()
        self._thread = threading.Thread(target=run, name="ehr-local-audit-stream", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
