"""Token verification: what gets a caller in, and every way a token is refused with 401."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from ehr import names
from ehr.fhir.outcome import OperationOutcomeError
from ehr.security.tokens import StaticJwks, TokenVerifier, bearer_token
from infra.local.issuer import DevIssuer


@pytest.fixture
def verifier(issuer: DevIssuer) -> TokenVerifier:
    return TokenVerifier(
        issuer=names.LOCAL_ISSUER, audience=names.DEFAULT_AUDIENCE, keys=StaticJwks(issuer.jwks())
    )


def refused(verifier: TokenVerifier, token: str) -> OperationOutcomeError:
    with pytest.raises(OperationOutcomeError) as caught:
        verifier.verify(token)
    assert caught.value.status == 401
    assert caught.value.to_fhir()["issue"][0]["code"] == "login"
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")
    return caught.value


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_token_from_the_trusted_issuer_verifies(issuer, verifier):
    # Given a token minted by the development issuer
    token = issuer.mint(tenant="clinic-a", scope="user/*.cruds", patient="p1")
    # When it is verified
    claims = verifier.verify(token)
    # Then its claims come back
    assert claims["tenant"] == "clinic-a"
    assert claims["scope"] == "user/*.cruds"
    assert claims["patient"] == "p1"


def test_an_expired_token_is_refused(issuer, verifier):
    token = issuer.mint(tenant="clinic-a", scope="user/*.rs", extra_claims={"exp": int(time.time()) - 120})
    assert "expired" in refused(verifier, token).issues[0].diagnostics


def test_a_token_not_valid_yet_is_refused(issuer, verifier):
    token = issuer.mint(tenant="clinic-a", scope="user/*.rs", extra_claims={"nbf": int(time.time()) + 600})
    assert "not valid yet" in refused(verifier, token).issues[0].diagnostics


def test_a_token_for_another_audience_is_refused(issuer, verifier):
    token = issuer.mint(tenant="clinic-a", scope="user/*.rs", extra_claims={"aud": "urn:some-other-api"})
    assert "audience" in refused(verifier, token).issues[0].diagnostics


def test_a_token_from_another_issuer_is_refused(issuer, verifier):
    token = issuer.mint(tenant="clinic-a", scope="user/*.rs", extra_claims={"iss": "https://evil.example"})
    assert "issuer" in refused(verifier, token).issues[0].diagnostics


def test_a_token_signed_by_another_key_with_the_same_kid_is_refused(issuer, other_issuer, verifier):
    # Given a token signed by a different private key but claiming the trusted key's id
    forged = jwt.encode(
        {
            "iss": names.LOCAL_ISSUER,
            "aud": names.DEFAULT_AUDIENCE,
            "sub": "x",
            "tenant": "clinic-a",
            "iat": int(time.time()),
            "exp": int(time.time()) + 300,
        },
        other_issuer._key,
        algorithm="RS256",
        headers={"kid": issuer.kid},
    )
    # Then its signature does not verify
    assert "signature" in refused(verifier, forged).issues[0].diagnostics


def test_a_token_signed_by_an_unknown_key_is_refused(other_issuer, verifier):
    token = other_issuer.mint(tenant="clinic-a", scope="user/*.rs")
    assert "unknown key" in refused(verifier, token).issues[0].diagnostics


def test_an_unsigned_alg_none_token_is_refused(issuer, verifier):
    header = _b64({"alg": "none", "typ": "JWT", "kid": issuer.kid})
    payload = _b64(
        {
            "iss": names.LOCAL_ISSUER,
            "aud": names.DEFAULT_AUDIENCE,
            "sub": "x",
            "tenant": "clinic-a",
            "iat": int(time.time()),
            "exp": int(time.time()) + 300,
        }
    )
    assert "not accepted" in refused(verifier, f"{header}.{payload}.").issues[0].diagnostics


def test_an_hmac_token_keyed_with_the_public_key_is_refused(issuer, verifier):
    # The classic algorithm-confusion attack: HS256 with the RSA public key as the secret.
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": issuer.kid})
    payload = _b64(
        {
            "iss": names.LOCAL_ISSUER,
            "aud": names.DEFAULT_AUDIENCE,
            "sub": "x",
            "tenant": "clinic-a",
            "iat": int(time.time()),
            "exp": int(time.time()) + 300,
        }
    )
    assert "not accepted" in refused(verifier, f"{header}.{payload}.c2lnbmF0dXJl").issues[0].diagnostics


def test_a_token_without_expiry_is_refused(issuer, verifier):
    now = int(time.time())
    token = jwt.encode(
        {"iss": names.LOCAL_ISSUER, "aud": names.DEFAULT_AUDIENCE, "sub": "x", "iat": now},
        issuer._key,
        algorithm="RS256",
        headers={"kid": issuer.kid},
    )
    assert "'exp'" in refused(verifier, token).issues[0].diagnostics


@pytest.mark.parametrize("garbage", ["not-a-jwt", "a.b.c", "", "....", "eyJhbGciOiJSUzI1NiJ9"])
def test_garbage_is_refused_as_malformed(verifier, garbage):
    refused(verifier, garbage)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer  tok ", "tok"), ("BEARER tok", "tok")],
)
def test_bearer_token_is_taken_from_the_header(header, expected):
    assert bearer_token(header) == expected


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   "])
def test_a_missing_or_non_bearer_header_is_a_401(header):
    with pytest.raises(OperationOutcomeError) as caught:
        bearer_token(header)
    assert caught.value.status == 401


# -- Cognito access tokens (the stack's default issuer) ----------------------------------------


def cognito_token(issuer: DevIssuer, **claims: object) -> str:
    """A token shaped as Cognito issues client-credentials access tokens: no ``aud``, the app
    client in ``client_id``, ``token_use`` access (signed by the development key for the test)."""
    payload = jwt.decode(
        issuer.mint(tenant="clinic-a", scope="system/*.rs", client_id="3n4b5urk1ft4fl3mg5e62d9ado"),
        options={"verify_signature": False},
    )
    payload.pop("aud")
    payload["token_use"] = "access"
    payload.update(claims)
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None},
        issuer._key,
        algorithm="RS256",
        headers={"kid": issuer.kid},
    )


@pytest.fixture
def cognito_verifier(issuer: DevIssuer) -> TokenVerifier:
    return TokenVerifier(
        issuer=names.LOCAL_ISSUER,
        audience="unused-with-this-profile",
        keys=StaticJwks(issuer.jwks()),
        profile="cognito-access",
    )


def test_a_cognito_access_token_without_aud_verifies_with_the_cognito_profile(
    issuer, cognito_verifier, verifier
):
    token = cognito_token(issuer)
    claims = cognito_verifier.verify(token)
    assert claims["client_id"] == "3n4b5urk1ft4fl3mg5e62d9ado" and claims["tenant"] == "clinic-a"
    # The generic profile keeps requiring an audience.
    assert "aud" in refused(verifier, token).issues[0].diagnostics


def test_the_cognito_profile_refuses_id_tokens_and_tokens_without_token_use(issuer, cognito_verifier):
    assert "access" in refused(cognito_verifier, cognito_token(issuer, token_use="id")).issues[0].diagnostics
    assert (
        "token_use" in refused(cognito_verifier, cognito_token(issuer, token_use=None)).issues[0].diagnostics
    )
    with_aud = cognito_token(issuer, aud="3n4b5urk1ft4fl3mg5e62d9ado")
    assert "access" in refused(cognito_verifier, with_aud).issues[0].diagnostics


def test_the_cognito_profile_still_checks_issuer_signature_and_expiry(issuer, other_issuer, cognito_verifier):
    assert (
        "issuer"
        in refused(cognito_verifier, cognito_token(issuer, iss="https://evil.example")).issues[0].diagnostics
    )
    assert (
        "expired"
        in refused(cognito_verifier, cognito_token(issuer, exp=int(time.time()) - 120)).issues[0].diagnostics
    )
    foreign = jwt.decode(cognito_token(other_issuer), options={"verify_signature": False})
    assert foreign["token_use"] == "access"
    refused(cognito_verifier, cognito_token(other_issuer))
