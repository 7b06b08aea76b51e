"""Access log entries of requests API Gateway refused at the authorizer → audit records."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehr.security.audit import AuditUnavailableError, InMemoryAuditSink
from ehr.security.gateway_audit import GatewayRefusalAuditor, path_parameters, refusal_record
from ehr.security.tenancy import InMemoryTenantDirectory, new_tenant

INSTANCE = "/tenants/{tenant}/fhir/{type}/{id}"
T0 = 1_795_000_000_000  # ms since the epoch


def entry(**overrides: Any) -> dict[str, Any]:
    base = {
        "requestId": "9f1c0e6a-0d1e-4d8e-b1a4-3a4b5c6d7e8f",
        "ip": "203.0.113.7",
        "httpMethod": "GET",
        "resourcePath": INSTANCE,
        "path": "/tenants/clinic-a/fhir/Patient/p-1",
        "status": "401",
        "errorType": "UNAUTHORIZED",
        "integrationStatus": "-",
    }
    return {**base, **overrides}


def test_a_refused_read_becomes_a_refused_read_in_the_urls_tenant() -> None:
    record = refusal_record(entry(), timestamp_ms=T0)
    assert record is not None
    assert (record.tenant, record.action, record.subtype, record.outcome, record.status) == (
        "clinic-a",
        "R",
        "read",
        "4",
        401,
    )
    assert record.entities == ("Patient/p-1",)
    assert record.patients == ("p-1",)
    assert (record.source_ip, record.request_id) == ("203.0.113.7", entry()["requestId"])
    assert (record.client_id, record.user) == (None, None)  # nobody was authenticated
    assert record.recorded.endswith("Z") and record.recorded.startswith("2026-11-18T")


def test_the_record_id_is_the_same_for_every_delivery_of_one_request() -> None:
    first = refusal_record(entry(), timestamp_ms=T0)
    again = refusal_record(entry(), timestamp_ms=T0)
    other = refusal_record(entry(requestId="another-request"), timestamp_ms=T0)
    assert first is not None and again is not None and other is not None
    assert first.id == again.id != other.id


@pytest.mark.parametrize(
    ("overrides", "subtype", "action", "entities", "resource_type"),
    [
        (
            {"resourcePath": "/tenants/{tenant}/fhir/{type}", "path": "/tenants/clinic-a/fhir/Observation"},
            "search-type",
            "E",
            (),
            "Observation",
        ),
        (
            {
                "httpMethod": "DELETE",
                "path": "/tenants/clinic-a/fhir/Observation/o-9",
            },
            "delete",
            "D",
            ("Observation/o-9",),
            "Observation",
        ),
        (
            {
                "httpMethod": "POST",
                "resourcePath": "/tenants/{tenant}/fhir",
                "path": "/tenants/clinic-a/fhir",
            },
            "transaction",
            "E",
            (),
            None,
        ),
        (
            {"path": "/tenants/clinic-a/fhir/lowercase/x"},  # not a resource type: no entity made of it
            "read",
            "R",
            (),
            None,
        ),
    ],
)
def test_each_route_is_recorded_as_its_interaction(
    overrides: dict[str, Any], subtype: str, action: str, entities: tuple[str, ...], resource_type: str | None
) -> None:
    record = refusal_record(entry(**overrides), timestamp_ms=T0)
    assert record is not None
    assert (record.subtype, record.action, record.entities, record.resource_type) == (
        subtype,
        action,
        entities,
        resource_type,
    )


def test_a_failed_authorizer_is_a_serious_failure() -> None:
    record = refusal_record(entry(errorType="AUTHORIZER_FAILURE", status="500"), timestamp_ms=T0)
    assert record is not None and (record.outcome, record.status) == ("8", 500)


@pytest.mark.parametrize(
    "overrides",
    [
        {"errorType": "-", "status": "401", "integrationStatus": "401"},  # the function's own 401: it audits
        {"errorType": "-", "status": "200"},
        {"errorType": "WAF_FILTERED", "status": "403"},
        {"errorType": "THROTTLED", "status": "429"},
        {"resourcePath": "/metadata-that-is-no-route"},
        {
            "httpMethod": "GET",
            "resourcePath": "/.well-known/smart-configuration",
            "path": "/.well-known/smart-configuration",
        },
        {"path": "/tenants/clinic-a/fhir/Patient"},  # does not fit the template
        {"path": "/tenants/Clinic A/fhir/Patient/p-1"},  # not a tenant id
        {"requestId": "-"},
    ],
)
def test_other_entries_are_not_refusals_of_a_tenant_route(overrides: dict[str, Any]) -> None:
    assert refusal_record(entry(**overrides), timestamp_ms=T0) is None


def test_path_parameters_follow_the_template() -> None:
    assert path_parameters(INSTANCE, "/tenants/t/fhir/Patient/1") == {
        "tenant": "t",
        "type": "Patient",
        "id": "1",
    }
    assert path_parameters(INSTANCE, "/tenants/t/other/Patient/1") is None


def auditor(sink: InMemoryAuditSink) -> GatewayRefusalAuditor:
    return GatewayRefusalAuditor(
        sink, InMemoryTenantDirectory([new_tenant("clinic-a", "clinic", "Clinic A")])
    )


def test_the_auditor_records_refusals_of_known_tenants_only() -> None:
    sink = InMemoryAuditSink()
    counts = auditor(sink).record(
        [
            (T0, entry()),
            (T0, entry(requestId="r-2", path="/tenants/no-such-clinic/fhir/Patient/p-1")),
            (T0, entry(requestId="r-3", errorType="-", status="200")),
            (T0, None),  # a line that was not JSON
        ]
    )
    assert (counts.recorded, counts.unknown_tenant, counts.ignored) == (1, 1, 2)
    assert [r.tenant for r in sink.records] == ["clinic-a"]


def test_a_record_that_cannot_be_stored_fails_the_batch_so_it_is_retried() -> None:
    with pytest.raises(AuditUnavailableError):
        auditor(InMemoryAuditSink(fail=True)).record([(T0, entry())])


def test_log_lines_that_are_not_json_objects_are_ignored() -> None:
    sink = InMemoryAuditSink()
    counts = auditor(sink).record_log_events([(T0, "not json"), (T0, "[1, 2]"), (T0, json.dumps(entry()))])
    assert (counts.recorded, counts.ignored) == (1, 2)
