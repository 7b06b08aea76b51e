"""Where moto stops short of AWS, the local platform bridges to the real handlers.

- **Lambda invoke → the real handler.** With ``{"lambda": {"use_docker": False}}`` every invoke
  of an emulated function (by Step Functions' ``lambda:invoke`` tasks, or an EventBridge target)
  goes through ``LambdaSimpleBackend.invoke``. Here it runs the function's real handler
  in-process, and an exception becomes a Lambda function error (``X-Amz-Function-Error`` with
  ``errorType`` = the exception's class name), which is what the state machine's ``Retry`` and
  ``Catch`` match on, as in AWS.
- **EventBridge rule targets.** moto delivers rule matches to SQS, logs and other buses only;
  targets that are state machines (``StartExecution`` with the event as input) or Lambda
  functions (asynchronous invoke with the event) are delivered here, as EventBridge would.

Nothing here decides anything the cloud would decide differently: the same events, the same
state machine definition, the same handlers.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("ehr_local.bridges")

Invoke = Callable[[str, Mapping[str, Any]], Any]


def install(invoke: Invoke, function_names: Mapping[str, str]) -> Callable[[], None]:
    """Patch moto; ``function_names`` maps emulated Lambda names to function folders. Returns undo."""
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.events.models import Rule

    real_invoke = LambdaSimpleBackend.invoke
    real_send = Rule.send_to_targets

    def lambda_invoke(  # noqa: PLR0917 - moto's signature
        self: Any, function_name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any
    ) -> bytes:
        name = str(function_name).split(":function:")[-1].split(":")[0]
        function = function_names.get(name)
        if function is None:
            return bytes(real_invoke(self, function_name, qualifier, body, headers, response_headers) or b"")
        try:
            event = json.loads(body) if body else {}
        except ValueError:
            event = {}
        try:
            result = invoke(function, event)
        except Exception as error:  # noqa: BLE001 - becomes a Lambda function error, as in AWS
            log.warning("function %s failed: %s", function, type(error).__name__)
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(
                {"errorType": type(error).__name__, "errorMessage": str(error)[:500], "trace": []}
            ).encode()
        return json.dumps(result if result is not None else {}).encode()

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        ours = [t for t in self.targets if _bridged(str(t.get("Arn", "")))]
        if len(ours) < len(self.targets):  # moto's own targets (SQS, logs, buses) as moto delivers them
            with _rules_lock:
                every = self.targets
                self.targets = [t for t in every if t not in ours]
                try:
                    real_send(self, original_event, transform_input)
                finally:
                    self.targets = every
        if not ours or not self.event_pattern.matches_event(original_event):
            return
        for target in ours:
            arn = str(target.get("Arn", ""))
            if ":states:" in arn and ":stateMachine:" in arn:
                _start_execution(arn, original_event)
            elif ":lambda:" in arn and ":function:" in arn:
                name = arn.rsplit(":function:", maxsplit=1)[-1].split(":", maxsplit=1)[0]
                function = function_names.get(name)
                if function is not None:
                    threading.Thread(
                        target=_invoke_async, args=(invoke, function, dict(original_event)), daemon=True
                    ).start()

    LambdaSimpleBackend.invoke = lambda_invoke  # type: ignore[method-assign,assignment]
    Rule.send_to_targets = send_to_targets  # type: ignore[method-assign]

    def restore() -> None:
        LambdaSimpleBackend.invoke = real_invoke  # type: ignore[method-assign]
        Rule.send_to_targets = real_send  # type: ignore[method-assign]

    return restore


_rules_lock = threading.Lock()


def _bridged(arn: str) -> bool:
    return (":states:" in arn and ":stateMachine:" in arn) or (":lambda:" in arn and ":function:" in arn)


def _start_execution(state_machine_arn: str, event: Any) -> None:
    from moto.stepfunctions.responses import get_backend

    parts = state_machine_arn.split(":")
    backend = get_backend(parts[4], parts[3])
    backend.start_execution(
        state_machine_arn=state_machine_arn, name=str(uuid.uuid4()), execution_input=json.dumps(event)
    )


def _invoke_async(invoke: Invoke, function: str, event: dict[str, Any]) -> None:
    for attempt in range(3):  # EventBridge retries a failed asynchronous delivery
        try:
            invoke(function, event)
            return
        except Exception as error:  # noqa: BLE001 - logged like a failed asynchronous invocation
            log.warning(
                "event delivery to %s failed (attempt %d): %s", function, attempt + 1, type(error).__name__
            )
