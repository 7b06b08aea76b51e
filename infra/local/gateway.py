"""What API Gateway does in the cloud, done locally: match a route from the shared route table,
run the TOKEN authorizer, build the REST (v1) proxy event, call the real Lambda handler."""

from __future__ import annotations

import base64
import gzip
import importlib
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote

from ehr import names
from ehr.api.routes import ROUTES, Route
from ehr.fhir.outcome import gateway_response

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO_ROOT / "functions"
STAGE = "local"
API_ID = "local"
MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
REQUEST_ID_HEADER = "x-amzn-RequestId"
# Everything else reaches the function base64-encoded, as API Gateway does for the stack's
# binary media types (HL7 v2 ER7) and for bodies that are not text.
_TEXT_TYPES = re.compile(r"^(text/|application/(.+\+)?(json|xml)|application/x-www-form-urlencoded)")


@dataclass
class GatewayResult:
    status: int
    headers: dict[str, str]
    body: bytes


class _Resource:
    """One API Gateway resource (path segment) with its methods and children."""

    def __init__(self) -> None:
        self.static: dict[str, _Resource] = {}
        self.variable: tuple[str, _Resource] | None = None
        self.methods: dict[str, Route] = {}


class RouteTable:
    """API Gateway's resource tree built from the route table.

    As in API Gateway, a path is resolved segment by segment, a static segment winning over a
    path variable, without backtracking; then the method must exist on that resource. A method
    missing on the resource the path resolved to is not looked for elsewhere.
    """

    def __init__(self, routes: tuple[Route, ...] = ROUTES) -> None:
        self._root = _Resource()
        for route in routes:
            node = self._root
            for segment in route.path.strip("/").split("/"):
                if segment.startswith("{"):
                    name = segment.strip("{}+")
                    if node.variable is None:
                        node.variable = (name, _Resource())
                    elif node.variable[0] != name:
                        clash = f"{node.variable[0]!r} and {name!r}"
                        raise ValueError(f"sibling path variables {clash} at {route.path}")
                    node = node.variable[1]
                else:
                    node = node.static.setdefault(segment, _Resource())
            node.methods[route.method] = route

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        node = self._root
        params: dict[str, str] = {}
        for raw in path.strip("/").split("/") if path.strip("/") else []:
            segment = unquote(raw)
            if segment in node.static:
                node = node.static[segment]
            elif node.variable is not None and segment:
                name, node = node.variable
                params[name] = segment
            else:
                return None
        route = node.methods.get(method)
        return (route, params) if route is not None else None


@dataclass
class LambdaContext:
    """The parts of the Lambda context object that Powertools and handlers read."""

    function_name: str
    memory_limit_in_mb: int = 1024
    timeout_ms: int = 29_000
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    _started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:local:123456789012:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.timeout_ms - int((time.monotonic() - self._started) * 1000))


class LocalFunctions:
    """Imports each function's handler module exactly as Lambda would (asset root functions/)."""

    def __init__(self, functions_dir: Path = FUNCTIONS_DIR) -> None:
        self._dir = functions_dir
        self._modules: dict[str, ModuleType] = {}
        # One request at a time per function, like one warm Lambda instance.
        self._locks = {name: threading.Lock() for name in names.FUNCTIONS}

    def load_all(self) -> None:
        for name in names.FUNCTIONS:
            self.module(name)

    def module(self, function: str) -> ModuleType:
        if function not in self._modules:
            if str(self._dir) not in sys.path:
                sys.path.insert(0, str(self._dir))
            module_path, _, _ = names.handler_path(function).rpartition(".")
            self._modules[function] = importlib.import_module(module_path)
        return self._modules[function]

    def invoke(self, function: str, event: Mapping[str, Any]) -> Any:
        handler: Callable[[Mapping[str, Any], LambdaContext], Any] = getattr(
            self.module(function), names.HANDLER_ATTRIBUTE
        )
        with self._locks[function]:
            return handler(event, LambdaContext(function_name=function))


class LocalGateway:
    """The local stand-in for API Gateway in front of the real handlers."""

    def __init__(
        self,
        functions: LocalFunctions,
        routes: RouteTable | None = None,
        *,
        on_refusal: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.functions = functions
        self.routes = routes or RouteTable()
        # Told the access log entry of each request refused at the authorizer, as API Gateway's
        # access log is (the cloud's subscription filter feeds those to the gateway_audit function).
        self.on_refusal = on_refusal

    def handle(
        self,
        method: str,
        raw_path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        source_ip: str = "127.0.0.1",
    ) -> GatewayResult:
        request_id = str(uuid.uuid4())
        result = self._handle(method, raw_path, headers, body, source_ip=source_ip, request_id=request_id)
        # API Gateway names its request id on every response, its own refusals included.
        result.headers.setdefault(REQUEST_ID_HEADER, request_id)
        return result

    def _handle(
        self,
        method: str,
        raw_path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        source_ip: str,
        request_id: str,
    ) -> GatewayResult:
        path, _, query_string = raw_path.partition("?")
        if len(body) > MAX_BODY_BYTES:
            return self._gateway_error("REQUEST_TOO_LARGE")
        matched = self.routes.match(method.upper(), path)
        if matched is None:
            return self._gateway_error("MISSING_AUTHENTICATION_TOKEN")
        route, params = matched
        authorizer_context: dict[str, Any] | None = None
        if route.auth:
            outcome = self._authorize(headers, method, path)
            if isinstance(outcome, str):
                refused = (
                    self._gateway_error("DEFAULT_5XX", status=500)
                    if outcome == "AUTHORIZER_FAILURE"
                    else self._gateway_error(outcome)
                )
                self._refused(
                    route,
                    path,
                    request_id=request_id,
                    source_ip=source_ip,
                    status=refused.status,
                    kind=outcome,
                )
                return refused
            authorizer_context = outcome
        event = self._event(
            route,
            path,
            params=params,
            query_string=query_string,
            headers=headers,
            body=body,
            request_id=request_id,
            source_ip=source_ip,
            authorizer=authorizer_context,
        )
        try:
            response = self.functions.invoke(route.function, event)
        except Exception:  # noqa: BLE001 - a crashed handler is API Gateway's 502, as in the cloud
            return self._gateway_error("DEFAULT_5XX", status=502)
        return self._result(response)

    def _refused(
        self, route: Route, path: str, *, request_id: str, source_ip: str, status: int, kind: str
    ) -> None:
        if self.on_refusal is None:
            return
        # The fields of the stack's JSON access log that describe a refusal (ACCESS_LOG_FIELDS).
        self.on_refusal(
            {
                "requestId": request_id,
                "ip": source_ip,
                "httpMethod": route.method,
                "resourcePath": route.path,
                "path": path,
                "status": str(status),
                "errorType": kind,
            }
        )

    def _authorize(self, headers: Mapping[str, str], method: str, path: str) -> dict[str, Any] | str:
        """The authorizer context, or the response type of API Gateway's refusal."""
        token = _header(headers, "authorization")
        if not token:
            return "UNAUTHORIZED"  # identity source missing: no authorizer call
        event = {
            "type": "TOKEN",
            "authorizationToken": token,
            "methodArn": f"arn:aws:execute-api:local:123456789012:{API_ID}/{STAGE}/{method.upper()}{path}",
        }
        try:
            result = self.functions.invoke(names.FN_AUTHORIZER, event)
        except Exception as exc:  # noqa: BLE001 - any authorizer failure is answered like API Gateway does
            if str(exc) == "Unauthorized":
                return "UNAUTHORIZED"
            return "AUTHORIZER_FAILURE"  # answered with the DEFAULT_5XX body, status 500
        statements = (result.get("policyDocument") or {}).get("Statement") or []
        if not any(s.get("Effect") == "Allow" for s in statements):
            return "ACCESS_DENIED"
        return {"principalId": result.get("principalId"), **(result.get("context") or {})}

    @staticmethod
    def _event(
        route: Route,
        path: str,
        *,
        params: dict[str, str],
        query_string: str,
        headers: Mapping[str, str],
        body: bytes,
        request_id: str,
        source_ip: str,
        authorizer: dict[str, Any] | None,
    ) -> dict[str, Any]:
        multi_query: dict[str, list[str]] = {}
        for key, value in parse_qsl(query_string, keep_blank_values=True):
            multi_query.setdefault(key, []).append(value)
        content_type = _header(headers, "content-type") or ""
        is_text = not body or bool(_TEXT_TYPES.match(content_type.lower()))
        if is_text:
            try:
                body_text, encoded = body.decode("utf-8"), False
            except UnicodeDecodeError:
                body_text, encoded = base64.b64encode(body).decode(), True
        else:
            body_text, encoded = base64.b64encode(body).decode(), True
        host = _header(headers, "host") or "localhost"
        # API Gateway tells the function how the client reached it; locally that is plain HTTP.
        headers = {**headers, "X-Forwarded-Proto": "http"}
        context: dict[str, Any] = {
            "resourcePath": route.path,
            "httpMethod": route.method,
            "path": path,
            "stage": STAGE,
            "requestId": request_id,
            "extendedRequestId": request_id,
            "domainName": host,
            "apiId": API_ID,
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": source_ip, "userAgent": _header(headers, "user-agent")},
        }
        if authorizer is not None:
            context["authorizer"] = authorizer
        return {
            "resource": route.path,
            "path": path,
            "httpMethod": route.method,
            "headers": dict(headers),
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": params or None,
            "stageVariables": None,
            "requestContext": context,
            "body": body_text if body else None,
            "isBase64Encoded": encoded,
        }

    @staticmethod
    def _result(response: Mapping[str, Any]) -> GatewayResult:
        try:
            status = int(response["statusCode"])
            headers = {str(k): str(v) for k, v in (response.get("headers") or {}).items()}
            for key, values in (response.get("multiValueHeaders") or {}).items():
                headers[str(key)] = ", ".join(str(v) for v in values)
            raw = response.get("body") or ""
            body = base64.b64decode(raw) if response.get("isBase64Encoded") else str(raw).encode("utf-8")
        except (KeyError, TypeError, ValueError):
            return LocalGateway._gateway_error("DEFAULT_5XX", status=502)  # malformed proxy response
        return GatewayResult(status=status, headers=headers, body=body)

    @staticmethod
    def _gateway_error(response_type: str, *, status: int | None = None) -> GatewayResult:
        response = gateway_response(response_type)
        headers = {"Content-Type": "application/fhir+json; charset=utf-8", **response.headers}
        return GatewayResult(
            status=response.status or status or 500,
            headers=headers,
            body=json.dumps(response.body()).encode("utf-8"),
        )


def cloudwatch_logs_event(
    entries: list[dict[str, str]], *, log_group: str, filter_name: str
) -> dict[str, Any]:
    """The event a CloudWatch Logs subscription filter hands to Lambda for these JSON log lines."""
    now = int(time.time() * 1000)
    data = {
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": log_group,
        "logStream": f"{API_ID}/{STAGE}",
        "subscriptionFilters": [filter_name],
        "logEvents": [
            {"id": str(uuid.uuid4().int)[:56], "timestamp": now, "message": json.dumps(entry)}
            for entry in entries
        ],
    }
    return {"awslogs": {"data": base64.b64encode(gzip.compress(json.dumps(data).encode())).decode()}}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
