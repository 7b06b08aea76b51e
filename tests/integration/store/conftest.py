"""The record store contract runs on three backends: the in-memory fake, moto, and DynamoDB
Local (AWS's own engine). A test that passes on one and not another finds an emulation gap."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from ehr.store.dynamo import DynamoRecordStore
from ehr.store.memory import InMemoryRecordStore
from ehr.store.schema import RECORDS_TABLE
from infra.local.cloud import MOTO_CONFIG
from infra.local.dynamodb_local import DynamoDBLocal

BACKENDS = ("memory", "moto", "dynamodb-local")


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    with DynamoDBLocal() as server:
        yield server


@pytest.fixture
def moto_dynamodb() -> Iterator[None]:
    # Per test: an active moto mock would also capture calls meant for DynamoDB Local.
    with mock_aws(config=MOTO_CONFIG):
        yield


def _fresh_table(endpoint: str | None) -> str:
    name = f"records-{uuid.uuid4().hex[:8]}"
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    client.create_table(**RECORDS_TABLE.create_table_kwargs(name))
    return name


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A factory of stores on one fresh table; ``staged_threshold`` forces the staged commit."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    if backend == "memory":
        shared = InMemoryRecordStore()
        return lambda **_: shared
    if backend == "moto":
        request.getfixturevalue("moto_dynamodb")
        table = _fresh_table(None)
        return lambda staged_threshold=100: DynamoRecordStore(table, staged_threshold=staged_threshold)
    server: DynamoDBLocal = request.getfixturevalue("dynamodb_local")
    table = _fresh_table(server.endpoint)
    return lambda staged_threshold=100: DynamoRecordStore(
        table, host=server.endpoint, staged_threshold=staged_threshold
    )


@pytest.fixture
def store(make_store):
    return make_store()


def in_ci() -> bool:
    return bool(os.environ.get("CI"))
