"""SMART App Launch 2.0 authorization: which scopes let the caller do what to which resource.

- ``patient/``, ``user/``, ``system/`` contexts; letters ``c r u d s``; a resource type or ``*``;
  v1 ``.read``/``.write``/``.*`` as aliases (parsed in ``ehr.security.identity``).
- granular scopes (``patient/Observation.rs?category=…|laboratory``) permit only resources that
  match their search query, evaluated with the same matcher as search;
- a ``patient/`` scope reaches only the compartment of the token's ``patient``: the Patient
  itself and resources whose compartments include it (a ``patient/`` scope without a patient
  context permits nothing).

``AuditEvent`` is never covered by a wildcard: reading the trail needs an explicit
``user/AuditEvent.rs`` or ``system/AuditEvent.rs`` scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import parse_qs

from ehr.fhir.outcome import OperationOutcomeError, forbidden
from ehr.security.identity import Identity, Scope
from ehr.store.ports import StoredResource

if TYPE_CHECKING:
    from ehr.fhir.search.query import SearchClause

Letter = Literal["c", "r", "u", "d", "s"]
EXPLICIT_ONLY: Final = frozenset({"AuditEvent"})
SUPPORTED_SCOPES: Final = (
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.rs",
    "user/*.rs",
    "system/*.rs",
    "user/AuditEvent.rs",
    "system/AuditEvent.rs",
)


@dataclass(frozen=True)
class Permission:
    """The scopes that grant one letter on one resource type; empty: not permitted at all."""

    identity: Identity
    letter: str
    resource_type: str
    scopes: tuple[Scope, ...]

    @property
    def unrestricted(self) -> bool:
        """Some scope grants it for every resource of the type in the tenant."""
        return any(s.context != "patient" and not s.query for s in self.scopes)

    def permits(self, stored: StoredResource) -> bool:
        return any(_scope_permits(self.identity, scope, stored) for scope in self.scopes)


def permission(identity: Identity | None, letter: Letter, resource_type: str) -> Permission:
    if identity is None:
        return Permission(Identity(None, "", None, (), ()), letter, resource_type, ())
    granted = tuple(
        scope
        for scope in identity.scopes
        if letter in scope.permissions
        and (
            scope.resource_type == resource_type
            or (scope.resource_type == "*" and resource_type not in EXPLICIT_ONLY)
        )
        and (scope.context != "patient" or identity.patient)
    )
    return Permission(identity, letter, resource_type, granted)


def require(identity: Identity | None, letter: Letter, resource_type: str) -> Permission:
    """The permission, or 403 when no scope grants ``letter`` on ``resource_type`` at all."""
    granted = permission(identity, letter, resource_type)
    if not granted.scopes:
        verb = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}[letter]
        raise forbidden(f"The token's scopes do not permit {verb} on {resource_type}.")
    return granted


def require_resource(granted: Permission, stored: StoredResource) -> None:
    if not granted.permits(stored):
        raise forbidden(f"The token's scopes do not reach {stored.resource_type}/{stored.id}.")


def _scope_permits(identity: Identity, scope: Scope, stored: StoredResource) -> bool:
    if scope.context == "patient":
        patient = identity.patient
        if patient is None:
            return False
        in_compartment = patient in stored.compartments or (
            stored.resource_type == "Patient" and stored.id == patient
        )
        if not in_compartment:
            return False
    if scope.query:
        from ehr.fhir.search.extract import IndexTerm
        from ehr.fhir.search.match import matches

        clauses = _scope_clauses(stored.resource_type, scope.query)
        if clauses is None:
            return False  # a scope whose query this server cannot evaluate permits nothing
        terms = [IndexTerm(e.param, e.key, e.sort, e.high, e.text) for e in stored.index]
        return all(matches(clause, terms) for clause in clauses)
    return True


@lru_cache(maxsize=256)
def _scope_clauses(resource_type: str, query: str) -> tuple[SearchClause, ...] | None:
    from ehr.fhir.search.query import parse_query

    try:
        parsed = parse_query(resource_type, parse_qs(query, keep_blank_values=True))
    except OperationOutcomeError:
        return None
    if parsed.unknown_params or any(c.chain is not None for c in parsed.clauses):
        return None
    return tuple(parsed.clauses)


@dataclass(frozen=True)
class AccessPolicy:
    """What one request may do, checked by the FHIR service on every resource it touches."""

    identity: Identity | None

    def check(self, letter: Letter, stored: StoredResource) -> None:
        require_resource(require(self.identity, letter, stored.resource_type), stored)

    def may(self, letter: Letter, stored: StoredResource) -> bool:
        return permission(self.identity, letter, stored.resource_type).permits(stored)

    def may_see(self, stored: StoredResource) -> bool:
        """Included or listed resources: readable or searchable by some scope."""
        return self.may("r", stored) or self.may("s", stored)


SYSTEM: Final = None  # internal callers (workflows, HL7 mapping) pass ``access=None``: no scope checks
