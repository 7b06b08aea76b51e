"""Reading the audit trail through the API: ``AuditEvent?patient=…&date=…`` (accounting of
disclosures). Only search is offered; AuditEvents are never created or changed by clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from ehr.fhir.cursors import CursorCodec
from ehr.fhir.outcome import invalid
from ehr.fhir.search.encoding import date_range
from ehr.security.audit import AuditQueryError, AuditSink
from ehr.security.audit_fhir import to_audit_event

DEFAULT_COUNT: Final = 50
MAX_COUNT: Final = 500
SUPPORTED: Final = frozenset({"patient", "date", "_count", "_cursor", "_format", "_pretty"})


def audit_bundle(
    sink: AuditSink, cursors: CursorCodec, tenant: str, params: Mapping[str, Sequence[str]], *, base: str
) -> tuple[dict[str, Any], list[str]]:
    """A searchset of the tenant's AuditEvents, newest first, and the patients it concerns."""
    unknown = sorted(set(params) - SUPPORTED)
    if unknown:
        raise invalid(
            f"AuditEvent search supports patient, date and _count only (not {', '.join(unknown)}).",
            expression=unknown,
        )
    patient = _patient(params.get("patient"))
    since, until = _window(params.get("date") or [])
    count = _count(params.get("_count"))
    kept = {k: list(v) for k, v in params.items() if k not in ("_cursor", "_format", "_pretty")}
    scope = "audit|" + urlencode(sorted((k, v) for k, values in kept.items() for v in values))
    tokens = params.get("_cursor") or []
    state = cursors.decode(tokens[-1], tenant=tenant, scope=scope) if tokens else None
    try:
        page = sink.query(tenant, patient=patient, since=since, until=until, limit=count, cursor=state)
    except AuditQueryError as exc:
        raise invalid(f"The audit trail cannot be searched that way: {exc}", expression=["date"]) from exc
    self_url = f"{base}/AuditEvent"
    links = [
        {
            "relation": "self",
            "url": self_url
            + ("?" + urlencode([(k, v) for k, values in kept.items() for v in values]) if kept else ""),
        }
    ]
    if page.cursor:
        token = cursors.encode(tenant=tenant, scope=scope, state=page.cursor)
        links.append(
            {
                "relation": "next",
                "url": f"{self_url}?"
                + urlencode([*((k, v) for k, values in kept.items() for v in values), ("_cursor", token)]),
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if page.items:
        bundle["entry"] = [
            {
                "fullUrl": f"{base}/AuditEvent/{r.id}",
                "resource": to_audit_event(r, base_url=base),
                "search": {"mode": "match"},
            }
            for r in page.items
        ]
    patients = sorted({p for r in page.items for p in r.patients})
    return bundle, patients


def _patient(values: Sequence[str] | None) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise invalid("patient may be given once.", expression=["patient"])
    value = values[0].removeprefix("Patient/")
    if not value or "/" in value or "," in value:
        raise invalid("patient takes one Patient id or Patient/id.", expression=["patient"])
    return value


def _window(values: Sequence[str]) -> tuple[str | None, str | None]:
    since: str | None = None
    until: str | None = None
    for raw in values:
        prefix, text = (raw[:2], raw[2:]) if raw[:2] in ("ge", "gt", "le", "lt", "eq") else ("eq", raw)
        try:
            low, high = date_range(text)
        except (ValueError, TypeError) as exc:
            raise invalid(
                f"{raw[:40]!r} is not a date (use ge/le/gt/lt/eq prefixes).", expression=["date"]
            ) from exc
        if prefix in ("ge", "gt", "eq"):
            since = max(filter(None, (since, high if prefix == "gt" else low)))
        if prefix in ("le", "lt", "eq"):
            until = min(filter(None, (until, low if prefix == "lt" else high)))
    return since, until


def _count(values: Sequence[str] | None) -> int:
    if not values:
        return DEFAULT_COUNT
    text = values[-1]
    if not text.isdigit() or not 0 < int(text) <= MAX_COUNT:
        raise invalid(f"_count must be a whole number from 1 to {MAX_COUNT}.", expression=["_count"])
    return int(text)
