"""API Gateway TOKEN authorizer logic: authenticate at the edge, before any function runs.

The function behind the route verifies the token again and checks the tenant; this gate keeps
unauthenticated traffic from reaching functions at all, and its result is cached by API Gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ehr.api.app import BearerAuthenticator
from ehr.api.http import HttpRequest
from ehr.fhir.outcome import OperationOutcomeError


class UnauthorizedError(Exception):
    """Raised with the message "Unauthorized", which API Gateway turns into its 401 response."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


def api_wildcard_arn(method_arn: str) -> str:
    """``arn:…:execute-api:region:account:api/stage/*``: the cached policy must cover every route."""
    arn_prefix, _, resource = method_arn.partition(":execute-api:")
    parts = resource.split("/")
    if len(parts) < 2 or not arn_prefix:
        raise ValueError("not an execute-api method ARN")
    return f"{arn_prefix}:execute-api:{parts[0]}/{parts[1]}/*"


def authorize_token_event(event: Mapping[str, Any], authenticate: BearerAuthenticator) -> dict[str, Any]:
    token = event.get("authorizationToken") or ""
    request = HttpRequest(method="GET", resource="", path="", headers={"authorization": token})
    try:
        identity = authenticate(request)
    except OperationOutcomeError as exc:
        raise UnauthorizedError() from exc
    return {
        "principalId": identity.subject or identity.client_id or "anonymous",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Action": "execute-api:Invoke",
                    "Effect": "Allow",
                    "Resource": api_wildcard_arn(str(event.get("methodArn", ""))),
                }
            ],
        },
        # Identifiers only: API Gateway logs can include the authorizer context.
        "context": {
            "tenant": identity.tenant or "",
            "clientId": identity.client_id or "",
        },
    }
