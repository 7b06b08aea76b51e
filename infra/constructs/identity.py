"""Who issues the access tokens the API accepts: a Cognito user pool, or an external OIDC issuer.

Either way the construct exposes the same five values (``issuer``, ``audience``, ``jwks_url``,
``token_endpoint``, ``tenant_claim``) that the authorizer and the functions receive through
``ehr.settings.environment_for``.

In ``cognito`` mode the tenant claim comes from the pool's pre token generation trigger (the
``token_customizer`` function, ``attach_token_customizer``): an administrator binds a partner's app
client to a tenant by naming it ``tenant.{tenant}[.{label}]`` (docs/security.md). The stack's own
``SystemClient`` is named so that it binds no tenant.
"""

from __future__ import annotations

from typing import Final

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from ehr import names
from infra.config import EnvironmentConfig
from infra.constructs.nag import acknowledge

# What the pre token generation trigger may ask the pool: an app client's name (its tenant binding).
CLIENT_LOOKUP_ACTIONS: Final = ("cognito-idp:DescribeUserPoolClient",)

# SMART on FHIR backend-services scopes. Cognito scope names cannot contain "/", so the resource
# server's identifier is "system" and a granted scope reads "system/<name>" exactly as SMART spells it.
SMART_RESOURCE_SERVER: Final = "system"
SMART_SCOPES: Final[tuple[tuple[str, str], ...]] = (
    ("*.rs", "Read and search every resource type of the token's tenant (SMART v2)."),
    ("*.cruds", "Create, read, update, delete and search every resource type (SMART v2)."),
    ("*.read", "Read every resource type of the token's tenant (SMART v1)."),
    ("*.write", "Write every resource type of the token's tenant (SMART v1)."),
)


class Identity(Construct):
    """Token issuer settings; in ``cognito`` mode also ``user_pool``, ``resource_server``, ``client``."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig) -> None:
        super().__init__(scope, construct_id)
        auth = config.auth
        self.mode = auth.mode
        self.tenant_claim: str = auth.tenant_claim
        self.user_pool: cognito.UserPool | None = None
        self.resource_server: cognito.UserPoolResourceServer | None = None
        self.client: cognito.UserPoolClient | None = None

        if auth.mode == "oidc":
            assert auth.issuer is not None and auth.jwks_url is not None  # validated by AuthConfig
            self.issuer: str = auth.issuer
            self.audience: str = auth.audience or names.DEFAULT_AUDIENCE
            self.token_profile: str = "jwt"  # noqa: S105 - a profile name, not a secret
            self.jwks_url: str = auth.jwks_url
            self.token_endpoint: str | None = auth.token_endpoint
            self.token_endpoint_auth_methods: str | None = auth.token_endpoint_auth_methods
            return

        stack = Stack.of(self)
        self.user_pool = cognito.UserPool(
            self,
            "UserPool",
            feature_plan=cognito.FeaturePlan.ESSENTIALS,
            self_sign_up_enabled=False,
            sign_in_aliases=cognito.SignInAliases(username=True, email=False),
            mfa=cognito.Mfa.REQUIRED,
            mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            password_policy=cognito.PasswordPolicy(
                min_length=14,
                require_lowercase=True,
                require_uppercase=True,
                require_digits=True,
                require_symbols=True,
                temp_password_validity=Duration.days(1),
            ),
            account_recovery=cognito.AccountRecovery.NONE,
            deletion_protection=config.deletion_protection,
            removal_policy=RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.user_pool,
            "The pool issues OAuth client-credentials tokens to partner systems (SMART backend "
            "services); it has no interactive users, so the Plus tier's sign-in threat protection "
            "would protect nothing and be billed per user.",
            "AwsSolutions-COG8",
        )
        self.resource_server = self.user_pool.add_resource_server(
            "SmartResourceServer",
            identifier=SMART_RESOURCE_SERVER,
            user_pool_resource_server_name="SMART backend services",
            scopes=[
                cognito.ResourceServerScope(scope_name=name, scope_description=description)
                for name, description in SMART_SCOPES
            ],
        )
        domain_prefix = auth.cognito_domain_prefix or f"{names.SERVICE_NAME}-{config.name}-{stack.account}"
        self.domain = self.user_pool.add_domain(
            "Domain", cognito_domain=cognito.CognitoDomainOptions(domain_prefix=domain_prefix)
        )
        # Named so that it binds no tenant: its tokens get no tenant claim and tenant routes refuse
        # them. Partners get app clients of their own, named tenant.{tenant}[.{label}] at onboarding.
        self.client = self.user_pool.add_client(
            "SystemClient",
            user_pool_client_name=names.COGNITO_SYSTEM_CLIENT_NAME,
            generate_secret=True,
            auth_flows=cognito.AuthFlow(),
            o_auth=cognito.OAuthSettings(
                flows=cognito.OAuthFlows(client_credentials=True),
                scopes=[
                    cognito.OAuthScope.resource_server(
                        self.resource_server,
                        cognito.ResourceServerScope(scope_name=name, scope_description=d),
                    )
                    for name, d in SMART_SCOPES
                ],
            ),
            access_token_validity=Duration.minutes(15),
            enable_token_revocation=True,
            prevent_user_existence_errors=True,
        )
        self.issuer = f"https://cognito-idp.{stack.region}.{stack.url_suffix}/{self.user_pool.user_pool_id}"
        self.jwks_url = f"{self.issuer}/.well-known/jwks.json"
        self.token_endpoint = f"{self.domain.base_url()}/oauth2/token"
        # Cognito app clients with a secret authenticate at the token endpoint with it.
        self.token_endpoint_auth_methods = "client_secret_basic client_secret_post"  # noqa: S105 - method names
        # Cognito access tokens carry the app client in `client_id` and have no `aud` claim: the
        # functions verify them with the cognito-access profile (token_use "access", this pool as
        # issuer); the audience setting is then not checked.
        self.audience = auth.audience or self.client.user_pool_client_id
        self.token_profile = "cognito-access"  # noqa: S105 - a profile name, not a secret

    def attach_token_customizer(self, function: lambda_.IFunction, policy: iam.ManagedPolicy) -> None:
        """Make ``function`` the pool's pre token generation trigger (event version V3_0, which covers
        client-credentials grants on the Essentials tier) and let ``policy`` read the pool's app
        client names, which bind clients to tenants. Only this pool: a wildcard would also reach
        other pools' clients (DescribeUserPoolClient answers with the client secret)."""
        if self.user_pool is None:
            raise ValueError("the token customizer needs the stack's Cognito user pool (auth mode 'cognito')")
        policy.add_statements(
            iam.PolicyStatement(
                sid="ReadAppClientTenantBindings",
                actions=list(CLIENT_LOOKUP_ACTIONS),
                resources=[self.user_pool.user_pool_arn],
            )
        )
        self.user_pool.add_trigger(
            cognito.UserPoolOperation.PRE_TOKEN_GENERATION_CONFIG, function, cognito.LambdaVersion.V3_0
        )

    def settings(self) -> dict[str, str | None]:
        """The auth values of ``ehr.settings.AuthSettings`` (issuer, audience, jwks_url, ...)."""
        return {
            "issuer": self.issuer,
            "audience": self.audience,
            "jwks_url": self.jwks_url,
            "tenant_claim": self.tenant_claim,
            "token_endpoint": self.token_endpoint,
            "token_endpoint_auth_methods": self.token_endpoint_auth_methods,
            "token_profile": self.token_profile,
        }
