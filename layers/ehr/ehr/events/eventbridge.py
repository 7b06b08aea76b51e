"""EventBridge adapter of ``EventPublisher``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import boto3

from ehr.events.changes import PublishError


class EventBridgePublisher:
    def __init__(self, *, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("events")
        return self._client

    def publish(self, events: Sequence[dict[str, Any]]) -> None:
        if not events:
            return
        reply = self.client.put_events(Entries=list(events))
        if reply.get("FailedEntryCount"):
            codes = sorted({e.get("ErrorCode", "?") for e in reply.get("Entries", []) if e.get("ErrorCode")})
            raise PublishError(f"{reply['FailedEntryCount']} events not accepted ({', '.join(codes)})")
