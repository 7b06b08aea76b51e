"""Requests API Gateway refused before any function ran, entered into the audit trail.

A request without a bearer token, with a malformed one, or with one the TOKEN authorizer
rejects is answered 401 by API Gateway itself: no function sees it, so the request pipeline
cannot record it. API Gateway writes every request to its access log (identifiers only: no
query string, no body, no token); a subscription filter on that log hands the refusals to the
``gateway_audit`` function, which turns each into an ``AuditRecord`` in the trail of the tenant
named by the URL, the same record the pipeline writes for a refusal it makes itself.

Asynchronous, and that is safe: a refused request returned no PHI, so nothing waits on the
record. Nothing is lost either: a record that cannot be stored raises, Lambda retries the log
batch, then keeps it in the function's on-failure queue; the record id is derived from the
API Gateway request id, so a redelivered batch never records a request twice.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ehr.api.app import SUBTYPES
from ehr.api.routes import ROUTES, Route
from ehr.security.audit import AuditRecord, AuditRecordExistsError, AuditSink
from ehr.security.identity import TENANT_ID
from ehr.security.tenancy import TenantDirectory

# API Gateway's response types ($context.error.responseType) of a refused authorization: no or a
# malformed token, a token the authorizer rejected or denied, an authorizer that failed.
REFUSAL_TYPES: Final = (
    "UNAUTHORIZED",
    "ACCESS_DENIED",
    "AUTHORIZER_FAILURE",
    "AUTHORIZER_CONFIGURATION_ERROR",
)
# The access log fields this module reads (infra/constructs/api.py writes them; a test checks).
ACCESS_LOG_KEYS: Final = ("requestId", "ip", "httpMethod", "resourcePath", "path", "status", "errorType")
# The record id is a name-based UUID of the request id: one request, one record, however often
# the log batch is delivered.
RECORD_NAMESPACE: Final = uuid.UUID("7d0c2f5e-4b8a-5a36-9f67-2c1e0b5d8a41")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ROUTES: Final[dict[tuple[str, str], Route]] = {route.key: route for route in ROUTES}


def is_refusal(entry: Mapping[str, Any]) -> bool:
    """An access log entry of a request API Gateway refused at the authorizer (the filter's test)."""
    return str(entry.get("errorType") or "") in REFUSAL_TYPES


def path_parameters(template: str, path: str) -> dict[str, str] | None:
    """``{"tenant": "clinic-a", …}`` of ``path`` under the resource ``template``, or None."""
    names = template.strip("/").split("/")
    values = path.strip("/").split("/")
    if len(names) != len(values):
        return None
    params: dict[str, str] = {}
    for name, value in zip(names, values, strict=True):
        if name.startswith("{") and name.endswith("}"):
            params[name.strip("{}+")] = value
        elif name != value:
            return None
    return params


def _instant(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def refusal_record(entry: Mapping[str, Any], *, timestamp_ms: int) -> AuditRecord | None:
    """The audit record of a refused request, or None when the entry is no refusal of a tenant route.

    The tenant is the URL's (unverified, since the credentials were refused): the trail of the
    facility whose data was asked for. Whether that tenant exists is the caller's check.
    """
    if not is_refusal(entry):
        return None
    route = _ROUTES.get((str(entry.get("httpMethod") or ""), str(entry.get("resourcePath") or "")))
    if route is None or not route.auth or not route.tenant_scoped:
        return None
    params = path_parameters(route.path, str(entry.get("path") or ""))
    if params is None or not TENANT_ID.match(params.get("tenant", "")):
        return None
    request_id = str(entry.get("requestId") or "")
    if not request_id or request_id == "-":
        return None
    try:
        status = int(str(entry.get("status") or "401"))
    except ValueError:
        status = 401
    resource_type = params.get("type", "")
    resource_type = resource_type if _TYPE.match(resource_type) else ""
    resource_id = params.get("id", "")
    entities = (f"{resource_type}/{resource_id}",) if resource_type and _ID.match(resource_id) else ()
    subtype, action = SUBTYPES.get(route.operation_id, ("operation", "E"))
    ip = str(entry.get("ip") or "")
    return AuditRecord(
        id=str(uuid.uuid5(RECORD_NAMESPACE, request_id)),
        tenant=params["tenant"],
        recorded=_instant(timestamp_ms),
        action=action,
        subtype=subtype,
        outcome="4" if status < 500 else "8",
        status=status,
        source_ip=ip if ip and ip != "-" else None,
        request_id=request_id,
        entities=entities,
        patients=(resource_id,) if resource_type == "Patient" and entities else (),
        resource_type=resource_type or None,
    )


@dataclass
class RefusalCounts:
    recorded: int = 0
    already_recorded: int = 0  # a redelivered log batch
    unknown_tenant: int = 0  # the URL names no tenant of this deployment: nobody's trail to write
    ignored: int = 0  # not a refusal of an authenticated tenant route, or not JSON

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def log_entry(message: str) -> dict[str, Any] | None:
    """One JSON access log line, or None when the line is not a JSON object."""
    try:
        entry = json.loads(message)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


class GatewayRefusalAuditor:
    """Writes the audit record of each refused request in a batch of access log entries."""

    def __init__(self, audit: AuditSink, tenants: TenantDirectory) -> None:
        self._audit = audit
        self._tenants = tenants

    def record_log_events(self, events: Iterable[tuple[int, str]]) -> RefusalCounts:
        """CloudWatch log events (timestamp in ms, message) of the access log."""
        return self.record((timestamp_ms, log_entry(message)) for timestamp_ms, message in events)

    def record(self, entries: Iterable[tuple[int, Mapping[str, Any] | None]]) -> RefusalCounts:
        """``entries`` are (CloudWatch timestamp in ms, parsed log line). Raises
        ``AuditUnavailableError`` when a record cannot be stored (the batch is then retried)."""
        counts = RefusalCounts()
        for timestamp_ms, entry in entries:
            record = refusal_record(entry, timestamp_ms=timestamp_ms) if entry is not None else None
            if record is None:
                counts.ignored += 1
                continue
            if self._tenants.get(record.tenant) is None:
                counts.unknown_tenant += 1
                continue
            try:
                self._audit.record(record)
            except AuditRecordExistsError:
                counts.already_recorded += 1
                continue
            counts.recorded += 1
        return counts
