"""S3 on a loopback port, so presigned URLs work for real (curl can PUT and GET them).

moto's server (``moto[server]``) serves the same in-process backends the rest of local mode
uses, so the documents bucket ``infra/local/cloud.py`` creates is the one this server answers
for. In front of it, ``PresignedUrlGuard`` does what S3 does and moto does not:

- a presigned request past ``X-Amz-Date`` + ``X-Amz-Expires`` is refused (403 ``AccessDenied``,
  "Request has expired");
- a presigned request whose signature does not cover what was sent (another key, method, size,
  content type, checksum or encryption header) is refused (403 ``SignatureDoesNotMatch``); the
  signature is recomputed with botocore's own SigV4 code and the local fake credentials;
- a PUT whose body does not match its ``x-amz-checksum-sha256`` is refused (400 ``BadDigest``);

and, for the buckets that send events in the cloud (the documents bucket, S3 → EventBridge), it
hands each stored object to a callback with the EventBridge "Object Created" event AWS would
deliver: ``infra/local/platform.py`` invokes the real ``document_verifier`` handler with it, before
the PUT is answered (in AWS the event arrives within seconds after).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

log = logging.getLogger("ehr_local.s3")
ObjectCreated = Callable[[dict[str, Any]], None]
StartResponse = Callable[..., Any]
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


def _error(start_response: StartResponse, status: str, code: str, message: str) -> list[bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def object_created_event(bucket: str, key: str, size: int, region: str, account: str) -> dict[str, Any]:
    """The EventBridge event S3 sends for a new object (detail-type "Object Created")."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": account,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": size},
            "request-id": str(uuid.uuid4()),
            "reason": "PutObject",
        },
    }


class PresignedUrlGuard:
    """WSGI middleware in front of moto's S3: expiry, signatures, checksums, object events."""

    def __init__(self, app: Any, *, region: str, account: str) -> None:
        self.app = app
        self.region = region
        self.account = account
        self.notify: dict[str, ObjectCreated] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        method = environ.get("REQUEST_METHOD", "GET")
        if "X-Amz-Signature" in query:
            refusal = self._check_presigned(environ, query)
            if refusal is not None:
                return _error(start_response, *refusal)
        body: bytes | None = None
        if method == "PUT":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            checksum = environ.get("HTTP_X_AMZ_CHECKSUM_SHA256")
            if checksum is not None and base64.b64encode(hashlib.sha256(body).digest()).decode() != checksum:
                return _error(
                    start_response,
                    "400 Bad Request",
                    "BadDigest",
                    "The SHA256 you specified did not match the calculated checksum.",
                )
        captured: dict[str, str] = {}

        def remember(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            captured["status"] = status
            return start_response(status, headers, *args)

        result = self.app(environ, remember)
        if method == "PUT" and body is not None and captured.get("status", "").startswith("200"):
            self._object_created(environ, query, len(body))
        return result  # type: ignore[no-any-return]

    def _object_created(self, environ: Mapping[str, Any], query: Mapping[str, Any], size: int) -> None:
        if {"uploadId", "partNumber", "tagging", "acl", "retention", "legal-hold"} & set(query):
            return
        bucket, _, key = unquote(environ.get("PATH_INFO", "")).lstrip("/").partition("/")
        callback = self.notify.get(bucket)
        if callback is None or not key:
            return
        try:
            callback(object_created_event(bucket, key, size, self.region, self.account))
        except Exception:
            log.exception("object created event target failed")

    def _check_presigned(
        self, environ: Mapping[str, Any], query: Mapping[str, list[str]]
    ) -> tuple[str, str, str] | None:
        try:
            signed_at = datetime.strptime(query["X-Amz-Date"][0], _AMZ_DATE).replace(tzinfo=UTC)
            expires = int(query["X-Amz-Expires"][0])
        except (KeyError, ValueError, IndexError):
            return ("400 Bad Request", "AuthorizationQueryParametersError", "Malformed presigned URL.")
        if datetime.now(UTC) > signed_at + timedelta(seconds=expires):
            return ("403 Forbidden", "AccessDenied", "Request has expired")
        if not self._signature_matches(environ, query):
            return (
                "403 Forbidden",
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None

    @staticmethod
    def _signature_matches(environ: Mapping[str, Any], query: Mapping[str, list[str]]) -> bool:
        headers: dict[str, str] = {}
        for name in query.get("X-Amz-SignedHeaders", [""])[0].split(";"):
            if name == "content-type":
                value = environ.get("CONTENT_TYPE")
            elif name == "content-length":
                value = environ.get("CONTENT_LENGTH")
            else:
                value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            if value is None:
                return False
            headers[name] = str(value)
        raw_query = "&".join(
            part
            for part in environ.get("QUERY_STRING", "").split("&")
            if not part.startswith("X-Amz-Signature=")
        )
        raw_path = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", ""))
        host = headers.get("host", environ.get("HTTP_HOST", ""))
        url = f"http://{host}{raw_path.split('?', maxsplit=1)[0]}?{raw_query}"
        try:
            access_key, _, region, service, _ = query["X-Amz-Credential"][0].split("/")
        except (KeyError, ValueError):
            return False
        credentials = Credentials(
            access_key,
            os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            query.get("X-Amz-Security-Token", [None])[0],
        )
        auth = S3SigV4QueryAuth(credentials, service, region, expires=int(query["X-Amz-Expires"][0]))
        request = AWSRequest(method=environ.get("REQUEST_METHOD", "GET"), url=url, headers=headers)
        request.context["timestamp"] = query["X-Amz-Date"][0]
        canonical = auth.canonical_request(request)
        expected = auth.signature(auth.string_to_sign(request, canonical), request)
        return hmac.compare_digest(expected, query["X-Amz-Signature"][0])


class _QuietHandler(MotoRequestHandler):
    """No per-request log lines: they would carry presigned query strings (signatures)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return


class LocalS3Server:
    """moto's S3 (with the guard) on ``127.0.0.1`` and a free port; ``endpoint`` once started."""

    def __init__(self, *, region: str, account: str, host: str = "127.0.0.1") -> None:
        self.guard = PresignedUrlGuard(
            DomainDispatcherApplication(create_backend_app), region=region, account=account
        )
        self._host = host
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def start(self) -> str:
        self._server = make_server(self._host, 0, self.guard, threaded=True, request_handler=_QuietHandler)
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="ehr-local-s3", daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
