"""The SMART on FHIR discovery document (``.well-known/smart-configuration``)."""

from __future__ import annotations

from typing import Any


def smart_configuration(*, issuer: str, jwks_uri: str, token_endpoint: str | None) -> dict[str, Any]:
    """Describe the issuer whose tokens this deployment accepts.

    Only what is really supported is listed: this platform verifies bearer tokens from one
    issuer; it offers no user-facing authorization endpoint. A token endpoint is listed when the
    deployment has one (Cognito or an external OIDC issuer).
    """
    document: dict[str, Any] = {
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "capabilities": [],
        "code_challenge_methods_supported": [],
        "grant_types_supported": ["client_credentials"] if token_endpoint else [],
        "response_types_supported": [],
    }
    if token_endpoint:
        document["token_endpoint"] = token_endpoint
    return document
