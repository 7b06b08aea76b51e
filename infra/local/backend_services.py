"""SMART Backend Services for the local development issuer.

Registered clients (labs, other facilities) hold a private key; the issuer keeps only their
public JWKS, in ``$EHR_HOME/clients/{client_id}.json`` with the tenant and the scopes they may
ask for. ``POST /auth/token`` takes ``grant_type=client_credentials`` with a ``private_key_jwt``
client assertion (RFC 7523, as SMART Backend Services profiles it) and answers an access token
for the client's tenant. In the cloud this role is Cognito's or the external OIDC issuer's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt import PyJWKSet
from jwt.algorithms import ECAlgorithm

from ehr.security.identity import TENANT_ID, Scope
from infra.local.issuer import DevIssuer, ehr_home

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS: Final = ("RS384", "ES384", "RS256", "ES256")
MAX_ASSERTION_LIFETIME: Final = 300
ACCESS_TOKEN_TTL: Final = 300


class TokenRequestError(Exception):
    """An OAuth error: ``error`` code, a description, and the HTTP status to answer with."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class RegisteredClient:
    client_id: str
    tenant: str
    scope: str  # the most it may be granted
    jwks: dict[str, Any]


def clients_dir() -> Path:
    return ehr_home() / "clients"


def register_client(
    client_id: str, tenant: str, scope: str, jwks: Mapping[str, Any], directory: Path | None = None
) -> RegisteredClient:
    if not TENANT_ID.match(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}")
    if not client_id or "/" in client_id or len(client_id) > 128:
        raise ValueError("client id must be 1-128 characters without '/'")
    PyJWKSet.from_dict(dict(jwks))  # raises on an unusable key set
    folder = directory or clients_dir()
    folder.mkdir(parents=True, exist_ok=True)
    client = RegisteredClient(client_id, tenant, scope, dict(jwks))
    (folder / f"{client_id}.json").write_text(json.dumps(client.__dict__, indent=2))
    return client


def create_client_key(client_id: str, directory: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """A new ES384 key pair for a client: the private key in a 0600 file, the public JWKS returned."""
    key = ec.generate_private_key(ec.SECP384R1())
    folder = (directory or clients_dir()) / "keys"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{client_id}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    public = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": f"{client_id}-1", "alg": "ES384", "use": "sig"})
    return path, {"keys": [public]}


def client_assertion(
    client_id: str, private_key_pem: bytes, token_endpoint: str, *, kid: str | None = None
) -> str:
    """What a registered client signs to ask for a token (used by the lab simulator and tests)."""
    now = int(time.time())
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    algorithm = "ES384" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS384"
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": now,
        "exp": now + 240,
        "jti": f"{client_id}-{now}-{time.perf_counter_ns()}",
    }
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid or f"{client_id}-1"})  # type: ignore[arg-type]


class TokenEndpoint:
    """``POST /auth/token`` of the local issuer."""

    def __init__(self, issuer: DevIssuer, *, url: str, directory: Path | None = None) -> None:
        self.issuer = issuer
        self.url = url
        self.directory = directory or clients_dir()
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def client(self, client_id: str) -> RegisteredClient:
        path = self.directory / f"{client_id}.json"
        if "/" in client_id or not path.is_file():
            raise TokenRequestError("invalid_client", "unknown client", 401)
        data = json.loads(path.read_text())
        return RegisteredClient(data["client_id"], data["tenant"], data["scope"], data["jwks"])

    def token(self, form: Mapping[str, list[str]]) -> dict[str, Any]:
        def one(name: str) -> str:
            values = form.get(name) or []
            if len(values) != 1 or not values[0]:
                raise TokenRequestError("invalid_request", f"{name} is required once")
            return values[0]

        if one("grant_type") != "client_credentials":
            raise TokenRequestError("unsupported_grant_type", "only client_credentials is supported")
        if one("client_assertion_type") != ASSERTION_TYPE:
            raise TokenRequestError("invalid_request", "client_assertion_type must be jwt-bearer")
        assertion = one("client_assertion")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise TokenRequestError("invalid_client", "the client assertion is not a JWT", 401) from exc
        client = self.client(str(unverified.get("iss", "")))
        try:
            keys = PyJWKSet.from_dict(client.jwks)
            kid = jwt.get_unverified_header(assertion).get("kid")
            key = next((k for k in keys.keys if kid is None or k.key_id == kid), None)
            if key is None:
                raise TokenRequestError("invalid_client", "the assertion's key is not registered", 401)
            claims = jwt.decode(
                assertion,
                key=key,
                algorithms=list(ASSERTION_ALGORITHMS),
                audience=self.url,
                issuer=client.client_id,
                options={"require": ["exp", "jti", "sub", "aud", "iss"]},
            )
        except jwt.InvalidTokenError as exc:
            raise TokenRequestError(
                "invalid_client", f"the client assertion does not verify: {exc}", 401
            ) from exc
        if claims["sub"] != client.client_id or claims["exp"] - time.time() > MAX_ASSERTION_LIFETIME:
            raise TokenRequestError(
                "invalid_client", "sub must be the client id and exp within 5 minutes", 401
            )
        self._remember(str(claims["jti"]), float(claims["exp"]))
        granted = _grant(form.get("scope", [""])[0], client.scope)
        token = self.issuer.mint(
            tenant=client.tenant, scope=granted, client_id=client.client_id, ttl=ACCESS_TOKEN_TTL
        )
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_TTL,
            "scope": granted,
        }

    def _remember(self, jti: str, expires: float) -> None:
        now = time.time()
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            if jti in self._seen:
                raise TokenRequestError("invalid_client", "the client assertion was already used (jti)", 401)
            self._seen[jti] = expires


def _grant(requested: str, allowed: str) -> str:
    """The requested system scopes that the registration allows (all allowed ones if none asked)."""
    allowed_scopes = [s for s in allowed.split() if Scope.parse(s)]
    if not requested.strip():
        return " ".join(allowed_scopes)
    granted = []
    for word in requested.split():
        scope = Scope.parse(word)
        if scope is None or scope.context != "system":
            raise TokenRequestError("invalid_scope", f"{word[:60]!r} is not a system scope")
        if not any(_covers(Scope.parse(a), scope) for a in allowed_scopes):
            raise TokenRequestError("invalid_scope", f"{word[:60]!r} is more than this client may have")
        granted.append(word)
    return " ".join(granted)


def _covers(allowed: Scope | None, wanted: Scope) -> bool:
    return (
        allowed is not None
        and allowed.context == wanted.context
        and not allowed.query
        and allowed.resource_type in ("*", wanted.resource_type)
        and wanted.permissions <= allowed.permissions
    )
