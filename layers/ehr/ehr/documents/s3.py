"""The S3 adapter of the document store: SSE-KMS with the tenant in the encryption context,
conditional writes (never over an existing object) and presigned URLs bound to one key.

Presigned PUTs sign every header the client must send (``Content-Type``, ``Content-Length``,
``x-amz-checksum-sha256``, ``If-None-Match: *`` and the SSE-KMS headers), so S3 refuses an upload
of another size, type, SHA-256 or encryption, an upload over an existing object, and any other key.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ehr.documents.ports import (
    DocumentStoreError,
    ObjectExistsError,
    ObjectInfo,
    ObjectLocation,
    PresignedRequest,
)

TENANT_CONTEXT_KEY = "tenant"


def encryption_context(tenant: str) -> str:
    """The SSE-KMS encryption context header value: base64 of ``{"tenant": tenant}``."""
    return base64.b64encode(json.dumps({TENANT_CONTEXT_KEY: tenant}).encode("utf-8")).decode("ascii")


class S3DocumentStore:
    def __init__(
        self, bucket: str, key_arn: str, *, endpoint: str | None = None, region: str | None = None
    ) -> None:
        self.bucket = bucket
        self.key_arn = key_arn
        config = Config(
            signature_version="s3v4",
            # An endpoint override (local mode) is a single host: path-style addressing.
            s3={"addressing_style": "path" if endpoint else "virtual"},
            retries={"mode": "standard", "max_attempts": 3},
        )
        self._client: Any = boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def _encryption(self, tenant: str) -> dict[str, Any]:
        return {
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": self.key_arn,
            "SSEKMSEncryptionContext": encryption_context(tenant),
            "BucketKeyEnabled": True,
        }

    def put(self, location: ObjectLocation, data: bytes, *, content_type: str, sha256_b64: str) -> str | None:
        try:
            answer = self._client.put_object(
                Bucket=self.bucket,
                Key=location.key,
                Body=data,
                ContentType=content_type,
                ChecksumSHA256=sha256_b64,
                IfNoneMatch="*",
                **self._encryption(location.tenant),
            )
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412"):
                raise ObjectExistsError(location.key) from exc
            raise DocumentStoreError(f"the document store refused {location.key}: {_code(exc)}") from exc
        except BotoCoreError as exc:
            raise DocumentStoreError(f"the document store is unreachable for {location.key}") from exc
        version = answer.get("VersionId")
        return str(version) if version else None

    def upload_request(
        self, location: ObjectLocation, *, content_type: str, size: int, sha256_b64: str, seconds: int
    ) -> PresignedRequest:
        encryption = self._encryption(location.tenant)
        url = self._client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": location.key,
                "ContentType": content_type,
                "ContentLength": size,
                "ChecksumSHA256": sha256_b64,
                "IfNoneMatch": "*",
                **encryption,
            },
            ExpiresIn=seconds,
        )
        # Exactly the headers the URL's signature covers (besides Host), as the client must send them.
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(size),
            "If-None-Match": "*",
            "x-amz-checksum-sha256": sha256_b64,
            "x-amz-server-side-encryption": "aws:kms",
            "x-amz-server-side-encryption-aws-kms-key-id": self.key_arn,
            "x-amz-server-side-encryption-bucket-key-enabled": "true",
            "x-amz-server-side-encryption-context": encryption["SSEKMSEncryptionContext"],
        }
        return PresignedRequest(url=url, method="PUT", headers=headers, expires=time.time() + seconds)

    def download_url(
        self, location: ObjectLocation, *, content_type: str, filename: str, seconds: int
    ) -> PresignedRequest:
        url = self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": location.key,
                # Served as a download of the verified type, never rendered as something else.
                "ResponseContentType": content_type,
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=seconds,
        )
        return PresignedRequest(url=url, method="GET", headers={}, expires=time.time() + seconds)

    def head(self, location: ObjectLocation) -> ObjectInfo | None:
        try:
            answer = self._client.head_object(Bucket=self.bucket, Key=location.key)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise DocumentStoreError(f"the document store refused {location.key}: {_code(exc)}") from exc
        except BotoCoreError as exc:
            raise DocumentStoreError(f"the document store is unreachable for {location.key}") from exc
        return ObjectInfo(size=int(answer["ContentLength"]), version_id=answer.get("VersionId"))

    def read(self, location: ObjectLocation, *, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=location.key)["Body"]
            yield from body.iter_chunks(chunk_size)
        except ClientError as exc:
            raise DocumentStoreError(f"the document store refused {location.key}: {_code(exc)}") from exc
        except BotoCoreError as exc:
            raise DocumentStoreError(f"the document store is unreachable for {location.key}") from exc


def _code(exc: ClientError) -> str:
    return str((exc.response.get("Error") or {}).get("Code") or "")
