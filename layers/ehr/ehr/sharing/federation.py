"""Cross-facility reads: what another facility may see of a patient, and the trail it leaves.

The one exception to tenant isolation (DESIGN.md, "The one security invariant"): tenant B reads
tenant A's records of a person only when

1. the master patient index links B's patient and A's patient (same enterprise id), and
2. an active Consent in A's store, on A's patient, permits B (``ehr.sharing.consent``) for the
   request's purpose of use — evaluated again on every request and every page.

What B gets is read-only (it lives in A's partition; B's writes only reach B's) and labelled with
its source (``meta.tag`` ``urn:ehr:source-tenant|A``). Every page that carries A's data leaves an
AuditEvent in A's trail (who at B, which resources, the purpose of use) *before* it is returned,
and B's own trail records the same read with absolute references to A's resources: audited on
both sides, fail closed on both.

``$match`` answers with B's own matches in full; another facility's match is shown in full only
when that facility's Consent shares the Patient with B, otherwise only as "a match exists at
another facility" — no id, no tenant, no demographics.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ehr.fhir.outcome import Issue, OperationOutcomeError, invalid, operation_outcome
from ehr.fhir.searching import WITHHELD, SharedCompartment
from ehr.security.audit import AuditRecord, AuditSink, AuditUnavailableError
from ehr.sharing.consent import DEFAULT_PURPOSE, ConsentEvaluator, Grant, consents_in

if TYPE_CHECKING:
    from ehr.fhir.searching import SearchEngine
    from ehr.security.identity import Identity
    from ehr.security.scopes import AccessPolicy
    from ehr.security.tenancy import TenantDirectory
    from ehr.sharing.mpi import MasterPatientIndex, Match
    from ehr.store.ports import RecordStore, StoredResource

MATCH_GRADE_URL: Final = "http://hl7.org/fhir/StructureDefinition/match-grade"
MATCH_TAG_SYSTEM: Final = "urn:ehr:match"
MATCH_DEFAULT_COUNT: Final = 10
MATCH_MAX_COUNT: Final = 100


def unavailable(what: str) -> OperationOutcomeError:
    return OperationOutcomeError(
        status=503,
        issues=(Issue(code="transient", diagnostics=f"The {what} is unavailable; retry."),),
        headers={"Retry-After": "2"},
    )


@dataclass(frozen=True)
class Disclosure:
    """Who at the receiving facility read what, and why: the owner-side audit record's input."""

    receiver: str
    identity: Identity | None
    purpose: str
    subtype: str
    request_id: str | None = None
    source_ip: str | None = None


class CrossFacility:
    """Cross-facility sharing as the FHIR API uses it: shared compartments, $match, auditing."""

    def __init__(
        self,
        *,
        store: RecordStore,
        search: SearchEngine,
        mpi: MasterPatientIndex,
        tenants: TenantDirectory,
        audit: AuditSink,
        clock: Callable[[], str],
    ) -> None:
        self.store = store
        self.search = search
        self.mpi = mpi
        self.tenants = tenants
        self.audit = audit
        self.clock = clock
        self.consents = ConsentEvaluator(store, consents_in(search), clock=clock)

    def grants(self, receiver: str, patient_id: str, purpose: str | None) -> list[Grant]:
        """The consents that share other facilities' records of this person with ``receiver``."""
        from ehr.sharing.mpi import MpiUnavailableError

        try:
            linked = self.mpi.linked(receiver, patient_id)
        except MpiUnavailableError as exc:
            raise unavailable("master patient index") from exc
        found = []
        for key in linked:
            if key.tenant == receiver:
                continue  # a duplicate record in the same facility is not a cross-facility source
            grant = self.consents.grant(key.tenant, key.patient_id, receiver, purpose or DEFAULT_PURPOSE)
            if grant.allowed:
                found.append(grant)
        return found

    def shared_compartments(
        self, receiver: str, patient_id: str, *, purpose: str | None, base_of: Callable[[str], str]
    ) -> list[SharedCompartment]:
        compartments = [self._compartment(g, base_of) for g in self.grants(receiver, patient_id, purpose)]
        return compartments

    def _compartment(self, grant: Grant, base_of: Callable[[str], str]) -> SharedCompartment:
        """The owner's compartment of the patient, as the grant shares it with the receiver."""
        owner = self.tenants.get(grant.owner)
        return SharedCompartment(
            tenant=grant.owner,
            patient_id=grant.patient_id,
            base=base_of(grant.owner),
            remote=True,
            source_name=owner.name if owner is not None else "",
            permits=grant.permits,
        )

    # -- the owner's side of the audit trail ---------------------------------------------------

    def record_disclosures(
        self,
        shared: Iterable[tuple[SharedCompartment, StoredResource]],
        disclosure: Disclosure,
    ) -> list[str]:
        """Write one AuditEvent per owning facility for what was disclosed to the receiver, and
        return the absolute references the receiver's own record names. Raises 503 (fail closed)
        when an owner's trail cannot be written: the page is then not returned."""
        by_owner: dict[tuple[str, str], list[str]] = {}
        absolute: list[str] = []
        for compartment, stored in shared:
            by_owner.setdefault((compartment.tenant, compartment.patient_id), []).append(stored.reference)
            absolute.append(f"{compartment.base}/{stored.reference}")
        identity = disclosure.identity
        for (owner, patient_id), references in by_owner.items():
            record = AuditRecord(
                id=str(uuid.uuid4()),
                tenant=owner,
                recorded=self.clock(),
                action="R" if disclosure.subtype != "$match" else "E",
                subtype=disclosure.subtype,
                outcome="0",
                status=200,
                client_id=identity.client_id if identity else None,
                user=identity.subject if identity else None,
                fhir_user=None,  # a user of another facility: not a reference into this store
                source_ip=disclosure.source_ip,
                request_id=disclosure.request_id,
                purpose_of_use=disclosure.purpose,
                entities=tuple(dict.fromkeys(references))[:200],
                patients=(patient_id,),
                requesting_tenant=disclosure.receiver,
            )
            try:
                self.audit.record(record)
            except AuditUnavailableError as exc:
                raise unavailable("audit trail of the facility that owns the records") from exc
        return absolute

    # -- $match -------------------------------------------------------------------------------

    def match(
        self,
        receiver: str,
        parameters: Any,
        *,
        access: AccessPolicy,
        base_of: Callable[[str], str],
        purpose: str | None,
    ) -> tuple[dict[str, Any], list[StoredResource], list[tuple[SharedCompartment, StoredResource]]]:
        """Run ``Patient/$match``: the searchset Bundle, the receiver's own matched resources and
        the other facilities' resources disclosed (for both audit trails)."""
        from ehr.sharing.mpi import MpiUnavailableError

        patient, count, only_certain = match_parameters(parameters)
        try:
            found = self.mpi.match(patient, count=MATCH_MAX_COUNT, only_certain=only_certain)
        except ValueError as exc:
            raise invalid(str(exc), expression=["Parameters.parameter[resource]"]) from exc
        except MpiUnavailableError as exc:
            raise unavailable("master patient index") from exc
        matches = disclosure_order(found, receiver)[:count]
        entries: list[dict[str, Any]] = []
        own: list[StoredResource] = []
        shared: list[tuple[SharedCompartment, StoredResource]] = []
        withheld = 0
        mine = self.store.current_many(
            receiver, [("Patient", m.patient_id) for m in matches if m.tenant == receiver]
        )
        for match in matches:
            if match.tenant == receiver:
                stored = mine.get(("Patient", match.patient_id))
                if stored is None or stored.deleted:
                    continue  # the index lags a deletion by a moment
                if not access.may_see(stored):
                    withheld += 1
                    continue
                own.append(stored)
                entries.append(_match_entry(f"{base_of(receiver)}/Patient/{stored.id}", stored.body, match))
                continue
            # Another facility's record: its consent decides first, so nothing of it is read
            # unless it may be shown.
            grant = self.consents.grant(match.tenant, match.patient_id, receiver, purpose or DEFAULT_PURPOSE)
            if not grant.permits("Patient"):
                entries.append(_match_entry(f"urn:uuid:{uuid.uuid4()}", _match_exists(), match))
                continue
            stored = self.store.current(match.tenant, "Patient", match.patient_id)
            if stored is None or stored.deleted:
                continue
            compartment = self._compartment(grant, base_of)
            shared.append((compartment, stored))
            url = f"{compartment.base}/Patient/{stored.id}"
            entries.append(_match_entry(url, compartment.label(stored.body), match))
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
        if withheld:
            warning = Issue(code="suppressed", severity="warning", diagnostics=WITHHELD)
            entries.append({"resource": operation_outcome([warning]), "search": {"mode": "outcome"}})
        if entries:
            bundle["entry"] = entries
        return bundle, own, shared


def disclosure_order(matches: Sequence[Match], receiver: str) -> list[Match]:
    """Best first; among equal scores the caller's own records first, then the others in an
    order that does not depend on which facility holds them (the index sorts ties by tenant id,
    which would tell the caller whether a hidden match sorts before or after its own name)."""

    def key(match: Match) -> tuple[float, bool, str]:
        digest = hashlib.sha256(f"{match.tenant}\x00{match.patient_id}".encode()).hexdigest()
        return (-round(match.score, 4), match.tenant != receiver, digest)

    return sorted(matches, key=key)


def _match_exists() -> dict[str, Any]:
    """What another facility's match looks like without that facility's consent: nothing but
    the fact (no id, no facility, no demographics)."""
    return {
        "resourceType": "Patient",
        "meta": {
            "tag": [
                {
                    "system": MATCH_TAG_SYSTEM,
                    "code": "other-facility",
                    "display": "A matching record exists at another facility; "
                    "its details need the patient's consent",
                }
            ]
        },
    }


def _match_entry(full_url: str, body: dict[str, Any] | None, match: Match) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": body,
        "search": {
            "mode": "match",
            "score": round(match.score, 4),
            "extension": [{"url": MATCH_GRADE_URL, "valueCode": match.grade}],
        },
    }


def match_parameters(parameters: Any) -> tuple[dict[str, Any], int, bool]:
    """The input of ``Patient/$match``: a Parameters resource with ``resource`` (a Patient),
    optional ``count`` and ``onlyCertainMatches`` (a bare Patient is accepted too)."""
    if isinstance(parameters, dict) and parameters.get("resourceType") == "Patient":
        return parameters, MATCH_DEFAULT_COUNT, False
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise invalid("$match takes a Parameters resource with a 'resource' parameter holding a Patient.")
    patient: dict[str, Any] | None = None
    count = MATCH_DEFAULT_COUNT
    only_certain = False
    for parameter in parameters.get("parameter") or []:
        if not isinstance(parameter, dict):
            continue
        name = parameter.get("name")
        if name == "resource":
            resource = parameter.get("resource")
            if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
                raise invalid("The 'resource' parameter of $match must be a Patient.")
            patient = resource
        elif name == "count":
            value = parameter.get("valueInteger")
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MATCH_MAX_COUNT:
                raise invalid(f"'count' must be an integer from 1 to {MATCH_MAX_COUNT}.")
            count = value
        elif name == "onlyCertainMatches":
            value = parameter.get("valueBoolean")
            if not isinstance(value, bool):
                raise invalid("'onlyCertainMatches' must be a boolean.")
            only_certain = value
        elif name == "onlySingleMatch":
            continue  # accepted; the grades already say whether one match is certain
        else:
            raise invalid(f"$match has no parameter {str(name)[:40]!r}.")
    if patient is None:
        raise invalid("$match needs a 'resource' parameter holding a Patient.")
    return patient, count, only_certain
