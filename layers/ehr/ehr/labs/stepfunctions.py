"""Step Functions adapter: resume the workflow step that waits on a task token."""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

_GONE = frozenset({"TaskDoesNotExist", "TaskTimedOut", "InvalidToken"})


class StepFunctionsSignals:
    def __init__(self, *, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("stepfunctions")
        return self._client

    def succeed(self, token: str, output: dict[str, Any]) -> bool:
        try:
            self.client.send_task_success(taskToken=token, output=json.dumps(output))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in _GONE:
                return False  # the step finished (timed out, cancelled) before the signal
            raise
        except BotoCoreError:
            raise
        return True
