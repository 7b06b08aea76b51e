"""Names shared by the CDK stack, the local emulator, the Lambda functions and the tests.

Anything that two of those places must spell the same way is defined here once.
"""

from __future__ import annotations

from typing import Final

SERVICE_NAME: Final = "ehr"
STACK_NAME: Final = "ServerlessEhr"
METRICS_NAMESPACE: Final = "ServerlessEhr"

# Lambda functions: the folder under functions/ and the logical name used everywhere else.
FN_FHIR_API: Final = "fhir_api"
FN_DISCOVERY: Final = "discovery"
FN_AUTHORIZER: Final = "authorizer"
FN_AUDIT_ARCHIVER: Final = "audit_archiver"
FN_DOCUMENT_VERIFIER: Final = "document_verifier"
FN_HL7V2_INBOUND: Final = "hl7v2_inbound"
FN_LAB_WORKFLOW: Final = "lab_workflow"
FN_CHANGE_PUBLISHER: Final = "change_publisher"
FN_SHARING_NOTIFIER: Final = "sharing_notifier"
# Requests API Gateway refused at the authorizer (no function saw them), from its access log.
FN_GATEWAY_AUDIT: Final = "gateway_audit"
# Cognito's pre token generation trigger: deployed with the stack's own user pool (auth mode
# "cognito") only; an external OIDC issuer puts the tenant claim into its tokens itself.
FN_TOKEN_CUSTOMIZER: Final = "token_customizer"  # noqa: S105 - a function name, not a secret
FUNCTIONS: Final = (
    FN_FHIR_API,
    FN_DISCOVERY,
    FN_AUTHORIZER,
    FN_AUDIT_ARCHIVER,
    FN_DOCUMENT_VERIFIER,
    FN_HL7V2_INBOUND,
    FN_LAB_WORKFLOW,
    FN_CHANGE_PUBLISHER,
    FN_SHARING_NOTIFIER,
    FN_GATEWAY_AUDIT,
    FN_TOKEN_CUSTOMIZER,
)
HANDLER_ATTRIBUTE: Final = "lambda_handler"


def handler_path(function: str) -> str:
    """The Lambda handler string for a function whose code asset root is ``functions/``."""
    return f"{function}.handler.{HANDLER_ATTRIBUTE}"


# Event bus and event sources.
EVENT_SOURCE: Final = "ehr.platform"

# The lab-order workflow definition, one file for CDK and local mode, and its substitutions.
LAB_ORDER_ASL: Final = "statemachines/lab_order.asl.json"
LAB_ORDER_SUBSTITUTIONS: Final = (
    "EventBusName",
    "EventSource",
    "LabWorkflowFunctionArn",
    "DeadLetterQueueUrl",
)

# Lab partners: the identifier system of a partner's Organization in each clinic, and where the
# HMAC secrets that sign order webhooks live (Secrets Manager, one secret per tenant and partner).
PARTNER_SYSTEM: Final = "urn:ehr:partner"
PARTNER_SECRET_PREFIX: Final = "ehr/partners/"  # noqa: S105 - a name prefix, not a secret


def partner_secret_name(tenant: str, partner: str) -> str:
    return f"{PARTNER_SECRET_PREFIX}{tenant}/{partner}"


# Cross-facility sharing: each tenant's key that signs its Subscription webhooks (Secrets
# Manager, one secret per tenant) and the key that tokenises the master patient index.
SUBSCRIPTION_SECRET_PREFIX: Final = "ehr/subscriptions/"  # noqa: S105 - a name prefix, not a secret


def subscription_secret_name(tenant: str) -> str:
    return f"{SUBSCRIPTION_SECRET_PREFIX}{tenant}"


# Cognito app clients (auth mode "cognito"): an administrator binds a partner's app client to a
# tenant by its name, ``tenant.{tenant}`` or ``tenant.{tenant}.{label}`` ("." never occurs in a
# tenant id, so the tenant is unambiguous); the pre token generation trigger reads the name.
# Any other name binds no tenant, and tokens of that client are refused on tenant routes.
COGNITO_TENANT_CLIENT_PREFIX: Final = "tenant."
COGNITO_CLIENT_LABEL_SEPARATOR: Final = "."
# The stack's own app client binds no tenant (its id is the default audience; see docs/security.md).
COGNITO_SYSTEM_CLIENT_NAME: Final = "ehr-system-no-tenant"


def cognito_tenant_client_name(tenant: str, label: str | None = None) -> str:
    """The app client name that binds a client to ``tenant`` (``label`` tells clients apart)."""
    name = f"{COGNITO_TENANT_CLIENT_PREFIX}{tenant}"
    return f"{name}{COGNITO_CLIENT_LABEL_SEPARATOR}{label}" if label else name


# Local development identity provider.
LOCAL_ISSUER: Final = "urn:ehr:local-dev-issuer"
DEFAULT_AUDIENCE: Final = "urn:ehr:api"
DEFAULT_TENANT_CLAIM: Final = "tenant"

# Demo tenants seeded by `ehr local`.
DEMO_TENANTS: Final = (
    ("clinic-a", "clinic", "Clinic A (demo)"),
    ("clinic-b", "clinic", "Clinic B (demo)"),
    ("acme-lab", "lab", "ACME Laboratory (demo partner)"),
)
