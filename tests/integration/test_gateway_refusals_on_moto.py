"""Requests refused at the gateway's authorizer reach no function, yet each is in the trail of the
tenant the URL names: the access log entry → subscription filter → the real gateway_audit handler
(infra/local/platform.py emulates the filter), then read back as AuditEvents through the API."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from ehr import names
from infra.local.gateway import cloudwatch_logs_event


def call(gateway, method: str, path: str, *, token: str | None = None, ip: str = "127.0.0.1"):
    headers = {"Host": "127.0.0.1:8080"}
    if token is not None:
        headers["Authorization"] = token
    result = gateway.handle(method, path, headers, b"", source_ip=ip)
    return result.status, json.loads(result.body or b"{}")


def trail(gateway, issuer, tenant: str) -> list[dict[str, Any]]:
    since = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    token = issuer.mint(tenant=tenant, scope="user/AuditEvent.rs")
    status, bundle = call(
        gateway,
        "GET",
        f"/tenants/{tenant}/fhir/AuditEvent?date=ge{since}&_count=200",
        token=f"Bearer {token}",
    )
    assert status == 200, bundle
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "AuditEvent"]


def from_ip(events: list[dict[str, Any]], ip: str) -> list[dict[str, Any]]:
    return [e for e in events if any(a.get("network", {}).get("address") == ip for a in e.get("agent", []))]


def test_every_kind_of_refused_token_leaves_a_refused_audit_event(gateway, issuer, other_issuer) -> None:
    ip = "203.0.113.41"
    patient = f"pt-{uuid.uuid4().hex[:8]}"
    attempts = [
        None,  # no Authorization header: API Gateway answers without calling the authorizer
        "Basic dXNlcjpwYXNz",  # not a bearer token
        "Bearer not-a-jwt",
        f"Bearer {other_issuer.mint(tenant='clinic-a', scope='user/*.rs')}",  # wrongly signed
    ]
    for token in attempts:
        status, body = call(gateway, "GET", f"/tenants/clinic-a/fhir/Patient/{patient}", token=token, ip=ip)
        assert (status, body["issue"][0]["code"]) == (401, "login")

    events = from_ip(trail(gateway, issuer, "clinic-a"), ip)
    assert len(events) == len(attempts)
    for event in events:
        assert event["outcome"] == "4"
        assert event["action"] == "R"
        assert event["subtype"][0]["code"] == "read"
        references = {e["what"].get("reference") or "" for e in event["entity"]}
        assert {r for r in references if r.endswith(f"/tenants/clinic-a/fhir/Patient/{patient}")}
        # nobody was authenticated: no client, no user
        assert all("altId" not in a for a in event["agent"])
    # and nothing of it in another tenant's trail
    assert from_ip(trail(gateway, issuer, "clinic-b"), ip) == []


def test_a_refused_search_is_recorded_without_its_query(gateway, issuer) -> None:
    ip = "203.0.113.42"
    status, _ = call(gateway, "GET", "/tenants/clinic-b/fhir/Patient?name=Smith", ip=ip)
    assert status == 401
    (event,) = from_ip(trail(gateway, issuer, "clinic-b"), ip)
    assert event["subtype"][0]["code"] == "search-type"
    # API Gateway's access log has no query string (PHI): the record has none either
    assert "Smith" not in json.dumps(event)


def refusal_event(method: str, path: str) -> dict[str, Any]:
    """What the access log's subscription filter delivers for one request refused at the authorizer."""
    entry = {
        "requestId": str(uuid.uuid4()),
        "ip": "203.0.113.43",
        "httpMethod": method,
        "resourcePath": "/tenants/{tenant}/fhir/{type}/{id}",
        "path": path,
        "status": "401",
        "errorType": "UNAUTHORIZED",
    }
    return cloudwatch_logs_event([entry], log_group="access", filter_name="GatewayRefusals")


def test_a_redelivered_log_batch_records_each_request_once(platform) -> None:
    event = refusal_event("DELETE", "/tenants/clinic-a/fhir/Observation/o-1")
    invoke = platform.gateway.functions.invoke
    assert invoke(names.FN_GATEWAY_AUDIT, event)["recorded"] == 1
    assert invoke(names.FN_GATEWAY_AUDIT, event) == {
        "recorded": 0,
        "already_recorded": 1,
        "unknown_tenant": 0,
        "ignored": 0,
    }


def test_refusals_for_a_tenant_that_does_not_exist_are_nobodys_record(platform) -> None:
    event = refusal_event("GET", "/tenants/no-such-clinic/fhir/Patient/p-1")
    assert platform.gateway.functions.invoke(names.FN_GATEWAY_AUDIT, event)["unknown_tenant"] == 1
