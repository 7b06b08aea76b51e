"""The verified caller: tenant, SMART scopes, patient context and client, built from claims."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

Context = Literal["patient", "user", "system"]

TENANT_ID: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

# SMART App Launch 2.0 (v1 `.read/.write/.*` accepted as aliases).
_SCOPE: Final = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)"
    r"\.(?P<perm>[cruds]+|read|write|\*)(?:\?(?P<query>.+))?$"
)
_V1_PERMISSIONS: Final = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class Scope:
    """One SMART clinical scope."""

    context: Context
    resource_type: str  # "*" for all types
    permissions: frozenset[str]  # letters of c r u d s
    query: str | None = None

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """A SMART clinical scope, or None for anything else (openid, launch, offline_access…)."""
        match = _SCOPE.match(text)
        if not match:
            return None
        perm = match["perm"]
        letters = _V1_PERMISSIONS.get(perm, perm)
        in_order = "".join(sorted(set(letters), key="cruds".index)) == letters
        if perm not in _V1_PERMISSIONS and not in_order:
            return None  # v2 letters must be in c-r-u-d-s order, each at most once
        return cls(
            context=match["context"],  # type: ignore[arg-type]
            resource_type=match["type"],
            permissions=frozenset(letters),
            query=match["query"],
        )


@dataclass(frozen=True)
class Identity:
    """Who is calling, as far as verified credentials say."""

    tenant: str | None
    subject: str
    client_id: str | None
    scopes: tuple[Scope, ...]
    other_scopes: tuple[str, ...]
    patient: str | None = None
    fhir_user: str | None = None

    @classmethod
    def from_claims(cls, claims: dict[str, Any], *, tenant_claim: str) -> Identity:
        raw_scope = claims.get("scope") or claims.get("scp") or ""
        words = raw_scope.split() if isinstance(raw_scope, str) else [str(s) for s in raw_scope]
        parsed = [(w, Scope.parse(w)) for w in words]
        tenant = claims.get(tenant_claim)
        patient = claims.get("patient")
        return cls(
            tenant=tenant if isinstance(tenant, str) and TENANT_ID.match(tenant) else None,
            subject=str(claims.get("sub", "")),
            client_id=_str_or_none(claims.get("client_id") or claims.get("azp")),
            scopes=tuple(s for _, s in parsed if s is not None),
            other_scopes=tuple(w for w, s in parsed if s is None),
            patient=_str_or_none(patient),
            fhir_user=_str_or_none(claims.get("fhirUser")),
        )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
