"""Subscription notifications as a subscriber's endpoint receives them (a real loopback receiver)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ehr.labs.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from ehr.sharing.subscriptions import (
    AllowList,
    DeliveryResult,
    InMemoryDeadLetters,
    Notification,
    SqsDeadLetters,
    SubscriptionDeliverer,
    deliver_all,
    delivery_status_update,
)
from infra.local.webhook_receiver import WebhookReceiver

TENANT = "clinic-b"
SECRET = b"clinic-b-webhook-secret-0123456789"
LOCAL = AllowList({}, allow_loopback_http=True)
# The focus as stored at clinic A: none of this may ever reach the subscriber.
FOCUS_BODY = {
    "resourceType": "Observation",
    "id": "obs-77",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
    "subject": {"reference": "Patient/a-456", "display": "Peter Chalmers"},
    "valueQuantity": {"value": 6.3, "unit": "mmol/l"},
}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as running:
        yield running


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def deliverer(sleeps: list[float]) -> SubscriptionDeliverer:
    return SubscriptionDeliverer(
        lambda tenant: SECRET if tenant == TENANT else b"wrong", LOCAL, timeout=2.0, sleep=sleeps.append
    )


def subscription(endpoint: str, *, payload: str | None = None, **changes: Any) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "header": ["Authorization: Bearer subscriber-token"],
    }
    if payload is not None:
        channel["payload"] = payload
    return {
        "resourceType": "Subscription",
        "id": "sub-1",
        "status": "active",
        "reason": "Follow results",
        "criteria": "Observation?patient=b-123",
        "channel": channel,
        **changes,
    }


NOTIFICATION = Notification(
    tenant=TENANT,
    subscription_id="sub-1",
    focus="Observation/obs-77",
    focus_tenant="clinic-a",
    event_number=3,
    operation="update",
    version=3,
)


# --- what arrives ----------------------------------------------------------------------------------


def test_the_notification_arrives_signed_with_the_tenants_secret(receiver, deliverer):
    # When a notification is delivered to the subscriber's endpoint
    result = deliverer.deliver(subscription(receiver.url), NOTIFICATION)

    # Then it arrived once, signed so that the subscriber can verify it
    assert result == DeliveryResult(delivered=True, attempts=1, status=204, reason="delivered")
    [arrived] = receiver.deliveries
    assert arrived.signature_valid is True
    assert receiver.verify(arrived, SECRET)
    assert arrived.signature is not None and arrived.signature.startswith("sha256=")
    assert arrived.timestamp is not None and arrived.delivery_id


def test_the_subscribers_channel_headers_and_the_subscription_id_are_sent(receiver, deliverer):
    deliverer.deliver(subscription(receiver.url), NOTIFICATION)

    [arrived] = receiver.deliveries
    assert arrived.header("Authorization") == "Bearer subscriber-token"
    assert arrived.header("X-EHR-Subscription") == "Subscription/sub-1"
    assert arrived.header("X-EHR-Event-Number") == "3"


def test_without_a_payload_the_post_is_empty(receiver, deliverer):
    deliverer.deliver(subscription(receiver.url), NOTIFICATION)

    [arrived] = receiver.deliveries
    assert arrived.method == "POST"
    assert arrived.body == b""
    assert arrived.header("Content-Length") == "0"
    assert arrived.header("Content-Type") is None


@pytest.mark.parametrize("payload", ["application/fhir+json", "application/fhir+xml"])
def test_with_a_payload_the_post_names_the_changed_resource_only(receiver, deliverer, payload):
    # Given a subscription asking for a payload, and the FHIR base URL of the focus's tenant
    deliverer.base_url = lambda tenant: f"https://ehr.example/tenants/{tenant}/fhir"

    # When it is notified of a change
    deliverer.deliver(subscription(receiver.url, payload=payload), NOTIFICATION)

    # Then the body is an id-only history Bundle: where the resource is, not what it says
    [arrived] = receiver.deliveries
    assert arrived.header("Content-Type") == "application/fhir+json"
    assert arrived.json() == {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "fullUrl": "https://ehr.example/tenants/clinic-a/fhir/Observation/obs-77",
                "request": {"method": "PUT", "url": "Observation/obs-77"},
                "response": {"status": "200 OK", "etag": 'W/"3"'},
            }
        ],
    }
    text = arrived.body.decode()
    assert '"resource"' not in text
    for content in ("Glucose", "2345-7", "Peter", "Chalmers", "a-456", "6.3", "mmol"):
        assert content not in text


def test_a_created_resource_is_announced_as_a_create(receiver, deliverer):
    created = Notification(TENANT, "sub-1", "Observation/obs-78", TENANT, 1, operation="create", version=1)

    deliverer.deliver(subscription(receiver.url, payload="application/fhir+json"), created)

    [entry] = receiver.deliveries[0].json()["entry"]
    assert entry == {
        "request": {"method": "POST", "url": "Observation"},
        "response": {"status": "201 Created", "location": "Observation/obs-78/_history/1", "etag": 'W/"1"'},
    }


# --- retries ---------------------------------------------------------------------------------------


def test_server_errors_are_retried_with_back_off_until_delivered(receiver, deliverer, sleeps):
    # Given an endpoint that fails twice
    receiver.fail(2, status=500)

    # When a notification is delivered
    result = deliverer.deliver(subscription(receiver.url), NOTIFICATION)

    # Then it is delivered on the third attempt, after waiting 0.5 s and 1 s
    assert result == DeliveryResult(delivered=True, attempts=3, status=204, reason="delivered")
    assert sleeps == [0.5, 1.0]
    arrived = receiver.deliveries
    assert [d.status for d in arrived] == [500, 500, 204]
    # one delivery id for all attempts; each attempt signed and valid
    assert len({d.delivery_id for d in arrived}) == 1
    assert all(d.signature_valid for d in arrived)


def test_throttling_is_retried_and_its_retry_after_respected(receiver, deliverer, sleeps):
    receiver.fail(1, status=429, headers={"Retry-After": "7"})

    result = deliverer.deliver(subscription(receiver.url), NOTIFICATION)

    assert result.delivered and result.attempts == 2
    assert sleeps == [7.0]


def test_a_dropped_connection_and_a_timeout_are_retried(receiver, sleeps):
    # Given an endpoint that drops the first connection and answers the second too late
    receiver.fail(1, status=None)
    receiver.fail(1, status=204, delay=1.0)
    deliverer = SubscriptionDeliverer(lambda _: SECRET, LOCAL, timeout=0.3, sleep=sleeps.append)

    # When a notification is delivered
    result = deliverer.deliver(subscription(receiver.url), NOTIFICATION)

    # Then the third attempt delivers it
    assert result == DeliveryResult(delivered=True, attempts=3, status=204, reason="delivered")
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize("status", [400, 404, 410, 422])
def test_a_client_error_is_not_retried(receiver, deliverer, sleeps, status):
    receiver.fail(1, status=status)

    result = deliverer.deliver(subscription(receiver.url), NOTIFICATION)

    assert result == DeliveryResult(
        delivered=False, attempts=1, status=status, reason=f"the endpoint refused it (HTTP {status})"
    )
    assert len(receiver.deliveries) == 1
    assert sleeps == []


def test_a_signature_the_subscriber_rejects_is_not_retried(receiver, sleeps):
    # Given a deliverer signing with another key than the subscriber knows
    wrong = SubscriptionDeliverer(lambda _: b"not-the-shared-secret", LOCAL, sleep=sleeps.append)

    result = wrong.deliver(subscription(receiver.url), NOTIFICATION)

    assert (result.delivered, result.attempts, result.status) == (False, 1, 401)
    assert receiver.deliveries[0].signature_valid is False


def test_a_redirect_is_not_followed():
    # Given an endpoint that redirects to another server
    with WebhookReceiver() as elsewhere, WebhookReceiver() as endpoint:
        endpoint.fail(1, status=307, headers={"Location": elsewhere.url})
        deliverer = SubscriptionDeliverer(lambda _: SECRET, LOCAL, sleep=lambda _: None)

        # When a notification is delivered
        result = deliverer.deliver(subscription(endpoint.url), NOTIFICATION)

        # Then the other server is never contacted
        assert (result.delivered, result.attempts, result.status) == (False, 1, 307)
        assert elsewhere.deliveries == []


# --- giving up ---------------------------------------------------------------------------------------


def test_exhausted_retries_dead_letter_and_put_the_subscription_in_error(receiver, deliverer, sleeps):
    # Given an endpoint that keeps failing
    receiver.fail(10, status=503)
    active = subscription(receiver.url)
    dead_letters = InMemoryDeadLetters()

    # When a notification is delivered
    [(_, result, update)] = deliver_all(deliverer, [(active, NOTIFICATION)], dead_letters)

    # Then four attempts were made with growing back-off, and none more
    assert result == DeliveryResult(
        delivered=False, attempts=4, status=503, reason="HTTP 503 after 4 attempts"
    )
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(receiver.deliveries) == 4
    # the notification is dead-lettered
    assert dead_letters.letters == [(NOTIFICATION, result)]
    # and the subscription goes to error with a short reason that names no endpoint
    assert update is not None
    assert update["status"] == "error"
    assert update["error"] == "delivery failed: HTTP 503 after 4 attempts"
    assert "127.0.0.1" not in update["error"]


def test_an_unreachable_endpoint_ends_in_error(sleeps):
    # Given an endpoint nothing listens on any more
    with WebhookReceiver() as gone:
        url = gone.url
    deliverer = SubscriptionDeliverer(lambda _: SECRET, LOCAL, attempts=2, sleep=sleeps.append)

    result = deliverer.deliver(subscription(url), NOTIFICATION)

    assert result == DeliveryResult(False, 2, None, "connection refused after 2 attempts")
    assert delivery_status_update(subscription(url), result) is not None


def test_a_disallowed_endpoint_is_never_contacted(receiver, sleeps):
    # Given a cloud policy (loopback not allowed) and a subscription stored with a loopback endpoint
    cloud = SubscriptionDeliverer(
        lambda _: SECRET, AllowList({TENANT: ("https://hooks.example/",)}), sleep=sleeps.append
    )
    dead_letters = InMemoryDeadLetters()

    # When a notification is delivered
    [(_, result, update)] = deliver_all(cloud, [(subscription(receiver.url), NOTIFICATION)], dead_letters)

    # Then no request was sent, and the subscription goes to error
    assert receiver.deliveries == []
    assert result == DeliveryResult(False, 0, None, "the endpoint is not allowed for this tenant")
    assert len(dead_letters) == 1
    assert update is not None and update["status"] == "error"


def test_a_later_success_lifts_the_error(receiver, deliverer):
    failing = subscription(receiver.url, status="error", error="delivery failed: HTTP 503 after 4 attempts")

    result = deliverer.deliver(failing, NOTIFICATION)
    update = delivery_status_update(failing, result)

    assert update is not None and update["status"] == "active" and "error" not in update


def test_one_notification_keeps_its_delivery_id_when_sent_again(receiver, deliverer):
    # When the same change is notified twice (a re-run) and then the next change
    deliverer.deliver(subscription(receiver.url), NOTIFICATION)
    deliverer.deliver(subscription(receiver.url), NOTIFICATION)
    next_change = Notification(TENANT, "sub-1", "Observation/obs-77", "clinic-a", 4)
    deliverer.deliver(subscription(receiver.url), next_change)

    # Then the subscriber can recognise the resend, and tell the next change apart
    first, again, following = (d.delivery_id for d in receiver.deliveries)
    assert first == again != following


class FakeSqs:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.sent.append(kwargs)
        return {"MessageId": "m1"}


def test_the_sqs_dead_letter_carries_identifiers_only():
    sqs = FakeSqs()
    result = DeliveryResult(False, 4, 503, "HTTP 503 after 4 attempts")

    SqsDeadLetters("https://sqs.example/123/subscription-dead-letters", client=sqs).put(NOTIFICATION, result)

    [sent] = sqs.sent
    assert sent["QueueUrl"] == "https://sqs.example/123/subscription-dead-letters"
    message = json.loads(sent["MessageBody"])
    assert message == {
        "kind": "SubscriptionDeliveryFailed",
        "tenant": "clinic-b",
        "subscription": "Subscription/sub-1",
        "focus": "Observation/obs-77",
        "focusTenant": "clinic-a",
        "eventNumber": 3,
        "operation": "update",
        "version": 3,
        "deliveryId": message["deliveryId"],
        "attempts": 4,
        "status": 503,
        "reason": "HTTP 503 after 4 attempts",
    }


def test_the_signature_headers_are_the_platform_webhook_ones(receiver, deliverer):
    deliverer.deliver(subscription(receiver.url), NOTIFICATION)

    [arrived] = receiver.deliveries
    signing = {TIMESTAMP_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER}
    assert {name.lower() for name in signing} <= set(arrived.headers)
