"""Bearer-token verification with PyJWT: signature by JWKS, issuer, audience, time, algorithm.

Two key sources: a static JWKS (local mode, where the development issuer's public keys are
handed to the functions) and a remote JWKS URL (Cognito or an external OIDC issuer), fetched
and cached by PyJWT's ``PyJWKClient``.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal, Protocol

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

from ehr.fhir.outcome import OperationOutcomeError, unauthorized

# Asymmetric algorithms only: "none" and the HMAC family can never verify a token here.
ALLOWED_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384")
REQUIRED_CLAIMS: Final = ("exp", "iat", "iss", "aud", "sub")
# Cognito access tokens have no ``aud``: they name the app client in ``client_id`` and say what
# they are in ``token_use``. With the ``cognito-access`` profile the issuer (the stack's own user
# pool, which serves this API only) stands for the audience, and only access tokens are accepted.
COGNITO_REQUIRED_CLAIMS: Final = ("exp", "iat", "iss", "sub", "client_id", "token_use")
LEEWAY_SECONDS: Final = 30
TokenProfile = Literal["jwt", "cognito-access"]


class KeySource(Protocol):
    """Finds the public key a token names in its ``kid`` header."""

    def key_for(self, token: str, kid: str | None) -> PyJWK: ...


class StaticJwks:
    """Keys given as a JWKS document."""

    def __init__(self, jwks: dict[str, Any] | str) -> None:
        document = json.loads(jwks) if isinstance(jwks, str) else jwks
        self._keys = PyJWKSet.from_dict(document)

    def key_for(self, token: str, kid: str | None) -> PyJWK:
        for key in self._keys.keys:
            if kid is None or key.key_id == kid:
                return key
        raise unauthorized("The token is signed with an unknown key.")


class RemoteJwks:
    """Keys published at a JWKS URL, fetched once and cached between invocations."""

    def __init__(self, url: str, *, lifespan_seconds: int = 900, timeout_seconds: int = 5) -> None:
        self._client = PyJWKClient(url, cache_keys=True, lifespan=lifespan_seconds, timeout=timeout_seconds)

    def key_for(self, token: str, kid: str | None) -> PyJWK:
        try:
            return self._client.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            # The request cannot be authenticated right now; say so without blaming the client.
            raise OperationOutcomeError(
                status=503,
                issues=unauthorized("The token issuer's keys cannot be fetched; retry later.").issues,
            ) from exc
        except jwt.PyJWKClientError as exc:
            raise unauthorized("The token is signed with an unknown key.") from exc


class TokenVerifier:
    """Verifies an access token and returns its claims, or raises a 401 OperationOutcomeError."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: KeySource,
        leeway: int = LEEWAY_SECONDS,
        profile: TokenProfile = "jwt",
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.profile = profile
        self._keys = keys
        self._leeway = leeway

    def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise unauthorized("The bearer token is not a well-formed JWT.") from exc
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise unauthorized(f"Tokens signed with {str(algorithm)[:16]!r} are not accepted.")
        key = self._keys.key_for(token, header.get("kid"))
        try:
            cognito = self.profile == "cognito-access"
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(ALLOWED_ALGORITHMS),
                audience=None if cognito else self.audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={
                    "require": list(COGNITO_REQUIRED_CLAIMS if cognito else REQUIRED_CLAIMS),
                    "verify_signature": True,
                    "verify_aud": not cognito,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("The bearer token has expired.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise unauthorized("The bearer token is not valid yet.") from exc
        except jwt.InvalidAudienceError as exc:
            raise unauthorized("The bearer token is not meant for this server (audience).") from exc
        except jwt.InvalidIssuerError as exc:
            raise unauthorized("The bearer token comes from an issuer this server does not trust.") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"The bearer token lacks the required claim {exc.claim!r}.") from exc
        except jwt.InvalidSignatureError as exc:
            raise unauthorized("The bearer token's signature does not verify.") from exc
        except jwt.InvalidTokenError as exc:
            raise unauthorized("The bearer token is not valid.") from exc
        if self.profile == "cognito-access" and (claims.get("token_use") != "access" or "aud" in claims):
            # An ID token (token_use "id", with an aud) proves who signed in, not what they may do.
            raise unauthorized("Only access tokens are accepted (token_use must be 'access').")
        return claims


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer …`` header, or a 401."""
    if not authorization:
        raise unauthorized("This request needs an Authorization: Bearer token.", error="")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("The Authorization header must use the Bearer scheme.", error="invalid_request")
    return token.strip()
