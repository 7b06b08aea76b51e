"""The audit store on moto and on DynamoDB Local (AWS's own engine): a test that passes on one and
not the other finds an emulation gap. Tables are created from ``AUDIT_TABLE``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from moto import mock_aws

from ehr.store.audit_dynamo import DynamoAuditSink
from ehr.store.schema import AUDIT_TABLE
from infra.local.cloud import MOTO_CONFIG
from infra.local.dynamodb_local import DynamoDBLocal

BACKENDS = ("moto", "dynamodb-local")


@pytest.fixture(scope="session")
def audit_dynamodb_local() -> Iterator[DynamoDBLocal]:
    with DynamoDBLocal() as server:
        yield server


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


@pytest.fixture(params=BACKENDS)
def endpoint(request: pytest.FixtureRequest, aws_credentials: None) -> Iterator[str | None]:
    """``None`` for moto (mocked per test), else the DynamoDB Local endpoint."""
    if request.param == "moto":
        with mock_aws(config=MOTO_CONFIG):
            yield None
    else:
        server: DynamoDBLocal = request.getfixturevalue("audit_dynamodb_local")
        yield server.endpoint


@pytest.fixture
def sink(endpoint: str | None) -> DynamoAuditSink:
    """A sink on a fresh table, created through the sink's own client: DynamoDB Local keeps tables
    per access key, and an active moto mock may hand pynamodb other credentials than boto3."""
    sink = DynamoAuditSink(f"audit-{uuid.uuid4().hex[:8]}", host=endpoint)
    client = sink.model._get_connection().connection.client
    client.create_table(**AUDIT_TABLE.create_table_kwargs(sink.model.Meta.table_name))
    return sink
