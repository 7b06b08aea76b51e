"""Secrets by name from AWS Secrets Manager (cached for the life of the execution environment)."""

from __future__ import annotations

from functools import lru_cache

import boto3


@lru_cache(maxsize=8)
def secret_bytes(name: str) -> bytes:
    response = boto3.client("secretsmanager").get_secret_value(SecretId=name)
    value = response.get("SecretString")
    return value.encode("utf-8") if value is not None else bytes(response["SecretBinary"])
