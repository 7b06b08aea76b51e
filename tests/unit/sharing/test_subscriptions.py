"""FHIR Subscriptions: what a create/update stores or refuses, and which changes the criteria match."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest

from ehr.fhir.cursors import CursorCodec
from ehr.fhir.outcome import OperationOutcomeError
from ehr.fhir.searching import SearchEngine
from ehr.fhir.service import FhirService
from ehr.sharing.subscriptions import (
    AllowList,
    DeliveryResult,
    delivery_status_update,
    is_deliverable,
    parse_criteria,
    prepare_subscription,
)
from ehr.store.memory import InMemoryRecordStore

TENANT = "clinic-b"
HOOK = "https://hooks.clinic-b.example/fhir-events"
POLICY = AllowList({TENANT: ("https://hooks.clinic-b.example/fhir-events",)})
LOINC = "http://loinc.org"


def subscription(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Follow glucose results",
        "criteria": f"Observation?code={LOINC}|2345-7",
        "channel": {"type": "rest-hook", "endpoint": HOOK, "payload": "application/fhir+json"},
    }
    channel = changes.pop("channel", None)
    if channel is not None:
        body["channel"] = {**body["channel"], **channel}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def refusal(body: dict[str, Any], previous: dict[str, Any] | None = None) -> OperationOutcomeError:
    with pytest.raises(OperationOutcomeError) as caught:
        prepare_subscription(TENANT, body, previous, POLICY)
    return caught.value


# --- the status a create or update stores -----------------------------------------------------------


def test_a_requested_subscription_is_stored_active():
    # Given a client asking for a subscription
    body = subscription(status="requested")

    # When it is created
    stored = prepare_subscription(TENANT, body, None, POLICY)

    # Then it is stored active, and the client's body is left as it was
    assert stored["status"] == "active"
    assert body["status"] == "requested"


def test_a_subscription_without_status_is_stored_active():
    stored = prepare_subscription(TENANT, subscription(status=None), None, POLICY)

    assert stored["status"] == "active"


def test_a_subscription_created_off_stays_off():
    stored = prepare_subscription(TENANT, subscription(status="off"), None, POLICY)

    assert stored["status"] == "off"


def test_a_client_cannot_put_a_subscription_in_error():
    # Given an active subscription
    previous = prepare_subscription(TENANT, subscription(), None, POLICY)

    # When the client sets it to error
    error = refusal(subscription(status="error"), previous)

    # Then the update is refused with a 422 naming the status
    assert error.status == 422
    assert error.to_fhir()["issue"] == [
        {
            "severity": "error",
            "code": "business-rule",
            "diagnostics": (
                "Only the server sets a Subscription's status to 'error'; use 'requested' or 'off'."
            ),
            "expression": ["Subscription.status"],
        }
    ]


def test_echoing_an_error_subscription_keeps_the_servers_error():
    # Given a subscription the server put in error
    previous = {**subscription(status="error"), "error": "delivery failed: HTTP 503 after 4 attempts"}

    # When the client sends it back as read, with its own error text
    stored = prepare_subscription(TENANT, {**previous, "error": "all good"}, previous, POLICY)

    # Then the status and the server's error stay
    assert stored["status"] == "error"
    assert stored["error"] == "delivery failed: HTTP 503 after 4 attempts"


def test_requesting_an_error_subscription_again_reactivates_it():
    previous = {**subscription(status="error"), "error": "delivery failed: HTTP 503 after 4 attempts"}

    stored = prepare_subscription(TENANT, {**previous, "status": "requested"}, previous, POLICY)

    assert stored["status"] == "active"
    assert "error" not in stored


def test_a_clients_error_text_is_not_stored():
    stored = prepare_subscription(TENANT, subscription(error="made up"), None, POLICY)

    assert "error" not in stored


def test_the_platform_stores_the_error_it_sets():
    # Given the status a failed delivery calls for
    active = prepare_subscription(TENANT, subscription(), None, POLICY)
    failed = delivery_status_update(active, DeliveryResult(False, 4, 503, "HTTP 503 after 4 attempts"))
    assert failed is not None

    # When the platform writes it
    stored = prepare_subscription(TENANT, failed, active, POLICY, by_server=True)

    # Then it is stored in error with the reason
    assert stored["status"] == "error"
    assert stored["error"] == "delivery failed: HTTP 503 after 4 attempts"


def test_a_created_subscription_is_read_and_found_as_active():
    # Given a FHIR service and a subscription prepared on create
    store = InMemoryRecordStore()
    fhir = FhirService(store)
    created = fhir.create(TENANT, "Subscription", prepare_subscription(TENANT, subscription(), None, POLICY))
    assert created.stored is not None

    # When the client reads it back and searches for active subscriptions
    read = fhir.read(TENANT, "Subscription", created.stored.id)
    page = SearchEngine(store, CursorCodec(b"k" * 32)).search(
        TENANT, "Subscription", {"status": ["active"]}, base="https://ehr.example/fhir", strict=True
    )

    # Then it is active
    assert read.body is not None and read.body["status"] == "active"
    assert [e["resource"]["id"] for e in page.bundle["entry"]] == [created.stored.id]


# --- what is refused --------------------------------------------------------------------------------


@pytest.mark.parametrize("channel_type", ["websocket", "email", "sms", "message"])
def test_channels_other_than_rest_hook_are_not_supported(channel_type: str):
    error = refusal(subscription(channel={"type": channel_type}))

    assert error.status == 422
    [issue] = error.to_fhir()["issue"]
    assert issue["code"] == "not-supported"
    assert issue["expression"] == ["Subscription.channel.type"]
    assert f"not '{channel_type}'" in issue["diagnostics"]


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://hooks.clinic-b.example/fhir-events",  # not https
        "https://hooks.clinic-a.example/fhir-events",  # another host
        "https://hooks.clinic-b.example/other",  # outside the registered path
        "https://hooks.clinic-b.example/fhir-events-x",  # not on a path boundary
        "https://hooks.clinic-b.example@evil.example/fhir-events",  # user info
        "http://127.0.0.1:9000/hook",  # loopback, outside local mode
        "https://169.254.169.254/latest/meta-data",  # link-local
        "https://hooks.clinic-b.example/fhir-events/../admin",  # leaves the prefix once resolved
    ],
)
def test_an_endpoint_outside_the_tenants_allow_list_is_refused(endpoint: str):
    error = refusal(subscription(channel={"endpoint": endpoint}))

    assert error.status == 422
    [issue] = error.to_fhir()["issue"]
    assert issue["code"] == "business-rule"
    assert issue["expression"] == ["Subscription.channel.endpoint"]
    assert "is not allowed for this tenant" in issue["diagnostics"]


def test_the_refusal_shows_the_endpoints_host_but_not_its_query():
    error = refusal(subscription(channel={"endpoint": "https://other.example/hook?token=s3cret"}))

    diagnostics = error.to_fhir()["issue"][0]["diagnostics"]
    assert "https://other.example" in diagnostics
    assert "s3cret" not in diagnostics


def test_an_endpoint_is_allowed_for_its_tenant_only():
    error = refusal_for_tenant("clinic-a", subscription())

    assert "is not allowed for this tenant" in error.to_fhir()["issue"][0]["diagnostics"]


def refusal_for_tenant(tenant: str, body: dict[str, Any]) -> OperationOutcomeError:
    with pytest.raises(OperationOutcomeError) as caught:
        prepare_subscription(tenant, body, None, POLICY)
    return caught.value


def test_a_rest_hook_needs_an_endpoint():
    body = subscription()
    del body["channel"]["endpoint"]

    error = refusal(body)

    assert error.to_fhir()["issue"][0]["expression"] == ["Subscription.channel.endpoint"]
    assert error.status == 422


def test_a_subscription_can_be_switched_off_when_its_endpoint_is_no_longer_allowed():
    # Given a subscription whose endpoint the administrator has since removed
    body = subscription(status="off", channel={"endpoint": "https://retired.example/hook"})

    # When the client switches it off, the update is accepted
    assert prepare_subscription(TENANT, body, None, POLICY)["status"] == "off"


def test_loopback_endpoints_are_allowed_in_local_mode():
    local = AllowList({}, allow_loopback_http=True)
    body = subscription(channel={"endpoint": "http://127.0.0.1:9000/hook"})

    assert prepare_subscription(TENANT, body, None, local)["status"] == "active"


@pytest.mark.parametrize(
    ("criteria", "names"),
    [
        ("Observation?foo=1", "'foo'"),
        ("Obsrvation?code=1", "'Obsrvation' is not a resource type this server stores"),
        ("http://other.example/fhir/Observation?code=1", "{Type}?{search parameters}"),
        ("Observation?date=xx2020-01-01", "(search parameter 'date')"),
        ("Observation?date=2020-13-45", "(search parameter 'date')"),
        ("Observation?code=a|b|c", "(search parameter 'code')"),
        ("Observation?patient=Organization/1", "(search parameter 'patient')"),
        ("Observation?code=", "'code' has no value"),
        ("Observation?_sort=date", "'_sort' shapes search results"),
        ("Observation?_include=Observation:patient", "'_include' shapes search results"),
        ("Observation?subject:Patient.name=peter", "'subject:Patient.name' is a chained parameter"),
        ("Observation?code-value-quantity=x$5", "'code-value-quantity'"),
        ("", "The criteria are empty"),
    ],
)
def test_criteria_that_cannot_be_evaluated_are_refused_naming_the_bad_part(criteria: str, names: str):
    error = refusal(subscription(criteria=criteria))

    assert error.status == 422
    [issue] = error.to_fhir()["issue"]
    assert issue["code"] == "invalid"
    assert issue["expression"] == ["Subscription.criteria"]
    assert issue["diagnostics"].startswith("Subscription.criteria: ")
    assert names in issue["diagnostics"]


def test_every_problem_is_listed_in_one_outcome():
    body = subscription(
        status="error", criteria="Observation?foo=1", channel={"endpoint": "http://evil.example/"}
    )

    error = refusal(body)

    assert [i["expression"] for i in error.to_fhir()["issue"]] == [
        ["Subscription.status"],
        ["Subscription.channel.endpoint"],
        ["Subscription.criteria"],
    ]


@pytest.mark.parametrize(
    "header",
    [
        "X-EHR-Signature: forged",
        "Content-Type: text/plain",
        "Host: elsewhere",
        "no colon",
        "X-Note: caf\u00e9",
    ],
)
def test_headers_the_platform_sets_or_malformed_ones_are_refused(header: str):
    error = refusal(subscription(channel={"header": ["Authorization: Bearer abc", header]}))

    [issue] = error.to_fhir()["issue"]
    assert issue["expression"] == ["Subscription.channel.header"]
    assert "header 2" in issue["diagnostics"]


@pytest.mark.parametrize("payload", [None, "application/fhir+json", "application/fhir+xml"])
def test_any_payload_mime_type_or_none_is_accepted(payload: str | None):
    body = subscription()
    body["channel"].pop("payload")
    if payload is not None:
        body["channel"]["payload"] = payload

    stored = prepare_subscription(TENANT, body, None, POLICY)

    assert stored["channel"].get("payload") == payload


# --- criteria match what a search would return ------------------------------------------------------


def observation(id_: str, *, code: str, system: str = LOINC, patient: str = "p1", date: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": date,
    }


RESOURCES = [
    observation("glucose-2019", code="2345-7", date="2019-12-31T23:00:00Z"),
    observation("glucose-2020", code="2345-7", date="2020-03-04"),
    observation("glucose-other-patient", code="2345-7", patient="p2", date="2020-06-01"),
    observation("glucose-local-system", code="2345-7", system="urn:local", date="2021-01-01"),
    observation("height", code="8302-2", date="2021-05-05T10:00:00+02:00"),
    {
        "resourceType": "Observation",
        "id": "device-subject",
        "status": "preliminary",
        "code": {"coding": [{"system": LOINC, "code": "2345-7"}]},
        "subject": {"reference": "Device/p1"},
        "effectivePeriod": {"start": "2020-01-01", "end": "2020-12-31"},
    },
]

CRITERIA = [
    f"Observation?code={LOINC}|2345-7",
    "Observation?code=2345-7",
    "Observation?code=urn:local|",
    f"Observation?code={LOINC}|2345-7,{LOINC}|8302-2",
    "Observation?patient=p1",
    "Observation?patient=Patient/p2",
    "Observation?subject=p1",
    "Observation?date=2020",
    "Observation?date=ge2020-03-04",
    "Observation?date=gt2020-03-04",
    "Observation?date=lt2020-01-01",
    "Observation?date=le2019-12-31",
    "Observation?date=sa2020-06-30",
    "Observation?date=eb2020-06-30",
    "Observation?date=ne2020",
    "Observation?date=ge2020&date=lt2021",
    f"Observation?code={LOINC}|2345-7&patient=p1&date=ge2020-01-01",
    "Observation?status:not=final",
    "Observation?_id=height,glucose-2020",
    "Observation?subject:missing=false&status=preliminary",
    "Observation",
]


@pytest.fixture(scope="module")
def stored() -> tuple[InMemoryRecordStore, list[dict[str, Any]]]:
    store = InMemoryRecordStore()
    fhir = FhirService(store)
    bodies = []
    for resource in RESOURCES:
        result = fhir.update(TENANT, "Observation", resource["id"], resource)
        assert result.stored is not None and result.stored.body is not None
        bodies.append(result.stored.body)
    return store, bodies


@pytest.mark.parametrize("criteria", CRITERIA)
def test_criteria_match_exactly_the_resources_a_search_returns(
    criteria: str, stored: tuple[InMemoryRecordStore, list[dict[str, Any]]]
):
    # Given the resources stored in a tenant
    store, bodies = stored
    resource_type, _, query = criteria.partition("?")
    params = {**parse_qs(query), "_count": ["1000"]}

    # When the same query is searched, and the criteria are matched against each resource
    page = SearchEngine(store, CursorCodec(b"k" * 32)).search(
        TENANT, resource_type, params, base="https://ehr.example/fhir", strict=True
    )
    found = {e["resource"]["id"] for e in page.bundle.get("entry", [])}
    matched = {body["id"] for body in bodies if parse_criteria(criteria).matches(body)}

    # Then both select the same resources
    assert matched == found


def by_id(id_: str) -> dict[str, Any]:
    return next(r for r in RESOURCES if r["id"] == id_)


def test_a_token_with_system_and_code_needs_both():
    criteria = parse_criteria(f"Observation?code={LOINC}|2345-7")

    assert criteria.matches(by_id("glucose-2020"))
    assert not criteria.matches(by_id("glucose-local-system"))


def test_a_patient_reference_matches_the_subject_patient_only():
    criteria = parse_criteria("Observation?patient=p1")

    assert criteria.matches(by_id("glucose-2020"))
    assert not criteria.matches(by_id("glucose-other-patient"))
    assert not criteria.matches(by_id("device-subject"))  # subject Device/p1 is no patient


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("2020-03-04", {"glucose-2020"}),
        ("ge2020-06-01", {"glucose-other-patient", "device-subject", "glucose-local-system", "height"}),
        ("lt2020-01-01", {"glucose-2019"}),
        ("eb2020-01-01", {"glucose-2019"}),
        ("sa2020-12-31", {"glucose-local-system", "height"}),
    ],
)
def test_date_prefixes_compare_like_search(date: str, expected: set[str]):
    criteria = parse_criteria(f"Observation?date={date}")

    assert {r["id"] for r in RESOURCES if criteria.matches(r)} == expected


def test_criteria_of_another_type_never_match():
    assert not parse_criteria("Condition?patient=p1").matches(by_id("glucose-2020"))


# --- cross-facility: the subscriber's patient is another record in the focus tenant ------------------

ALIASES = {"Patient/b-123": "Patient/a-456"}


def test_a_patient_alias_matches_the_same_persons_resource_in_another_tenant():
    # Given clinic B following its patient b-123, who is a-456 at clinic A
    criteria = parse_criteria(f"Observation?patient=b-123&code={LOINC}|2345-7")
    at_clinic_a = observation("x", code="2345-7", patient="a-456", date="2024-01-01")

    # Then clinic A's result for a-456 matches through the alias
    assert criteria.matches(at_clinic_a, patient_aliases=ALIASES)
    assert not criteria.matches(at_clinic_a)


def test_an_alias_never_matches_a_resource_with_the_subscribers_own_id_in_another_tenant():
    # Given clinic A happens to have an unrelated Patient/b-123
    criteria = parse_criteria("Observation?patient=b-123")
    unrelated = observation("y", code="2345-7", patient="b-123", date="2024-01-01")

    assert not criteria.matches(unrelated, patient_aliases=ALIASES)


def test_the_other_clauses_still_apply_across_tenants():
    criteria = parse_criteria(f"Observation?patient=Patient/b-123&code={LOINC}|8302-2")
    glucose = observation("x", code="2345-7", patient="a-456", date="2024-01-01")

    assert not criteria.matches(glucose, patient_aliases=ALIASES)


def test_criteria_naming_no_patient_never_match_another_tenants_resources():
    criteria = parse_criteria(f"Observation?code={LOINC}|2345-7")
    at_clinic_a = observation("x", code="2345-7", patient="a-456", date="2024-01-01")

    assert not criteria.matches(at_clinic_a, patient_aliases=ALIASES)
    assert not criteria.matches(at_clinic_a, foreign=True)


def test_a_patient_subscription_follows_the_aliased_patient_record():
    criteria = parse_criteria("Patient?_id=b-123")

    assert criteria.patients == ("Patient/b-123",)
    assert criteria.matches({"resourceType": "Patient", "id": "a-456"}, patient_aliases=ALIASES)
    assert not criteria.matches({"resourceType": "Patient", "id": "b-123"}, patient_aliases=ALIASES)


def test_criteria_list_the_patients_they_name():
    criteria = parse_criteria("Observation?patient=b-123,Patient/b-9&subject=Group/g1")

    assert criteria.patients == ("Patient/b-123", "Patient/b-9")


# --- delivery status and what is delivered to -------------------------------------------------------


def test_a_success_lifts_the_error():
    failing = {**subscription(status="error"), "error": "delivery failed: HTTP 503 after 4 attempts"}

    updated = delivery_status_update(failing, DeliveryResult(True, 1, 200, "delivered"))

    assert updated is not None
    assert updated["status"] == "active"
    assert "error" not in updated


def test_nothing_is_written_when_nothing_changes():
    active = subscription(status="active")
    failing = {**subscription(status="error"), "error": "delivery failed: HTTP 503 after 4 attempts"}

    assert delivery_status_update(active, DeliveryResult(True, 1, 200, "delivered")) is None
    assert delivery_status_update(failing, DeliveryResult(False, 4, 503, "HTTP 503 after 4 attempts")) is None
    assert delivery_status_update(subscription(status="off"), DeliveryResult(False, 1, 404, "x")) is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"status": "active"}, True),
        ({"status": "error"}, True),
        ({"status": "off"}, False),
        ({"status": "requested"}, False),
        ({"status": "active", "end": "2000-01-01T00:00:00Z"}, False),
        ({"status": "active", "end": "2999-01-01"}, True),
    ],
)
def test_which_subscriptions_are_delivered_to(changes: dict[str, Any], expected: bool):
    assert is_deliverable(subscription(**changes)) is expected
