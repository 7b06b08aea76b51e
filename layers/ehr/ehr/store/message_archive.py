"""The HL7 v2 message archive on S3: SSE-KMS with the tenant in the encryption context.

Objects live under ``{tenant}/_hl7v2/`` in the documents bucket (FHIR ids cannot contain ``_``,
so the prefix never meets a DocumentReference's ``{tenant}/{id}/`` keys).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from ehr.hl7v2.ports import ArchiveUnavailableError


def encryption_context(tenant: str) -> str:
    return base64.b64encode(json.dumps({"tenant": tenant}).encode()).decode()


class S3MessageArchive:
    def __init__(
        self, bucket: str, *, kms_key_id: str | None = None, endpoint: str | None = None, client: Any = None
    ) -> None:
        self._bucket = bucket
        self._kms_key_id = kms_key_id
        self._endpoint = endpoint
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("s3", endpoint_url=self._endpoint)
        return self._client

    def put(self, tenant: str, key: str, body: bytes, *, content_type: str) -> None:
        kwargs: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": f"{tenant}/{key}",
            "Body": body,
            "ContentType": content_type,
            "ServerSideEncryption": "aws:kms",
            "SSEKMSEncryptionContext": encryption_context(tenant),
        }
        if self._kms_key_id:
            kwargs["SSEKMSKeyId"] = self._kms_key_id
        try:
            self.client.put_object(**kwargs)
        except (BotoCoreError, ClientError) as error:
            raise ArchiveUnavailableError(type(error).__name__) from error

    def get(self, tenant: str, key: str) -> bytes | None:
        try:
            reply = self.client.get_object(Bucket=self._bucket, Key=f"{tenant}/{key}")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise ArchiveUnavailableError(type(error).__name__) from error
        body: bytes = reply["Body"].read()
        return body
