"""Each function's real handler, called the way API Gateway calls it, with DynamoDB, S3, KMS,
EventBridge and Step Functions emulated by moto and created from the stack's definitions."""

from __future__ import annotations

import json
import time

import boto3
import pytest

from ehr import names
from ehr.events import schema as events
from ehr.security.tenancy import new_tenant
from ehr.store.schema import RECORDS_TABLE, tenant_registry_key
from ehr.store.tenants import DynamoTenantDirectory
from tests.conftest import load_event


def call(gateway, path: str, token: str | None = None, method: str = "GET"):
    headers = {"Host": "127.0.0.1:8080"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    result = gateway.handle(method, path, headers, b"")
    return result.status, json.loads(result.body or b"{}"), result.headers


def test_metadata_through_authorizer_and_function(gateway, issuer):
    status, body, _ = call(
        gateway, "/tenants/clinic-a/fhir/metadata", issuer.mint(tenant="clinic-a", scope="user/*.rs")
    )
    assert status == 200
    assert body["implementation"]["url"] == "http://127.0.0.1:8080/tenants/clinic-a/fhir"


@pytest.mark.parametrize(
    ("path", "token_tenant", "status", "code"),
    [
        ("/tenants/clinic-a/fhir/metadata", None, 401, "login"),
        ("/tenants/clinic-a/fhir/metadata", "clinic-b", 403, "forbidden"),
        ("/tenants/unknown-clinic/fhir/metadata", "unknown-clinic", 404, "not-found"),
        ("/tenants/clinic-a/fhir/nothing-here", "clinic-a", 404, "not-found"),
        ("/no/such/route", None, 404, "not-found"),
    ],
)
def test_refusals_are_operation_outcomes(gateway, issuer, path, token_tenant, status, code):
    token = issuer.mint(tenant=token_tenant, scope="user/*.rs") if token_tenant else None
    got_status, body, headers = call(gateway, path, token)
    assert (got_status, body["resourceType"], body["issue"][0]["code"]) == (status, "OperationOutcome", code)
    assert headers["Content-Type"].startswith("application/fhir+json")


def test_a_wrongly_signed_token_is_stopped_by_the_authorizer(gateway, other_issuer):
    status, body, headers = call(
        gateway, "/tenants/clinic-a/fhir/metadata", other_issuer.mint(tenant="clinic-a", scope="user/*.rs")
    )
    assert (status, body["issue"][0]["code"]) == (401, "login")
    assert headers["WWW-Authenticate"].startswith("Bearer")


def test_the_authorizer_handler_allows_a_valid_token_for_every_route_of_the_stage(platform, issuer):
    event = load_event("apigw_token_authorizer.json")
    event["authorizationToken"] = (
        f"Bearer {issuer.mint(tenant='clinic-a', scope='user/*.rs', client_id='app')}"
    )
    policy = platform.gateway.functions.invoke(names.FN_AUTHORIZER, event)
    statement = policy["policyDocument"]["Statement"][0]
    assert statement["Effect"] == "Allow"
    assert statement["Resource"] == "arn:aws:execute-api:eu-west-1:123456789012:abc123xyz/prod/*"
    assert policy["context"] == {"tenant": "clinic-a", "clientId": "app"}


def test_the_authorizer_handler_answers_unauthorized_for_a_bad_token(platform):
    event = load_event("apigw_token_authorizer.json")
    event["authorizationToken"] = "Bearer not.a.token"
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        platform.gateway.functions.invoke(names.FN_AUTHORIZER, event)


def test_tenants_are_items_of_the_records_table(platform, issuer):
    # Given a tenant registered after start-up, through the DynamoDB adapter
    resources = platform.resources
    DynamoTenantDirectory(resources.records_table).register(new_tenant("clinic-new", "clinic", "New"))
    item = boto3.client("dynamodb").get_item(
        TableName=resources.records_table,
        Key={k: {"S": v} for k, v in tenant_registry_key("clinic-new").items()},
    )["Item"]
    # Then its key starts with the tenant prefix, and the API now serves it
    assert item[RECORDS_TABLE.partition_key]["S"].startswith("T#clinic-new#")
    status, _, _ = call(
        platform.gateway,
        "/tenants/clinic-new/fhir/metadata",
        issuer.mint(tenant="clinic-new", scope="user/*.rs"),
    )
    assert status == 200


def test_the_emulated_tables_have_the_stack_key_schema(platform):
    client = boto3.client("dynamodb")
    table = client.describe_table(TableName=platform.resources.records_table)["Table"]
    assert table["KeySchema"] == RECORDS_TABLE.key_schema()
    assert table["StreamSpecification"]["StreamViewType"] == RECORDS_TABLE.stream
    assert table["SSEDescription"]["SSEType"] == "KMS"


def test_the_bus_carries_the_rules_of_the_shared_definition(platform):
    rules = boto3.client("events").list_rules(EventBusName=platform.resources.event_bus_name)["Rules"]
    ours = {
        r["Name"]: json.loads(r["EventPattern"]) for r in rules if r["Name"].startswith(platform.cloud.prefix)
    }
    assert ours == {f"{platform.cloud.prefix}-{rule.logical_id}": rule.event_pattern for rule in events.RULES}


def test_the_workflow_runs_from_the_shared_asl_and_an_unknown_order_fails_visibly(platform):
    # When an execution runs with the event the LabOrderRequested rule delivers, for no real order
    resources = platform.resources
    sfn = boto3.client("stepfunctions")
    detail = {"tenant": "clinic-a", "serviceRequestId": "no-such-order"}
    execution = sfn.start_execution(
        stateMachineArn=resources.lab_order_state_machine_arn,
        input=json.dumps(
            {"detail-type": events.LAB_ORDER_REQUESTED, "source": names.EVENT_SOURCE, "detail": detail}
        ),
    )
    deadline = time.monotonic() + 30
    while True:
        described = sfn.describe_execution(executionArn=execution["executionArn"])
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # Then the real claim step ran (in the real handler) and failed the order with its reason
    assert described["status"] == "FAILED"
    history = sfn.get_execution_history(executionArn=execution["executionArn"])["events"]
    failed = [e for e in history if e["type"] == "ExecutionFailed"]
    assert failed and failed[0]["executionFailedEventDetails"]["error"] == "LabOrderInvalid"
