"""Opaque paging cursors: encrypted and authenticated (Fernet), bound to a tenant and a query.

A client cannot read what a cursor holds (index keys can contain search values such as a
family name), cannot forge one, and cannot replay one under another tenant or another query.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any, Final

from cryptography.fernet import Fernet, InvalidToken

from ehr.fhir import jsonio
from ehr.fhir.outcome import invalid

CURSOR_TTL_SECONDS: Final = 24 * 3600


class CursorCodec:
    def __init__(self, secret: bytes | Callable[[], bytes]) -> None:
        # A callable is asked once, on first use: the secret is fetched when a cursor is needed,
        # not at cold start.
        self._secret = secret
        self._cached: Fernet | None = None
        if isinstance(secret, bytes):
            self._cached = self._key(secret)

    @staticmethod
    def _key(secret: bytes) -> Fernet:
        if len(secret) < 32:
            raise ValueError("the cursor secret must be at least 32 bytes")
        return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"ehr-cursor:" + secret).digest()))

    @property
    def _fernet(self) -> Fernet:
        if self._cached is None:
            secret = self._secret() if callable(self._secret) else self._secret
            self._cached = self._key(secret)
        return self._cached

    def encode(self, *, tenant: str, scope: str, state: dict[str, Any]) -> str:
        payload = {"t": tenant, "q": _fingerprint(scope), "s": state}
        return self._fernet.encrypt(jsonio.dumps(payload).encode("utf-8")).decode("ascii")

    def decode(self, token: str, *, tenant: str, scope: str, parameter: str = "_cursor") -> dict[str, Any]:
        try:
            payload = jsonio.loads(self._fernet.decrypt(token.encode("ascii"), ttl=CURSOR_TTL_SECONDS))
        except (InvalidToken, UnicodeEncodeError, ValueError) as exc:
            raise invalid(
                "The paging cursor is not valid (expired, altered or not issued here).",
                expression=[parameter],
            ) from exc
        if payload.get("t") != tenant or payload.get("q") != _fingerprint(scope):
            raise invalid("The paging cursor belongs to another search.", expression=[parameter])
        state = payload.get("s")
        if not isinstance(state, dict):
            raise invalid("The paging cursor is not valid.", expression=[parameter])
        return state


def _fingerprint(scope: str) -> str:
    return hashlib.sha256(scope.encode("utf-8")).hexdigest()[:32]
