"""Patient Consent for cross-facility sharing: may tenant B see tenant A's records of a patient?

A clinic (the owning tenant, A) records the patient's decision as a FHIR R4 ``Consent`` on its
own Patient record:

- ``status`` ``active`` (anything else — draft, proposed, rejected, inactive, entered-in-error —
  grants nothing), ``scope`` ``patient-privacy`` (consentscope), ``patient`` = A's Patient;
- ``provision.type`` ``permit`` or ``deny``; ``provision.period`` bounds it in time;
- ``provision.actor[].reference`` names the receiving facility: an ``Organization`` of A's store
  whose identifier is ``urn:ehr:tenant|{B}`` (every tenant is represented so), or a logical
  reference carrying that identifier;
- optional ``provision.class`` (resource types, ``http://hl7.org/fhir/resource-types``) and
  ``provision.purpose`` (v3 ActReason, e.g. ``TREAT``) narrow what is shared and why;
- nested ``provision.provision`` are exceptions: the most specific provision that applies decides.

Rules (evaluated at the moment of every read, so a revocation takes effect at once):

1. Nothing is shared without an applicable ``permit`` that names B as actor: a permit without an
   actor does not open the record to every facility.
2. An applicable ``deny`` (in any active Consent of the patient) wins over permits.
3. The grant is per resource type: ``permits(resource_type)`` is true only for types that a permit
   covers and no deny excludes.
4. A provision that narrows by what this server does not evaluate (``data``, ``securityLabel``,
   ``code``, ``dataPeriod``) is read the safe way: such a permit grants nothing, such a deny
   denies everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from ehr.store.ports import RecordStore, StoredResource

if TYPE_CHECKING:
    from ehr.fhir.searching import SearchEngine

TENANT_SYSTEM: Final = "urn:ehr:tenant"
CONSENT_SCOPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
PATIENT_PRIVACY: Final = "patient-privacy"
RESOURCE_TYPES_SYSTEM: Final = "http://hl7.org/fhir/resource-types"
PARTICIPATION_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DEFAULT_PURPOSE: Final = "TREAT"
MAX_CONSENTS: Final = 100
# Provision elements that narrow by content (specific resources, security labels, codes, the
# data's own period); not evaluated, so they are read the safe way round (see ``_walk``).
UNEVALUATED: Final = ("data", "securityLabel", "code", "dataPeriod")

Decision = Literal["permit", "deny"]


def tenant_of_organization(body: Mapping[str, Any] | None) -> str | None:
    """The tenant an Organization represents (identifier ``urn:ehr:tenant|{tenant}``)."""
    for identifier in (body or {}).get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == TENANT_SYSTEM:
            value = identifier.get("value")
            if isinstance(value, str) and value:
                return value
    return None


def tenant_organization(tenant: str, name: str) -> dict[str, Any]:
    """The Organization that represents ``tenant`` in other tenants' stores (and in its own)."""
    return {
        "resourceType": "Organization",
        "identifier": [{"system": TENANT_SYSTEM, "value": tenant}],
        "active": True,
        "name": name,
    }


def sharing_consent(patient_id: str, organization_id: str, **provision: Any) -> dict[str, Any]:
    """A patient's Consent to share their records with the facility whose Organization (in the
    owner's store) is ``organization_id``: a permit for that actor (role IRCP, the recipient);
    ``provision`` adds or overrides provision elements (period, class, purpose, nested
    provisions, type)."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": PATIENT_PRIVACY}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {
            "type": "permit",
            "actor": [
                {
                    "role": {"coding": [{"system": PARTICIPATION_TYPE_SYSTEM, "code": "IRCP"}]},
                    "reference": {"reference": f"Organization/{organization_id}"},
                }
            ],
            **provision,
        },
    }


@dataclass(frozen=True)
class Grant:
    """What the patient's consents allow one receiving tenant, for one purpose, right now."""

    owner: str
    patient_id: str
    receiver: str
    purpose: str
    permitted: frozenset[str] | None  # resource types; None: every type
    denied: frozenset[str] | None  # None: nothing denied by class; empty set never stored
    consents: tuple[str, ...] = ()  # Consent ids that decided (for the audit trail)
    deny_all: bool = False

    @property
    def allowed(self) -> bool:
        return not self.deny_all and (self.permitted is None or bool(self.permitted))

    def permits(self, resource_type: str) -> bool:
        if self.deny_all:
            return False
        if self.denied is not None and resource_type in self.denied:
            return False
        return self.permitted is None or resource_type in self.permitted


NO_GRANT: Final = Grant("", "", "", DEFAULT_PURPOSE, frozenset(), None)


@dataclass
class _Tally:
    permit_all: bool = False
    permit_types: set[str] = field(default_factory=set)
    deny_all: bool = False
    deny_types: set[str] = field(default_factory=set)
    consents: list[str] = field(default_factory=list)


def consents_in(search: SearchEngine) -> Callable[[str, str], Sequence[StoredResource]]:
    """How the evaluator finds a patient's Consents: ``Consent?patient={id}`` in the owner's
    store, an index-backed search run with the server's own authority."""

    def consents_of(owner: str, patient_id: str) -> Sequence[StoredResource]:
        page = search.search(
            owner, "Consent", {"patient": [patient_id], "_count": [str(MAX_CONSENTS)]}, base="", strict=False
        )
        return [r for r in page.resources if r.resource_type == "Consent"]

    return consents_of


class ConsentEvaluator:
    """Reads a patient's Consents in the owning tenant's store and decides for a receiver."""

    def __init__(
        self,
        store: RecordStore,
        consents_of: Callable[[str, str], Sequence[StoredResource]],
        *,
        clock: Callable[[], str],
    ) -> None:
        # consents_of(owner, patient_id): the patient's Consent resources in the owner's store
        # (an index-backed search, ``Consent?patient=…``); decided here, not by the search.
        self._store = store
        self._consents_of = consents_of
        self._clock = clock

    def grant(self, owner: str, patient_id: str, receiver: str, purpose: str | None = None) -> Grant:
        """What ``receiver`` may see of ``owner``'s records of ``patient_id`` for ``purpose``."""
        purpose = purpose or DEFAULT_PURPOSE
        now = _instant(self._clock(), low=True)
        tally = _Tally()
        organizations: dict[str, str | None] = {}
        for stored in self._consents_of(owner, patient_id):
            body = stored.body or {}
            if stored.deleted or not _applies_to_patient(body, patient_id) or not _is_privacy(body):
                continue
            if body.get("status") != "active":
                continue
            provision = body.get("provision")
            if not isinstance(provision, dict):
                continue
            matcher = _ActorMatcher(self._store, owner, receiver, organizations)
            decided = _walk(provision, matcher, purpose, now, None, None, tally)
            if decided:
                tally.consents.append(stored.id)
        if tally.deny_all:
            return Grant(owner, patient_id, receiver, purpose, frozenset(), None, tuple(tally.consents), True)
        if not tally.permit_all and not tally.permit_types:
            return Grant(owner, patient_id, receiver, purpose, frozenset(), None, tuple(tally.consents))
        permitted = None if tally.permit_all else frozenset(tally.permit_types)
        denied = frozenset(tally.deny_types) if tally.deny_types else None
        return Grant(owner, patient_id, receiver, purpose, permitted, denied, tuple(tally.consents))


class _ActorMatcher:
    def __init__(self, store: RecordStore, owner: str, receiver: str, cache: dict[str, str | None]) -> None:
        self._store = store
        self._owner = owner
        self._receiver = receiver
        self._cache = cache

    def names_receiver(self, actors: Iterable[Any]) -> bool:
        return any(self._tenant(actor) == self._receiver for actor in actors if isinstance(actor, dict))

    def _tenant(self, actor: Mapping[str, Any]) -> str | None:
        reference = actor.get("reference")
        if not isinstance(reference, dict):
            return None
        logical = reference.get("identifier")
        if isinstance(logical, dict) and logical.get("system") == TENANT_SYSTEM:
            value = logical.get("value")
            return value if isinstance(value, str) else None
        literal = reference.get("reference")
        if not isinstance(literal, str) or not literal.startswith("Organization/"):
            return None
        if literal not in self._cache:
            organization = self._store.current(self._owner, "Organization", literal.split("/", 1)[1])
            self._cache[literal] = (
                tenant_of_organization(organization.body)
                if organization is not None and not organization.deleted
                else None
            )
        return self._cache[literal]


def _walk(  # noqa: PLR0917 - the recursion carries what nested provisions inherit
    provision: Mapping[str, Any],
    actors: _ActorMatcher,
    purpose: str,
    now: str,
    inherited_type: str | None,
    inherited_classes: frozenset[str] | None,
    tally: _Tally,
) -> bool:
    """Apply ``provision`` and its nested exceptions to the tally; True if any part applied.

    A provision applies when its period holds now, its purposes include the request's (or it
    names none), and its actors name the receiver — a nested provision without actors inherits
    its parent's. Classes narrow; a nested provision's own classes replace its parent's.
    """
    if not _in_period(provision.get("period"), now):
        return False
    purposes = _codes(provision.get("purpose"))
    if purposes and purpose not in purposes:
        return False
    actor_list = provision.get("actor") or []
    if actor_list:
        if not actors.names_receiver(actor_list):
            return False
    elif inherited_type is None and provision.get("type") == "permit":
        return False  # a top-level permit must name the receiving facility
    kind = provision.get("type") or inherited_type
    if kind not in ("permit", "deny"):
        return False
    if any(provision.get(element) for element in UNEVALUATED):
        # Narrowing this server does not evaluate: a permit grants nothing, a deny denies all.
        if kind == "deny":
            tally.deny_all = True
            return True
        return False
    classes = _resource_classes(provision.get("class"))
    scope = classes if classes is not None else inherited_classes
    if kind == "permit":
        if scope is None:
            tally.permit_all = True
        else:
            tally.permit_types |= scope
    elif scope is None:
        tally.deny_all = True
    else:
        tally.deny_types |= scope
    for nested in provision.get("provision") or []:
        if isinstance(nested, dict):
            _walk(nested, actors, purpose, now, kind, scope, tally)
    return True


def _applies_to_patient(body: Mapping[str, Any], patient_id: str) -> bool:
    patient = body.get("patient")
    return isinstance(patient, dict) and patient.get("reference") == f"Patient/{patient_id}"


def _is_privacy(body: Mapping[str, Any]) -> bool:
    scope = body.get("scope")
    if not isinstance(scope, dict):
        return False
    return any(
        isinstance(c, dict)
        and c.get("code") == PATIENT_PRIVACY
        and c.get("system") in (None, CONSENT_SCOPE_SYSTEM)
        for c in scope.get("coding") or []
    )


def _in_period(period: Any, now: str) -> bool:
    if not isinstance(period, dict):
        return True
    start, end = period.get("start"), period.get("end")
    if isinstance(start, str) and _instant(start, low=True) > now:
        return False
    return not (isinstance(end, str) and _instant(end, low=False) < now)


def _instant(value: str, *, low: bool) -> str:
    """A FHIR date/dateTime widened to a comparable UTC instant (dates cover the whole day)."""
    from ehr.fhir.search.encoding import date_range

    try:
        start, end = date_range(value)
    except (ValueError, TypeError):
        return "" if low else "9999"
    return start if low else end


def _codes(codings: Any) -> frozenset[str]:
    return frozenset(
        c["code"] for c in codings or [] if isinstance(c, dict) and isinstance(c.get("code"), str)
    )


def _resource_classes(codings: Any) -> frozenset[str] | None:
    if not codings:
        return None
    return frozenset(
        c["code"]
        for c in codings
        if isinstance(c, dict)
        and isinstance(c.get("code"), str)
        and c.get("system") in (None, RESOURCE_TYPES_SYSTEM)
    )
