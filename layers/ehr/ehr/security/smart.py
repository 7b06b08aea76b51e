"""The SMART on FHIR discovery document (``.well-known/smart-configuration``)."""

from __future__ import annotations

from typing import Any

from ehr.security.scopes import SUPPORTED_SCOPES


def smart_configuration(
    *, issuer: str, jwks_uri: str, token_endpoint: str | None, token_auth_methods: str | None = None
) -> dict[str, Any]:
    """Describe the issuer whose tokens this deployment accepts.

    Only what is really supported is listed: this platform verifies bearer tokens from one
    issuer; it offers no user-facing authorization endpoint. A token endpoint is listed when the
    deployment has one (Cognito or an external OIDC issuer).
    """
    document: dict[str, Any] = {
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        # Enforced on every interaction (ehr.security.scopes): SMART v2 scopes with v1 aliases,
        # patient- and user-level access, granular scopes.
        "capabilities": ["permission-v2", "permission-v1", "permission-patient", "permission-user"],
        "scopes_supported": list(SUPPORTED_SCOPES),
        "code_challenge_methods_supported": [],
        "grant_types_supported": ["client_credentials"] if token_endpoint else [],
        "response_types_supported": [],
    }
    if token_endpoint:
        document["token_endpoint"] = token_endpoint
    methods = (token_auth_methods or "").split()
    if token_endpoint and methods:
        document["token_endpoint_auth_methods_supported"] = methods
        if "private_key_jwt" in methods:
            # SMART Backend Services: asymmetric client authentication with RS384 or ES384.
            document["token_endpoint_auth_signing_alg_values_supported"] = ["RS384", "ES384"]
            document["capabilities"] = [*document["capabilities"], "client-confidential-asymmetric"]
    return document
