"""An HL7 v2 endpoint on fakes (in-memory store, ledger and archive), and ACK reading helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ehr.api.app import Api
from ehr.api.hl7v2_api import build_hl7v2_api
from ehr.api.http import HttpRequest
from ehr.bootstrap import FhirServices, bootstrap_hl7v2
from ehr.fhir.cursors import CursorCodec
from ehr.hl7v2.inbound import Hl7v2Inbound
from ehr.hl7v2.ports import InMemoryMessageArchive, InMemoryMessageLedger
from ehr.labs.ports import InMemoryLabOrders, RecordingSignals
from ehr.security.audit import InMemoryAuditSink
from ehr.security.tenancy import InMemoryTenantDirectory, new_tenant
from ehr.settings import AuthSettings, Hl7v2InboundSettings
from ehr.store.memory import InMemoryRecordStore

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
ROUTE = "/tenants/{tenant}/hl7v2"
ER7 = "x-application/hl7-v2+er7"
LAB_SCOPE = "system/*.cruds"


@dataclass
class Ack:
    """An ACK as a sender reads it."""

    text: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def segments(self) -> list[list[str]]:
        """Fields of each segment, split on the ACK's own field separator (the sender's)."""
        start = self.text.find("MSH")
        separator = self.text[start + 3] if start >= 0 and len(self.text) > start + 3 else "|"
        return [s.split(separator) for s in self.text.split("\r") if s]

    def first(self, name: str) -> list[str]:
        return next(s for s in self.segments if s[0] == name)

    def all(self, name: str) -> list[list[str]]:
        return [s for s in self.segments if s[0] == name]

    @property
    def code(self) -> str:
        return self.first("MSA")[1]

    @property
    def acked_control_id(self) -> str:
        return self.first("MSA")[2]

    @property
    def errors(self) -> list[list[str]]:
        return self.all("ERR")

    def field(self, segment: str, number: int) -> str:
        seg = self.first(segment)
        if segment == "MSH":  # MSH-1 is the separator itself
            return seg[number - 1] if number - 1 < len(seg) else ""
        return seg[number] if number < len(seg) else ""


@dataclass
class Endpoint:
    api: Api
    services: FhirServices
    inbound: Hl7v2Inbound
    ledger: InMemoryMessageLedger
    archive: InMemoryMessageArchive
    audit: InMemoryAuditSink
    token: str

    def post(
        self,
        message: str | bytes,
        *,
        tenant: str = "acme-lab",
        token: str | None = None,
        content_type: str = ER7,
    ) -> Ack:
        body = message.encode("utf-8") if isinstance(message, str) else message
        headers = {
            "host": "api.example",
            "x-forwarded-proto": "https",
            "content-type": content_type,
            "authorization": f"Bearer {token or self.token}",
        }
        request = HttpRequest(
            method="POST",
            resource=ROUTE,
            path=ROUTE.replace("{tenant}", tenant),
            path_params={"tenant": tenant},
            headers=headers,
            body=body,
        )
        response = self.api.handle(request)
        return Ack(response.body, response.status, dict(response.headers))

    def search(self, tenant: str, resource_type: str, query: str) -> list[dict[str, Any]]:
        found = self.services.search.find(tenant, resource_type, query, limit=50, header="test")
        return [r.body for r in found if r.body is not None]


def endpoint(auth: AuthSettings, token: str, **overrides: Any) -> Endpoint:
    settings = Hl7v2InboundSettings(
        **auth.model_dump(), records_table="records", audit_table="audit", cursor_secret_name="unused"
    )
    ledger = overrides.pop("ledger", None) or InMemoryMessageLedger()
    archive = overrides.pop("archive", None) or InMemoryMessageArchive()
    audit = InMemoryAuditSink()
    tenants = InMemoryTenantDirectory(
        [new_tenant("acme-lab", "lab", "Lab"), new_tenant("clinic-a", "clinic", "A")]
    )
    services, inbound = bootstrap_hl7v2(
        settings,
        tenants=tenants,
        store=overrides.pop("store", None) or InMemoryRecordStore(),
        cursors=CursorCodec(b"unit-test-cursor-secret-32-bytes!!"),
        audit=audit,
        ledger=ledger,
        archive=archive,
        lab_orders=overrides.pop("lab_orders", None) or InMemoryLabOrders(),
        signals=overrides.pop("signals", None) or RecordingSignals(),
        **overrides,
    )
    return Endpoint(build_hl7v2_api(services, inbound), services, inbound, ledger, archive, audit, token)


def sample(name: str) -> bytes:
    return (SHARED_DATA / "hl7v2" / name).read_bytes()


def adt_a04(control_id: str = "MSG-1", mrn: str = "12345", family: str = "TESTPATIENT") -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|REGADT|GOOD HEALTH|EHR|ACME|20240101120000||ADT^A04^ADT_A01|{control_id}|P|2.5.1",
            "EVN|A04|20240101120000",
            f"PID|1||{mrn}^^^GHH^MR||{family}^ALEX^J||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701",
            "PV1|1|O|CLINIC^101^1||||1234^DOCTOR^DANA||||||||||||V-1",
        ]
    )
