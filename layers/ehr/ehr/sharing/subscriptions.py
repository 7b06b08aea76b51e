"""FHIR R4 Subscriptions with rest-hook channels: checking them, matching changes, delivering.

A Subscription is an ordinary resource of its tenant. Three things happen around it:

1. **Write path** — every create/update of a Subscription goes through ``prepare_subscription``:
   only ``rest-hook`` channels, an endpoint the tenant's ``EndpointPolicy`` allows, criteria
   ``{Type}?{search parameters}`` that this server can evaluate; the status the client asked for
   becomes the status stored (``requested`` → ``active``). Refusals are one 422 OperationOutcome
   listing every problem.
2. **Matching** — for each committed change the notifier asks ``parse_criteria(...).matches(body)``:
   the criteria are parsed by the search engine's own parser (``ehr.fhir.search.query``) and
   evaluated on the resource's index terms (``extract.index_terms``) with the search engine's own
   ``match.matches``, so a subscription fires exactly for the resources a search with the same
   query would return. Cross-facility matching maps the subscriber's patient references to the
   same person's record in the changed resource's tenant (``patient_aliases``).
3. **Delivery** — ``SubscriptionDeliverer`` POSTs to the endpoint, signed like every platform
   webhook (``ehr.labs.webhook``), retries transient failures with exponential back-off, and
   reports a ``DeliveryResult``; ``delivery_status_update`` says what the Subscription becomes
   (``error`` with a short reason, or back to ``active``); ``DeadLetters`` keep what could not be
   delivered.

Notifications never carry PHI: without ``channel.payload`` the POST is empty (the R4 "ping");
with any payload mime type it is an *id-only* ``history`` Bundle naming the changed resource
(``render_notification``) — never the resource itself. See docs/subscriptions.md.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Protocol
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from ehr.fhir.outcome import Issue, OperationOutcomeError, invalid
from ehr.fhir.search.definitions import resource_types
from ehr.fhir.search.encoding import parse_date_range
from ehr.fhir.search.extract import index_terms
from ehr.fhir.search.match import matches as clause_matches
from ehr.fhir.search.query import IGNORED_PARAMS, SearchClause, SearchValue, parse_query
from ehr.sharing import webhooks

REST_HOOK: Final = "rest-hook"
STATUSES: Final = frozenset({"requested", "active", "error", "off"})
DELIVERABLE_STATUSES: Final = frozenset({"active", "error"})
FHIR_JSON: Final = "application/fhir+json"
SUBSCRIPTION_HEADER: Final = "X-EHR-Subscription"  # "Subscription/{id}" on every delivery
EVENT_HEADER: Final = "X-EHR-Event-Number"  # Notification.event_number on every delivery
MAX_HEADERS: Final = 10
MAX_HEADER_CHARS: Final = 4096
MAX_ERROR_CHARS: Final = 200
# Headers a subscriber may not set through channel.header: the transport's and the signature's.
RESERVED_HEADERS: Final = frozenset(
    {"content-type", "content-length", "host", "connection", "transfer-encoding", "te", "upgrade", "expect"}
)
RESERVED_HEADER_PREFIX: Final = "x-ehr-"
# Search parameters that shape a result page rather than select resources: meaningless here.
RESULT_PARAMS: Final = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_total",
        "_elements",
        "_contained",
        "_containedType",
        "_cursor",
    }
)
CRITERIA_SHAPE: Final = "Criteria are a search relative to this server: {Type}?{search parameters}."

_TYPE: Final = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_HEADER: Final = re.compile(r"^(?P<name>[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}):[ \t]*(?P<value>[\x20-\x7e\t]*)$")
_DELIVERY_NAMESPACE: Final = uuid.UUID("6f1c7f6e-52b5-4a8e-9a53-2f0e5d1c9b1a")
_NO_ALIASES: Final[Mapping[str, str]] = MappingProxyType({})
_PATIENT: Final = "Patient/"


# --- which endpoints a tenant may use ---------------------------------------------------------


class EndpointPolicy(Protocol):
    def allowed(self, tenant: str, endpoint: str) -> bool: ...


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        address = _ip(self.host)
        return address is not None and address.is_loopback


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _url(text: str) -> _Url | None:
    """The parts of an http(s) URL the policy compares; None for anything ambiguous.

    Refused: user info (``https://allowed@elsewhere/``), fragments, non-ASCII, white space or
    control characters, bad ports, and ``.``/``..`` path segments (also percent-encoded), which a server
    would resolve to a path outside the prefix.
    """
    if not isinstance(text, str) or not text.isascii():
        return None  # an internationalised host name is registered and used in its xn-- form
    if any(c.isspace() or ord(c) < 32 or c in "\\\x7f" for c in text):
        return None
    try:
        parts: SplitResult = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or parts.fragment:
        return None
    path = parts.path or "/"
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        return None
    default = 443 if scheme == "https" else 80
    return _Url(scheme, parts.hostname.lower().rstrip("."), port or default, path)


def _within(endpoint: _Url, prefix: _Url) -> bool:
    """``endpoint`` starts with ``prefix`` on a path-segment boundary, same scheme, host and port."""
    if (endpoint.scheme, endpoint.host, endpoint.port) != (prefix.scheme, prefix.host, prefix.port):
        return False
    base = prefix.path
    if base in ("", "/") or endpoint.path == base:
        return True
    return endpoint.path.startswith(base if base.endswith("/") else base + "/")


@dataclass(frozen=True)
class AllowList:
    """Endpoints each tenant may deliver to, as URL prefixes registered by the platform's operators.

    Cloud rule: the endpoint is ``https://`` and starts with one of the tenant's prefixes — same
    host and port, and the path continues the prefix's path at a ``/`` (``…/clinic-a`` does not
    allow ``…/clinic-abc``). Loopback, link-local and unspecified IP literals are refused whatever
    the prefixes say. With ``allow_loopback_http`` (local mode) ``http``/``https`` endpoints on
    ``127.0.0.1``, ``::1`` or ``localhost`` are allowed for every tenant as well.
    """

    prefixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    allow_loopback_http: bool = False

    def allowed(self, tenant: str, endpoint: str) -> bool:
        target = _url(endpoint)
        if target is None:
            return False
        if target.loopback:
            return self.allow_loopback_http
        address = _ip(target.host)
        if address is not None and (address.is_link_local or address.is_unspecified or address.is_multicast):
            return False
        if target.scheme != "https":
            return False
        for prefix in self.prefixes.get(tenant, ()):
            allowed = _url(prefix)
            if allowed is not None and allowed.scheme == "https" and _within(target, allowed):
                return True
        return False


# --- criteria -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criteria:
    """``Subscription.criteria`` parsed by the search engine: its type and clauses (ANDed)."""

    resource_type: str
    clauses: tuple[SearchClause, ...] = ()
    text: str = ""

    @property
    def params(self) -> tuple[str, ...]:
        """The search parameter codes the criteria use."""
        return tuple(dict.fromkeys(clause.param.code for clause in self.clauses))

    @property
    def patients(self) -> tuple[str, ...]:
        """The ``Patient/{id}`` references the criteria name (what cross-facility matching aliases)."""
        found: list[str] = []
        for clause in self.clauses:
            if clause.modifier in ("missing", "identifier", "not"):
                continue
            if clause.param.type == "reference":
                found += [k for v in clause.values for k in v.keys if _is_patient(k)]
            elif clause.param.code == "_id" and self.resource_type == "Patient":
                found += [f"{_PATIENT}{v.code}" for v in clause.values if v.system is None and v.code]
        return tuple(dict.fromkeys(found))

    def matches(
        self,
        resource: Mapping[str, Any],
        *,
        patient_aliases: Mapping[str, str] = _NO_ALIASES,
        foreign: bool | None = None,
    ) -> bool:
        """Whether a search with these criteria would return ``resource`` (the committed version).

        ``foreign`` (default: whether ``patient_aliases`` is given) says that ``resource`` belongs
        to another tenant than the subscription. Then ids in the criteria mean nothing as they
        stand, so: a Patient reference (and ``Patient?_id``) is replaced by its alias — the same
        person's ``Patient/{id}`` in the resource's tenant — and matches nothing without one; other
        literal references match nothing (``:identifier`` values are global and kept); and the
        criteria must name at least one aliased patient, so that a subscription never follows
        every resource of another facility.
        """
        if resource.get("resourceType") != self.resource_type:
            return False
        clauses = self.clauses
        if foreign if foreign is not None else bool(patient_aliases):
            localized = self._localized(patient_aliases)
            if localized is None:
                return False
            clauses = localized
        if not clauses:
            return True
        terms = index_terms(resource, self.params)
        return all(clause_matches(clause, terms) for clause in clauses)

    def _localized(self, aliases: Mapping[str, str]) -> tuple[SearchClause, ...] | None:
        """The clauses as they read in the resource's tenant; None when they cannot match there."""
        clauses: list[SearchClause] = []
        named = False
        for clause in self.clauses:
            if clause.modifier in ("missing", "identifier") or (
                clause.param.type != "reference" and clause.param.code != "_id"
            ):
                clauses.append(clause)
                continue
            values: list[SearchValue] = []
            if clause.param.type != "reference":  # _id: ids are per tenant
                if self.resource_type != "Patient" or clause.modifier is not None:
                    return None
                for value in clause.values:
                    alias = aliases.get(f"{_PATIENT}{value.code}") if value.system is None else None
                    if alias is not None:
                        alias_id = _alias(f"{_PATIENT}{value.code}", alias)[len(_PATIENT) :]
                        values.append(replace(value, raw=alias_id, code=alias_id))
            else:
                for value in clause.values:
                    keys = [_alias(k, aliases[k]) for k in value.keys if _is_patient(k) and k in aliases]
                    if keys:
                        values.append(replace(value, keys=tuple(dict.fromkeys(keys))))
            if not values:
                return None
            named = True
            clauses.append(replace(clause, values=tuple(values)))
        return tuple(clauses) if named else None


def _is_patient(key: str) -> bool:
    return key.startswith(_PATIENT) and "/" not in key[len(_PATIENT) :]


def _alias(key: str, alias: str) -> str:
    """An alias as ``Patient/{id}`` (a bare id is accepted too)."""
    return alias if "/" in alias else f"{key.split('/', 1)[0]}/{alias}"


def parse_criteria(criteria: str, *, now: datetime | None = None) -> Criteria:
    """``{Type}?{search parameters}`` as ``Criteria``; raises ``invalid`` (400) naming the bad part.

    Every parameter must be one this server searches by, with a value; result parameters
    (``_count``, ``_sort``, ``_include`` …) and chains are refused: a subscription selects single
    resources as they change. ``now`` anchors the ``ap`` date prefix (default: now).
    """
    if not isinstance(criteria, str) or not criteria.strip():
        raise invalid(f"The criteria are empty. {CRITERIA_SHAPE}")
    text = criteria.strip()
    resource_type, _, query_text = text.partition("?")
    if not _TYPE.match(resource_type):
        shown = resource_type[:64]
        raise invalid(f"'{shown}' is not a resource type. {CRITERIA_SHAPE}")
    if resource_type not in resource_types():
        raise invalid(f"'{resource_type}' is not a resource type this server stores.")
    params = parse_qs(query_text, keep_blank_values=True)
    for name, values in params.items():
        base = name.split(":", 1)[0]
        if base in IGNORED_PARAMS:
            continue
        if base in RESULT_PARAMS:
            raise invalid(f"'{name}' shapes search results; criteria can only select resources.")
        if any(not value.strip() for value in values):
            raise invalid(f"The search parameter '{name}' has no value.")
    try:
        query = parse_query(resource_type, params, now=now)
    except OperationOutcomeError as error:
        issue = error.issues[0]
        where = f" (search parameter '{issue.expression[0]}')" if issue.expression else ""
        raise invalid(f"{issue.diagnostics.rstrip('.')}{where}.") from error
    if query.unknown_params:
        names = ", ".join(f"'{name}'" for name in query.unknown_params)
        raise invalid(f"{names}: not a search parameter of {resource_type} this server supports.")
    for clause in query.clauses:
        if clause.chain is not None:
            raise invalid(f"'{clause.name}' is a chained parameter; criteria cannot use chains.")
    return Criteria(resource_type=resource_type, clauses=query.clauses, text=text)


# --- the write path -----------------------------------------------------------------------------


def _error(code: str, path: str, diagnostics: str) -> Issue:
    return Issue(code=code, diagnostics=diagnostics, expression=(path,))


def channel_headers(channel: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The ``channel.header`` entries as ``{name: value}``, and what is wrong with any of them."""
    raw = channel.get("header")
    headers: dict[str, str] = {}
    problems: list[str] = []
    if raw is None:
        return headers, problems
    entries = raw if isinstance(raw, list) else [raw]
    if len(entries) > MAX_HEADERS:
        problems.append(f"at most {MAX_HEADERS} headers are allowed")
    for number, entry in enumerate(entries[:MAX_HEADERS], start=1):
        found = _HEADER.match(entry) if isinstance(entry, str) and len(entry) <= MAX_HEADER_CHARS else None
        if found is None:
            problems.append(f"header {number} is not 'Name: value' on one line")
            continue
        name = found.group("name")
        if name.lower() in RESERVED_HEADERS or name.lower().startswith(RESERVED_HEADER_PREFIX):
            problems.append(f"header {number} ({name}) is set by the platform and cannot be chosen")
            continue
        headers[name] = found.group("value").strip()
    return headers, problems


def _shown_endpoint(endpoint: str) -> str:
    """Scheme and host only: a query string may carry the subscriber's token."""
    try:
        parts = urlsplit(endpoint)
    except ValueError:
        return "the endpoint"
    return f"{parts.scheme}://{parts.hostname}" if parts.scheme and parts.hostname else "the endpoint"


def _status_for(
    requested: Any, previous: Mapping[str, Any] | None, *, by_server: bool
) -> tuple[str, str | None, Issue | None]:
    """(status to store, error text to keep, the problem) for the status a write asks for."""
    if requested is None or requested in ("requested", "active"):
        return "active", None, None
    if requested == "off":
        return "off", None, None
    if requested == "error":
        if by_server:
            return "error", None, None
        if previous is not None and previous.get("status") == "error":  # echoing what it read
            kept = previous.get("error")
            return "error", kept if isinstance(kept, str) else None, None
        return (
            "error",
            None,
            _error(
                "business-rule",
                "Subscription.status",
                "Only the server sets a Subscription's status to 'error'; use 'requested' or 'off'.",
            ),
        )
    return (
        "off",
        None,
        _error(
            "invalid",
            "Subscription.status",
            f"Subscription.status must be one of {', '.join(sorted(STATUSES))}.",
        ),
    )


def prepare_subscription(
    tenant: str,
    body: dict[str, Any],
    previous: dict[str, Any] | None,
    policy: EndpointPolicy,
    *,
    by_server: bool = False,
) -> dict[str, Any]:
    """The Subscription body to store for a create (``previous`` None) or an update.

    Checks the channel (``rest-hook`` only: other types are refused as not supported), the
    endpoint (``policy.allowed``; not checked while the result is ``off``, which is never
    delivered, so an endpoint no longer allowed can still be switched off), the headers, and the
    criteria (``parse_criteria``); every problem is listed in one 422 OperationOutcome.

    Status: ``requested``, ``active`` or none → ``active`` (a client re-activates a subscription
    in ``error`` by sending ``requested``); ``off`` stays ``off``; ``error`` is refused unless the
    subscription already is in ``error`` (a client echoing what it read). ``Subscription.error``
    is the server's: a client's value is dropped. ``by_server=True`` is the platform's own write
    after a delivery (``delivery_status_update``): the status and error are stored as given.
    """
    issues: list[Issue] = []
    stored = copy.deepcopy(body)
    status, kept_error, status_issue = _status_for(body.get("status"), previous, by_server=by_server)
    if status_issue is not None:
        issues.append(status_issue)
    channel = body.get("channel")
    if not isinstance(channel, Mapping):
        issues.append(_error("required", "Subscription.channel", "Subscription.channel is required."))
        channel = {}
    channel_type = channel.get("type")
    if channel_type != REST_HOOK:
        issues.append(
            _error(
                "not-supported",
                "Subscription.channel.type",
                f"Only the '{REST_HOOK}' channel is supported, not '{str(channel_type)[:40]}'.",
            )
        )
    else:
        endpoint = channel.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint.strip():
            issues.append(
                _error(
                    "required",
                    "Subscription.channel.endpoint",
                    "A rest-hook Subscription needs channel.endpoint, the URL notifications are posted to.",
                )
            )
        elif status != "off" and not policy.allowed(tenant, endpoint.strip()):
            issues.append(
                _error(
                    "business-rule",
                    "Subscription.channel.endpoint",
                    f"The endpoint ({_shown_endpoint(endpoint)}) is not allowed for this tenant: "
                    "notifications go only to https URLs under a prefix the platform administrator "
                    "registered for the tenant.",
                )
            )
        _, header_problems = channel_headers(channel)
        issues += [
            _error("invalid", "Subscription.channel.header", f"Subscription.channel.header: {problem}.")
            for problem in header_problems
        ]
    payload = channel.get("payload")
    if payload is not None and (not isinstance(payload, str) or not payload.strip()):
        issues.append(
            _error("invalid", "Subscription.channel.payload", "channel.payload must be a mime type.")
        )
    try:
        parse_criteria(body.get("criteria", ""))
    except OperationOutcomeError as error:
        diagnostics = error.issues[0].diagnostics
        issues.append(_error("invalid", "Subscription.criteria", f"Subscription.criteria: {diagnostics}"))
    if issues:
        raise OperationOutcomeError(status=422, issues=tuple(issues))
    stored["status"] = status
    stored.pop("error", None)
    if status == "error":
        error_text = body.get("error") if by_server else kept_error
        if isinstance(error_text, str) and error_text:
            stored["error"] = error_text
    return stored


def is_deliverable(subscription: Mapping[str, Any], *, now: datetime | None = None) -> bool:
    """Whether a change should be delivered: ``active`` or ``error`` (a success lifts the error),
    a rest-hook channel with an endpoint, and ``Subscription.end`` not passed."""
    if subscription.get("status") not in DELIVERABLE_STATUSES:
        return False
    channel = subscription.get("channel")
    if not isinstance(channel, Mapping) or channel.get("type") != REST_HOOK or not channel.get("endpoint"):
        return False
    end = subscription.get("end")
    if isinstance(end, str) and end:
        try:
            _, last = parse_date_range(end)
            return (now or datetime.now(UTC)) <= last
        except (ValueError, TypeError):
            return True
    return True


# --- notifications ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One change to tell one subscriber about (identifiers only)."""

    tenant: str  # the subscriber's tenant
    subscription_id: str
    focus: str  # "Observation/123": the changed resource
    focus_tenant: str  # the tenant that owns the focus (another one for cross-facility)
    event_number: int | str  # monotonic per subscription, or the focus's version
    operation: str = "update"  # create | update | delete
    version: int | None = None  # the focus's version, when known

    @property
    def cross_facility(self) -> bool:
        return self.tenant != self.focus_tenant


_REQUEST: Final[Mapping[str, tuple[str, str]]] = {
    "create": ("POST", "201 Created"),
    "update": ("PUT", "200 OK"),
    "delete": ("DELETE", "204 No Content"),
}


def render_notification(notification: Notification, payload: str | None, *, base: str = "") -> bytes:
    """The body POSTed: empty without ``payload``; otherwise an id-only ``history`` Bundle.

    The Bundle has one entry naming the focus — ``fullUrl`` (when ``base``, the focus tenant's
    FHIR base URL, is known), ``request`` and ``response`` (status, and the ETag when the version
    is known) — and never the resource, whatever mime type ``payload`` names.
    """
    if not payload:
        return b""
    method, status = _REQUEST.get(notification.operation, _REQUEST["update"])
    resource_type = notification.focus.split("/", 1)[0]
    url = resource_type if method == "POST" else notification.focus
    entry: dict[str, Any] = {}
    if base:
        entry["fullUrl"] = f"{base.rstrip('/')}/{notification.focus}"
    entry["request"] = {"method": method, "url": url}
    response: dict[str, Any] = {"status": status}
    if method == "POST":
        response["location"] = notification.focus + (
            f"/_history/{notification.version}" if notification.version is not None else ""
        )
    if notification.version is not None:
        response["etag"] = f'W/"{notification.version}"'
    entry["response"] = response
    bundle = {"resourceType": "Bundle", "type": "history", "entry": [entry]}
    return json.dumps(bundle, separators=(",", ":")).encode("utf-8")


def delivery_id(notification: Notification) -> str:
    """The ``X-EHR-Delivery`` id: the same for every attempt and every re-run of one notification."""
    name = "|".join(
        (
            notification.tenant,
            notification.subscription_id,
            notification.focus_tenant,
            notification.focus,
            str(notification.event_number),
        )
    )
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, name))


@dataclass(frozen=True)
class DeliveryResult:
    delivered: bool
    attempts: int  # requests sent (0: the endpoint was not contacted)
    status: int | None  # the last HTTP status (None: no answer)
    reason: str  # short, no PHI, never the endpoint


class SubscriptionDeliverer:
    """Delivers notifications to rest-hook endpoints, signed, with retries.

    ``secret(tenant)`` is the tenant's HMAC key. Each attempt is signed afresh (a new
    ``X-EHR-Timestamp``); ``X-EHR-Delivery`` stays the same (``delivery_id``). Connection
    failures, timeouts, 429 and 5xx are retried up to ``attempts`` requests in all, sleeping
    ``backoff * 2**(n-1)`` after the n-th failure (longer when a 429/503 says ``Retry-After``); 2xx
    is delivered; any other answer (4xx, a redirect) is a refusal and is not retried.
    ``base_url(tenant)`` gives a tenant's FHIR base URL for the notification's ``fullUrl``.
    """

    def __init__(
        self,
        secret: Callable[[str], bytes],
        policy: EndpointPolicy,
        *,
        attempts: int = 4,
        backoff: float = 0.5,
        timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        base_url: Callable[[str], str] | None = None,
        max_retry_after: float = 30.0,
    ) -> None:
        if attempts < 1 or backoff < 0 or timeout <= 0:
            raise ValueError("attempts must be at least 1, backoff not negative, timeout positive")
        self.secret = secret
        self.policy = policy
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.sleep = sleep
        self.clock = clock
        self.base_url = base_url
        self.max_retry_after = max_retry_after

    def deliver(self, subscription: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        channel = subscription.get("channel")
        channel = channel if isinstance(channel, Mapping) else {}
        endpoint = channel.get("endpoint")
        if channel.get("type") != REST_HOOK or not isinstance(endpoint, str) or not endpoint.strip():
            return DeliveryResult(False, 0, None, "the subscription has no rest-hook endpoint")
        endpoint = endpoint.strip()
        if not self.policy.allowed(notification.tenant, endpoint):
            return DeliveryResult(False, 0, None, "the endpoint is not allowed for this tenant")
        payload = channel.get("payload")
        base = self.base_url(notification.focus_tenant) if self.base_url is not None else ""
        body = render_notification(notification, payload if isinstance(payload, str) else None, base=base)
        extra, _ = channel_headers(channel)
        fixed = {
            **extra,
            SUBSCRIPTION_HEADER: f"Subscription/{notification.subscription_id}",
            EVENT_HEADER: str(notification.event_number),
        }
        if body:
            fixed["Content-Type"] = FHIR_JSON
        secret = self.secret(notification.tenant)
        delivery = delivery_id(notification)
        status: int | None = None
        failure = ""
        for attempt in range(1, self.attempts + 1):
            signed = webhooks.signed_headers(secret, body, delivery, now=self.clock())
            retry_after: float | None = None
            try:
                reply = webhooks.post(endpoint, body, {**fixed, **signed}, timeout=self.timeout)
            except webhooks.WebhookUnreachableError as error:
                status, failure = None, error.kind
            else:
                status, retry_after = reply.status, reply.retry_after
                if 200 <= reply.status < 300:
                    return DeliveryResult(True, attempt, reply.status, "delivered")
                if 300 <= reply.status < 400:
                    return DeliveryResult(
                        False,
                        attempt,
                        reply.status,
                        f"the endpoint redirected (HTTP {reply.status}); redirects are not followed",
                    )
                if reply.status != 429 and reply.status < 500:
                    return DeliveryResult(
                        False, attempt, reply.status, f"the endpoint refused it (HTTP {reply.status})"
                    )
                failure = f"HTTP {reply.status}"
            if attempt < self.attempts:
                self.sleep(self._delay(attempt, retry_after))
        return DeliveryResult(False, self.attempts, status, f"{failure} after {self.attempts} attempts")

    def _delay(self, failures: int, retry_after: float | None) -> float:
        delay = self.backoff * 2.0 ** (failures - 1)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


def delivery_status_update(subscription: Mapping[str, Any], result: DeliveryResult) -> dict[str, Any] | None:
    """The Subscription body after a delivery, or None when nothing changes.

    Not delivered (retries spent, refused, endpoint no longer allowed) → ``error`` with
    ``Subscription.error`` = "delivery failed: <reason>" (no PHI, no endpoint); delivered while in
    ``error`` → ``active`` without ``error``. Only ``active`` and ``error`` subscriptions change
    (one switched ``off`` meanwhile stays off). Store it with ``prepare_subscription(...,
    by_server=True)`` and ``If-Match`` on the version read, so a client's concurrent change wins.
    """
    status = subscription.get("status")
    if status not in DELIVERABLE_STATUSES:
        return None
    if result.delivered:
        if status != "error":
            return None
        updated = dict(subscription)
        updated["status"] = "active"
        updated.pop("error", None)
        return updated
    text = f"delivery failed: {result.reason}"[:MAX_ERROR_CHARS]
    if status == "error" and subscription.get("error") == text:
        return None
    updated = dict(subscription)
    updated["status"] = "error"
    updated["error"] = text
    return updated


# --- dead letters -------------------------------------------------------------------------------


class DeadLetters(Protocol):
    def put(self, notification: Notification, result: DeliveryResult) -> None: ...


def dead_letter_message(notification: Notification, result: DeliveryResult) -> dict[str, Any]:
    """What a dead letter records: identifiers and the outcome only, never PHI or the endpoint."""
    return {
        "kind": "SubscriptionDeliveryFailed",
        "tenant": notification.tenant,
        "subscription": f"Subscription/{notification.subscription_id}",
        "focus": notification.focus,
        "focusTenant": notification.focus_tenant,
        "eventNumber": notification.event_number,
        "operation": notification.operation,
        "version": notification.version,
        "deliveryId": delivery_id(notification),
        "attempts": result.attempts,
        "status": result.status,
        "reason": result.reason,
    }


class InMemoryDeadLetters:
    """The in-process fake of ``DeadLetters`` (tests, local mode)."""

    def __init__(self) -> None:
        self.letters: list[tuple[Notification, DeliveryResult]] = []

    def put(self, notification: Notification, result: DeliveryResult) -> None:
        self.letters.append((notification, result))

    def __len__(self) -> int:
        return len(self.letters)


class SqsDeadLetters:
    """``DeadLetters`` on an SQS queue: one message per undelivered notification (ids only)."""

    def __init__(self, queue_url: str, *, client: Any = None) -> None:
        self.queue_url = queue_url
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # the adapter's own dependency, loaded when first used

            self._client = boto3.client("sqs")
        return self._client

    def put(self, notification: Notification, result: DeliveryResult) -> None:
        message = dead_letter_message(notification, result)
        self.client.send_message(
            QueueUrl=self.queue_url, MessageBody=json.dumps(message, separators=(",", ":"), sort_keys=True)
        )


def deliver_all(
    deliverer: SubscriptionDeliverer,
    work: Sequence[tuple[Mapping[str, Any], Notification]],
    dead_letters: DeadLetters,
) -> list[tuple[Notification, DeliveryResult, dict[str, Any] | None]]:
    """Deliver each (subscription, notification); dead-letter failures; return each result with
    the Subscription update it calls for (``delivery_status_update``) for the caller to store."""
    outcomes: list[tuple[Notification, DeliveryResult, dict[str, Any] | None]] = []
    for subscription, notification in work:
        result = deliverer.deliver(subscription, notification)
        if not result.delivered:
            dead_letters.put(notification, result)
        outcomes.append((notification, result, delivery_status_update(subscription, result)))
    return outcomes
