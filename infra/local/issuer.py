"""The local development identity provider: an RSA key on disk, RS256 tokens, a public JWKS.

Only for `ehr local` and `ehr token`. The key lives under ``$EHR_HOME`` (default ``~/.ehr``)
so that `ehr token` in one shell and `ehr local` in another agree on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from ehr import names

ALGORITHM = "RS256"
DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 7 * 24 * 3600


def ehr_home() -> Path:
    return Path(os.environ.get("EHR_HOME") or Path.home() / ".ehr")


class DevIssuer:
    """Signs development tokens; its public keys are what local-mode functions trust."""

    def __init__(
        self,
        key_file: Path | None = None,
        *,
        issuer: str = names.LOCAL_ISSUER,
        audience: str = names.DEFAULT_AUDIENCE,
    ) -> None:
        self.key_file = key_file or ehr_home() / "dev-issuer" / "private-key.pem"
        self.issuer = issuer
        self.audience = audience
        self._key = self._load_or_create()
        public_jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        self.kid = _thumbprint(public_jwk)
        self._public_jwk = {**public_jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def _load_or_create(self) -> rsa.RSAPrivateKey:
        if self.key_file.exists():
            key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{self.key_file} does not hold an RSA private key")
            return key
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.key_file.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        try:
            os.link(tmp, self.key_file)  # atomic; loses cleanly to a concurrent creator
        except FileExistsError:
            tmp.unlink()
            return self._load_or_create()
        tmp.unlink()
        return key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._public_jwk]}

    def mint(
        self,
        *,
        tenant: str,
        scope: str,
        patient: str | None = None,
        client_id: str | None = None,
        subject: str | None = None,
        ttl: int = DEFAULT_TTL_SECONDS,
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        if not 0 < ttl <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl must be between 1 and {MAX_TTL_SECONDS} seconds")
        now = int(time.time())
        client = client_id or "ehr-dev-cli"
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject or client,
            "client_id": client,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": str(uuid.uuid4()),
            "scope": scope,
            names.DEFAULT_TENANT_CLAIM: tenant,
        }
        if patient:
            claims["patient"] = patient
        claims.update(extra_claims or {})
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint of an RSA public key, used as its ``kid``."""
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
