"""Receive HL7 v2 messages: parse, check, deduplicate, archive, map, commit, acknowledge.

One request may carry one message or a batch (FHS/BHS envelopes, or several MSH in a row);
each message gets its own ACK. What happens to one message:

1. ER7 normalisation and parse (``er7``); no usable MSH → ACK AR, HTTP 400.
2. The standard's definition of its structure (``structure``, from hl7apy): an unsupported
   version or processing id → AR; missing required fields and segments → warnings.
3. Idempotency by MSH-10 within the sending application/facility (``MessageLedger``): a replay
   of a completed message returns the ACK it got and creates nothing; the same control id with
   different content → AE (205, duplicate key); a duplicate that arrives while the first is
   still processing → AE (206) with HTTP 503 so the sender retries.
4. The raw message is archived (``MessageArchive``, S3 + KMS) before anything is mapped.
5. The mapping (``ehr.hl7v2.mapping``) gives one transaction Bundle of conditional upserts plus
   a Provenance whose target is every resource written and whose entity is the archived
   message; it commits atomically with the sender's scopes. A message the sender must fix → AE
   with an ERR naming the segment and field; an unsupported type → AR.
6. Patient merges (ADT^A40) move the merged patient's references to the survivor.
7. The ACK and the references written are archived next to the message and the ledger entry
   is completed.

Nothing here is a 500: a store or archive failure answers AE with HTTP 503 and leaves the
ledger claim released, so a retry processes the message from the start (upserts make that safe).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ehr.fhir import jsonio
from ehr.fhir.outcome import OperationOutcomeError
from ehr.hl7v2 import ack as acks
from ehr.hl7v2 import er7, structure
from ehr.hl7v2.ack import AckIssue
from ehr.hl7v2.mapping import Mapping, MappingContext, MappingError, UnsupportedMessageError, map_message
from ehr.hl7v2.ports import (
    ArchiveUnavailableError,
    LedgerEntry,
    LedgerUnavailableError,
    MessageArchive,
    MessageLedger,
)
from ehr.labs import results
from ehr.labs.ports import LabOrdersUnavailableError, PlacerEntry
from ehr.security.audit import AuditRecord, AuditSink, AuditUnavailableError

if TYPE_CHECKING:
    from ehr.fhir.bundles import BundleProcessor
    from ehr.labs.ports import LabOrders, WorkflowSignals
    from ehr.security.scopes import AccessPolicy
    from ehr.store.ports import RecordStore, StoredResource

log = logging.getLogger("ehr.hl7v2")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
PROCESSING_IDS = frozenset({"P", "T", "D"})
ARCHIVE_PREFIX = "_hl7v2"
MESSAGE_ID_SYSTEM = "urn:ehr:hl7v2:message"
SENDER_SYSTEM = "urn:ehr:hl7v2:sender"
ER7 = "x-application/hl7-v2+er7"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class MessageOutcome:
    """What became of one message of a request."""

    ack: str
    code: str  # AA / AE / AR
    http_status: int
    control_id: str = ""
    message_type: str = ""
    references: tuple[str, ...] = ()
    replayed: bool = False
    touched: list[StoredResource] = field(default_factory=list)  # for the request's audit record


@dataclass
class InboundReply:
    status: int
    body: str
    outcomes: list[MessageOutcome] = field(default_factory=list)

    @property
    def references(self) -> list[str]:
        return [r for o in self.outcomes for r in o.references]

    @property
    def touched(self) -> list[StoredResource]:
        return [r for o in self.outcomes for r in o.touched]


class TransientError(Exception):
    """Something outside the message failed (store, archive); the sender should retry."""


class Hl7v2Inbound:
    def __init__(
        self,
        *,
        bundles: BundleProcessor,
        store: RecordStore,
        ledger: MessageLedger,
        archive: MessageArchive,
        clock: Callable[[], datetime] | None = None,
        lease_seconds: float = 120.0,
        lab_orders: LabOrders | None = None,
        signals: WorkflowSignals | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self._bundles = bundles
        self._store = store
        self._ledger = ledger
        self._archive = archive
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lease_seconds = lease_seconds
        # Lab results are correlated with the orders the lab workflow sent (ehr.labs.results).
        self._lab_orders = lab_orders
        self._signals = signals
        self._audit = audit

    def receive(
        self,
        tenant: str,
        payload: bytes,
        *,
        access: AccessPolicy | None,
        base: str,
        sender_kind: str = "",
    ) -> InboundReply:
        if len(payload) > MAX_MESSAGE_BYTES:
            outcome = self._reject(
                None, f"The request is larger than {MAX_MESSAGE_BYTES // (1024 * 1024)} MB.", "207", 413
            )
            return InboundReply(outcome.http_status, outcome.ack, [outcome])
        text = er7.decode(payload)
        messages, envelope = er7.split_messages(text)
        if not messages:
            outcome = self._reject(None, "The request holds no HL7 v2 message.", "100", 400)
            return InboundReply(400, outcome.ack, [outcome])
        outcomes = [self._one(tenant, m, access=access, base=base, kind=sender_kind) for m in messages]
        body = acks.batch([o.ack for o in outcomes], envelope=envelope, now=self._clock())
        if len(outcomes) == 1:
            status = outcomes[0].http_status
        elif any(o.http_status >= 500 for o in outcomes):
            status = 503
        elif all(o.http_status == 400 for o in outcomes):
            status = 400
        else:
            status = 200
        return InboundReply(status, body, outcomes)

    def unsupported_media(self, media_type: str) -> InboundReply:
        reason = f"Content-Type {media_type[:60]!r} is not HL7 v2 ER7; send {ER7} (or text/plain)."
        outcome = self._reject(None, reason, "200", 415)
        return InboundReply(415, outcome.ack, [outcome])

    # -- one message ---------------------------------------------------------------------------

    def _one(
        self, tenant: str, text: str, *, access: AccessPolicy | None, base: str, kind: str = ""
    ) -> MessageOutcome:
        try:
            message = er7.parse(text)
        except er7.Er7Error as error:
            issue = AckIssue(
                error.reason, code="100", segment=error.segment, position=error.position, field=error.field
            )
            return self._reject(None, error.reason, "100", 400, issues=[issue])
        errors, warnings = structure.check(message)
        if errors:
            return self._answer(message, acks.REJECT, errors[0].reason, [*errors, *warnings], 400)
        processing = message.msh.get(11).upper()
        if processing and processing not in PROCESSING_IDS:
            issue = AckIssue(
                f"MSH-11 processing id {processing!r} is not one of P, T, D.",
                code="202",
                segment="MSH",
                position=1,
                field=11,
            )
            return self._answer(message, acks.REJECT, issue.reason, [issue], 400)
        if not message.control_id:
            issue = AckIssue(
                "MSH-10 (message control id) is required: it is how a resend is recognised.",
                code="101",
                segment="MSH",
                position=1,
                field=10,
            )
            return self._answer(message, acks.REJECT, issue.reason, [issue], 400)
        ctx = MappingContext(
            tenant=tenant,
            sending_application=message.sending_application,
            sending_facility=message.sending_facility,
            received=self._clock(),
        )
        digest = hashlib.sha256(message.text.encode("utf-8")).hexdigest()
        try:
            existing = self._ledger.claim(
                tenant, ctx.sender, message.control_id, digest, lease_seconds=self._lease_seconds
            )
        except LedgerUnavailableError:
            return self._unavailable(message)
        if existing is not None:
            return self._duplicate(message, existing, digest)
        try:
            outcome = self._process(
                tenant,
                message,
                ctx,
                text=text,
                digest=digest,
                warnings=warnings,
                access=access,
                base=base,
                kind=kind,
            )
        except TransientError:
            self._ledger.release(tenant, ctx.sender, message.control_id)
            return self._unavailable(message)
        except Exception:
            self._ledger.release(tenant, ctx.sender, message.control_id)
            raise
        return outcome

    def _process(
        self,
        tenant: str,
        message: er7.Message,
        ctx: MappingContext,
        *,
        text: str,
        digest: str,
        warnings: list[AckIssue],
        access: AccessPolicy | None,
        base: str,
        kind: str = "",
    ) -> MessageOutcome:
        received = ctx.received
        folder = (
            f"{ARCHIVE_PREFIX}/{received:%Y/%m/%d}/{_safe(ctx.sender)}/"
            f"{_safe(message.control_id)}-{digest[:12]}"
        )
        self._archive_put(tenant, f"{folder}/message.hl7", text.encode("utf-8"), ER7)
        outcome = self._map_and_commit(
            tenant, message, ctx, folder, warnings, access=access, base=base, kind=kind
        )
        record = {
            "tenant": tenant,
            "sender": ctx.sender,
            "controlId": message.control_id,
            "messageType": f"{message.message_type}^{message.trigger_event}",
            "received": received.isoformat(),
            "ackCode": outcome.code,
            "references": list(outcome.references),
            "normalisation": message.notes,
        }
        self._archive_put(tenant, f"{folder}/ack.hl7", outcome.ack.encode("utf-8"), ER7)
        self._archive_put(
            tenant, f"{folder}/result.json", json.dumps(record, indent=2).encode("utf-8"), "application/json"
        )
        try:
            self._ledger.complete(
                tenant,
                ctx.sender,
                message.control_id,
                LedgerEntry(
                    "done",
                    digest,
                    ack=outcome.ack,
                    http_status=outcome.http_status,
                    references=outcome.references,
                    archive_key=folder,
                ),
            )
        except LedgerUnavailableError:
            # Committed but not recorded: a resend re-runs the upserts (new versions, no duplicates).
            log.warning(
                "ledger completion failed", extra={"tenant": tenant, "control_id": message.control_id}
            )
        log.info(
            "hl7v2 message processed",
            extra={
                "tenant": tenant,
                "message_type": f"{message.message_type}^{message.trigger_event}",
                "control_id": message.control_id,
                "ack": outcome.code,
                "resources": len(outcome.references),
            },
        )
        return outcome

    def _map_and_commit(
        self,
        tenant: str,
        message: er7.Message,
        ctx: MappingContext,
        folder: str,
        warnings: list[AckIssue],
        *,
        access: AccessPolicy | None,
        base: str,
        kind: str = "",
    ) -> MessageOutcome:
        order = None
        if self._lab_orders is not None and message.message_type == "ORU":
            try:
                order = results.correlate(message, tenant, self._lab_orders)
            except LabOrdersUnavailableError as error:
                raise TransientError("lab orders") from error
        filing_ctx = replace(ctx, tenant=order.tenant) if order is not None else ctx
        try:
            mapping = map_message(message, filing_ctx)
        except UnsupportedMessageError as error:
            return self._answer(message, acks.REJECT, error.reason, [_issue(error), *warnings], 200)
        except MappingError as error:
            return self._answer(message, acks.ERROR, error.reason, [_issue(error), *warnings], 200)
        warnings = [*warnings, *(_warning(w) for w in mapping.warnings)]
        if order is not None:
            # Results of an order this platform sent: filed in the ordering clinic's chart, on
            # the order's patient, with the authority of the order (the lab's token is its own).
            ordered = self._store.current(order.tenant, "ServiceRequest", order.service_request_id)
            subject = (ordered.body or {}).get("subject") if ordered is not None else None
            mapping = replace(
                mapping,
                bundle=results.file_in_order(
                    mapping.bundle, order, subject if isinstance(subject, dict) else None
                ),
            )
        elif self._lab_orders is not None and message.message_type == "ORU" and kind == "lab":
            mapping = replace(mapping, bundle=results.with_review_task(mapping.bundle, ctx.sender))
            warnings.append(
                AckIssue(
                    "The results match no order sent to this lab; they are kept for review.",
                    code="204",
                    severity="W",
                    segment="OBR",
                    field=2,
                )
            )
        bundle = self._with_provenance(mapping, message, filing_ctx, folder)
        processor = self._bundles.bind(None if order is not None else access)
        filing_tenant = order.tenant if order is not None else tenant
        try:
            response = processor.process(filing_tenant, bundle, base=base)
        except OperationOutcomeError as error:
            if error.status >= 500 or error.status == 429:
                raise TransientError(error.code) from error
            return self._refused(message, error, warnings)
        except (ConnectionError, TimeoutError) as error:
            raise TransientError(type(error).__name__) from error
        references = _written(response)
        if order is not None:
            self._filed_for_order(order, processor, references, access, results.summary(response, bundle))
        merged_count = 0
        for survivor, merged in mapping.merges:
            try:
                merged_count += self._merge(tenant, survivor, merged, processor, base=base)
            except OperationOutcomeError as error:
                if error.status >= 500 or error.status == 429:
                    raise TransientError(error.code) from error
                warnings.append(
                    AckIssue(
                        f"The merge was recorded but references could not be moved: {_diagnostics(error)}",
                        code="207",
                        severity="W",
                        segment="MRG",
                    )
                )
        text = f"{len(references)} resources written"
        if mapping.merges:
            text += f"; {merged_count} references moved to the surviving patient"
        outcome = self._answer(message, acks.ACCEPT, text, warnings, 200)
        outcome.references = references
        outcome.touched = list(processor.touched)
        return outcome

    def _filed_for_order(
        self,
        order: PlacerEntry,
        processor: BundleProcessor,
        references: Sequence[str],
        access: AccessPolicy | None,
        summary: dict[str, Any],
    ) -> None:
        """Results of an order were filed: audit them in the clinic and resume its workflow."""
        try:
            self._record_filing(order.tenant, processor.touched, references, access)
        except AuditUnavailableError as error:  # filed but not audited there: the resend re-files
            raise TransientError("audit") from error
        if self._signals is not None and self._lab_orders is not None:
            results.resume(self._lab_orders, self._signals, order, summary)

    def _record_filing(
        self,
        tenant: str,
        touched: Sequence[StoredResource],
        references: Sequence[str],
        access: AccessPolicy | None,
    ) -> None:
        """The ordering clinic's own audit record of results a lab wrote into its chart."""
        if self._audit is None:
            return
        identity = access.identity if access is not None else None
        patients = sorted({p for r in touched for p in r.compartments})
        self._audit.record(
            AuditRecord(
                id=str(uuid.uuid4()),
                tenant=tenant,
                recorded=self._clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                action="C",
                subtype="hl7v2-lab-result",
                outcome="0",
                status=200,
                client_id=identity.client_id if identity else None,
                user=identity.subject if identity else None,
                entities=tuple(references[:1000]),
                patients=tuple(patients[:1000]),
                resource_type="Bundle",
            )
        )

    def _with_provenance(
        self, mapping: Mapping, message: er7.Message, ctx: MappingContext, folder: str
    ) -> dict[str, Any]:
        bundle = dict(mapping.bundle)
        entries = list(bundle.get("entry") or [])
        targets = [
            {"reference": e["fullUrl"]}
            for e in entries
            if isinstance(e, dict) and str(e.get("fullUrl", "")).startswith("urn:uuid:")
        ]
        if not targets:
            return bundle
        provenance_id = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{ctx.tenant}|{ctx.sender}|{message.control_id}|hl7v2")
        )
        provenance = {
            "resourceType": "Provenance",
            "id": provenance_id,
            "target": targets,
            "recorded": ctx.received.isoformat().replace("+00:00", "Z"),
            "activity": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                        "code": "UPDATE",
                        "display": "revise",
                    }
                ],
                "text": f"HL7 v2 {message.message_type}^{message.trigger_event}",
            },
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "author",
                            }
                        ]
                    },
                    "who": {
                        "identifier": {"system": SENDER_SYSTEM, "value": ctx.sender},
                        "display": ctx.sender,
                    },
                }
            ],
            "entity": [
                {
                    "role": "source",
                    "what": {
                        "identifier": {
                            "system": MESSAGE_ID_SYSTEM,
                            "value": f"{ctx.sender}|{message.control_id}",
                        },
                        "display": f"{folder}/message.hl7",
                    },
                }
            ],
        }
        entries.append(
            {
                "fullUrl": f"urn:uuid:{provenance_id}",
                "resource": provenance,
                "request": {"method": "PUT", "url": f"Provenance/{provenance_id}"},
            }
        )
        bundle["entry"] = entries
        return bundle

    def _merge(
        self, tenant: str, survivor_query: str, merged_query: str, processor: BundleProcessor, *, base: str
    ) -> int:
        """Point every reference to the merged patient at the survivor; returns how many moved."""
        survivor = self._one_patient(tenant, survivor_query, processor)
        merged = self._one_patient(tenant, merged_query, processor)
        if survivor is None or merged is None or survivor == merged:
            return 0
        old, new = f"Patient/{merged}", f"Patient/{survivor}"
        entries: list[dict[str, Any]] = []
        moved = 0
        cursor = None
        while True:
            page = self._store.compartment(tenant, merged, limit=100, cursor=cursor)
            for resource_type, resource_id in page.items:
                if resource_type == "Patient":
                    continue
                current = self._store.current(tenant, resource_type, resource_id)
                if current is None or current.deleted or current.body is None:
                    continue
                text = jsonio.dumps(current.body)
                count = text.count(f'"{old}"')
                if not count:
                    continue
                body = jsonio.loads(text.replace(f'"{old}"', f'"{new}"'))
                body.pop("meta", None)
                entries.append(
                    {
                        "resource": body,
                        "request": {
                            "method": "PUT",
                            "url": f"{resource_type}/{resource_id}",
                            "ifMatch": f'W/"{current.version}"',
                        },
                    }
                )
                moved += count
            cursor = page.cursor
            if not cursor:
                break
        for start in range(0, len(entries), 50):
            chunk = {"resourceType": "Bundle", "type": "transaction", "entry": entries[start : start + 50]}
            processor.process(tenant, chunk, base=base)
        return moved

    def _one_patient(self, tenant: str, query: str, processor: BundleProcessor) -> str | None:
        resource_type, _, condition = query.partition("?")
        found = processor.search.find(tenant, resource_type, condition, limit=2, header="MRG")
        return found[0].id if len(found) == 1 else None

    # -- answers -------------------------------------------------------------------------------

    def _duplicate(self, message: er7.Message, existing: LedgerEntry, digest: str) -> MessageOutcome:
        if existing.status == "done" and existing.digest == digest:
            return MessageOutcome(
                existing.ack,
                _ack_code(existing.ack),
                existing.http_status or 200,
                control_id=message.control_id,
                message_type=f"{message.message_type}^{message.trigger_event}",
                references=existing.references,
                replayed=True,
            )
        if existing.status == "done":
            issue = AckIssue(
                f"Message control id {message.control_id!r} was already used by this sender for a "
                "different message; use a new MSH-10.",
                code="205",
                segment="MSH",
                position=1,
                field=10,
            )
            return self._answer(message, acks.ERROR, issue.reason, [issue], 200)
        issue = AckIssue("A message with this control id is being processed; retry shortly.", code="206")
        return self._answer(message, acks.ERROR, issue.reason, [issue], 503)

    def _refused(
        self, message: er7.Message, error: OperationOutcomeError, warnings: Sequence[AckIssue]
    ) -> MessageOutcome:
        if error.status in (401, 403):
            reason = f"Not permitted for this sender: {_diagnostics(error)}"
            issue = AckIssue(reason, code="207")
            return self._answer(message, acks.REJECT, reason, [issue, *warnings], 200)
        reason = f"The mapped resources were refused: {_diagnostics(error)}"
        return self._answer(message, acks.ERROR, reason, [AckIssue(reason, code="207"), *warnings], 200)

    def _unavailable(self, message: er7.Message) -> MessageOutcome:
        issue = AckIssue("The record store is unavailable; the message was not processed. Retry.", code="207")
        return self._answer(message, acks.ERROR, issue.reason, [issue], 503)

    def _answer(
        self,
        message: er7.Message,
        code: str,
        text: str,
        issues: Sequence[AckIssue],
        http_status: int,
    ) -> MessageOutcome:
        ack = acks.build_ack(
            message, code, control_id=_new_control_id(), text=text, issues=issues, now=self._clock()
        )
        return MessageOutcome(
            ack,
            code,
            http_status,
            control_id=message.control_id,
            message_type=f"{message.message_type}^{message.trigger_event}",
        )

    def _reject(
        self,
        message: er7.Message | None,
        reason: str,
        code: str,
        http_status: int,
        *,
        issues: Sequence[AckIssue] = (),
    ) -> MessageOutcome:
        ack = acks.build_ack(
            message,
            acks.REJECT,
            control_id=_new_control_id(),
            text=reason,
            issues=issues or [AckIssue(reason, code=code)],
            now=self._clock(),
        )
        return MessageOutcome(ack, acks.REJECT, http_status)

    def _archive_put(self, tenant: str, key: str, body: bytes, content_type: str) -> None:
        try:
            self._archive.put(tenant, key, body, content_type=content_type)
        except ArchiveUnavailableError as error:
            raise TransientError("archive") from error


def _issue(error: MappingError) -> AckIssue:
    return AckIssue(
        error.reason,
        code=error.code,
        segment=error.segment,
        position=error.position,
        field=error.field,
        component=error.component,
    )


def _warning(w: Any) -> AckIssue:
    return AckIssue(
        w.reason,
        code=w.code or "0",
        severity="W",
        segment=w.segment,
        position=w.position,
        field=w.field,
        component=w.component,
    )


def _written(response: dict[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    for entry in response.get("entry") or []:
        location = str((entry.get("response") or {}).get("location") or "")
        if location:
            out.append("/".join(location.split("/")[-4:-2]) if "/_history/" in location else location)
    return tuple(out)


def _diagnostics(error: OperationOutcomeError) -> str:
    return "; ".join(i.diagnostics for i in error.issues)[:300]


def _ack_code(ack: str) -> str:
    for segment in ack.split("\r"):
        if segment.startswith("MSA") and len(segment) > 6:
            return segment[4:6]
    return acks.ERROR


def _safe(text: str) -> str:
    return _SAFE.sub("_", text)[:80] or "_"


def _new_control_id() -> str:
    return uuid.uuid4().hex[:20]
