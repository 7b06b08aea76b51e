"""The REST API (API Gateway v1), generated from the route table ``ehr.api.routes.ROUTES``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_logs_destinations as log_destinations
from constructs import Construct

from ehr import names
from ehr.api.routes import FHIR_JSON, HL7_ER7, JSON, ROUTES, Route
from ehr.fhir.outcome import GATEWAY_RESPONSES, GatewayResponse
from ehr.security.gateway_audit import REFUSAL_TYPES
from infra.config import RETENTION_DAYS, EnvironmentConfig
from infra.constructs.compute import pascal
from infra.constructs.firewall import Firewall
from infra.constructs.nag import acknowledge

AUTHORIZATION_HEADER: Final = "Authorization"
# API Gateway rejects a malformed header before invoking the authorizer (answering UNAUTHORIZED).
BEARER_TOKEN_PATTERN: Final = r"^Bearer [-0-9A-Za-z._~+/]+=*$"  # noqa: S105 - a pattern, not a secret

# JSON access log: identifiers and timings only. $context.path carries no query string (FHIR search
# parameters can be PHI); the principal is the authorizer's principalId (a client id, not a person).
ACCESS_LOG_FIELDS: Final = {
    "requestId": "$context.requestId",
    "extendedRequestId": "$context.extendedRequestId",
    "requestTime": "$context.requestTime",
    "ip": "$context.identity.sourceIp",
    "httpMethod": "$context.httpMethod",
    "resourcePath": "$context.resourcePath",
    "path": "$context.path",
    "protocol": "$context.protocol",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationLatency": "$context.integrationLatency",
    "integrationStatus": "$context.integrationStatus",
    "principalId": "$context.authorizer.principalId",
    "authorizerError": "$context.authorizer.error",
    "errorType": "$context.error.responseType",
    "wafStatus": "$context.waf.status",
    "xrayTraceId": "$context.xrayTraceId",
}


def refusal_filter_pattern() -> logs.IFilterPattern:
    """Access log entries of requests refused at the authorizer (``is_refusal`` in Python)."""
    return logs.FilterPattern.any(
        *(logs.FilterPattern.string_value("$.errorType", "=", kind) for kind in REFUSAL_TYPES)
    )


def gateway_response_template(response: GatewayResponse) -> str:
    """The OperationOutcome body as a mapping template (static JSON, no VTL)."""
    text = json.dumps(response.body(), separators=(",", ":"))
    if "$" in text or "#" in text:
        raise ValueError(f"gateway response {response.response_type}: body would be read as VTL: {text}")
    return text


def quoted(value: str) -> str:
    """A static header value in API Gateway's notation ('value')."""
    if "'" in value:
        raise ValueError(f"header value {value!r} contains a single quote")
    return f"'{value}'"


class Api(Construct):
    """``rest_api`` with ``stage``; ``methods`` keyed by ``(method, path)`` of ``ROUTES``;
    ``authorizer`` (Lambda TOKEN); ``access_log_group``/``execution_log_group``; ``firewall``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        functions: Mapping[str, lambda_.IFunction],
        logs_key: kms.IKey,
        routes: tuple[Route, ...] = ROUTES,
    ) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY
        retention = logs.RetentionDays[RETENTION_DAYS[config.log_retention_days]]

        self.access_log_group = logs.LogGroup(
            self, "AccessLogs", retention=retention, encryption_key=logs_key, removal_policy=removal
        )
        self.rest_api = apigw.RestApi(
            self,
            "RestApi",
            rest_api_name=config.stack_name,
            description=f"{names.STACK_NAME} FHIR R4 and SMART API ({config.name}).",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=removal,
            fail_on_warnings=True,
            # HL7 v2 arrives in any 8-bit character set: passed through as bytes (base64 to the
            # function), never re-encoded as UTF-8 text on the way.
            binary_media_types=[HL7_ER7, "application/hl7-v2"],
            deploy_options=apigw.StageOptions(
                stage_name=config.api_stage_name,
                access_log_destination=apigw.LogGroupLogDestination(self.access_log_group),
                access_log_format=apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS)),
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # full request/response logging would write PHI to logs
                metrics_enabled=True,
                tracing_enabled=True,
                throttling_rate_limit=config.api_throttle_rate_limit,
                throttling_burst_limit=config.api_throttle_burst_limit,
            ),
        )
        self.stage = self.rest_api.deployment_stage
        # Requests refused at the authorizer reach no function: their access log entries go to
        # gateway_audit, which records each in the audit trail of the tenant the URL names.
        self.refusal_filter = logs.SubscriptionFilter(
            self,
            "GatewayRefusals",
            log_group=self.access_log_group,
            destination=log_destinations.LambdaDestination(functions[names.FN_GATEWAY_AUDIT]),
            filter_pattern=refusal_filter_pattern(),
            filter_name="GatewayRefusals",
        )
        # Created before the stage, so API Gateway's execution log group gets the stack's
        # retention and KMS key instead of API Gateway creating it unencrypted and kept forever.
        self.execution_log_group = logs.LogGroup(
            self,
            "ExecutionLogs",
            log_group_name=f"API-Gateway-Execution-Logs_{self.rest_api.rest_api_id}/{config.api_stage_name}",
            retention=retention,
            encryption_key=logs_key,
            removal_policy=removal,
        )
        self.stage.node.add_dependency(self.execution_log_group)
        self._acknowledge_stage(config)

        self.request_validator = self.rest_api.add_request_validator(
            "RequestValidator",
            request_validator_name="parameters-and-body",
            validate_request_parameters=True,
            validate_request_body=True,
        )
        self.authorizer = apigw.TokenAuthorizer(
            self,
            "TokenAuthorizer",
            handler=functions[names.FN_AUTHORIZER],
            identity_source=apigw.IdentitySource.header(AUTHORIZATION_HEADER),
            validation_regex=BEARER_TOKEN_PATTERN,
            results_cache_ttl=Duration.seconds(config.authorizer_cache_ttl_seconds),
        )

        integrations: dict[str, apigw.LambdaIntegration] = {}
        self.methods: dict[tuple[str, str], apigw.Method] = {}
        for route in routes:
            if route.function not in functions:
                raise ValueError(f"route {route.method} {route.path} names unknown function {route.function}")
            if route.function not in integrations:
                # One invoke permission per function for this API (all its routes and stages):
                # per-method permissions would outgrow Lambda's 20 KB resource-policy limit.
                integrations[route.function] = apigw.LambdaIntegration(
                    functions[route.function], proxy=True, scope_permission_to_method=False
                )
            self.methods[route.key] = self._add_method(route, integrations[route.function])

        self._add_gateway_responses()
        self.firewall = Firewall(
            self, "Firewall", resource_arn=self.stage.stage_arn, config=config, logs_key=logs_key
        )
        self.firewall.association.node.add_dependency(self.stage)

    @property
    def url(self) -> str:
        return self.rest_api.url

    def _add_method(self, route: Route, integration: apigw.LambdaIntegration) -> apigw.Method:
        resource = self.rest_api.root.resource_for_path(route.path)
        parameters = {f"method.request.path.{name}": True for name in route.path_parameters}
        common = {
            "operation_name": route.operation_id,
            "request_validator": self.request_validator,
            "request_parameters": parameters or None,
        }
        if route.auth:
            method = resource.add_method(
                route.method,
                integration,
                authorization_type=apigw.AuthorizationType.CUSTOM,
                authorizer=self.authorizer,
                **common,
            )
            acknowledge(
                method,
                f"{route.method} {route.path} is authorised by the Lambda TOKEN authorizer, which "
                "verifies the JWT of the configured issuer (Cognito or external OIDC) and its tenant "
                "claim; a Cognito authorizer could check neither an external issuer nor the tenant.",
                "AwsSolutions-COG4",
            )
        else:
            method = resource.add_method(
                route.method, integration, authorization_type=apigw.AuthorizationType.NONE, **common
            )
            acknowledge(
                method,
                f"{route.method} {route.path} ({route.operation_id}) is public by design, as clients "
                f"call it before they hold a token: {route.summary}",
                "AwsSolutions-APIG4",
                "AwsSolutions-COG4",
            )
        return method

    def _add_gateway_responses(self) -> None:
        self.gateway_responses: dict[str, apigw.GatewayResponse] = {}
        for response in GATEWAY_RESPONSES:
            template = gateway_response_template(response)
            self.gateway_responses[response.response_type] = self.rest_api.add_gateway_response(
                f"{pascal(response.response_type.lower())}Response",
                type=apigw.ResponseType.of(response.response_type),
                status_code=str(response.status) if response.status is not None else None,
                response_headers={name: quoted(value) for name, value in response.headers.items()} or None,
                templates={JSON: template, FHIR_JSON: template},
            )

    def _acknowledge_stage(self, config: EnvironmentConfig) -> None:
        acknowledge(
            self.stage,
            "Responses are PHI of the calling tenant: API Gateway's response cache is keyed by "
            "path, not by caller, and could serve one tenant's data to another. Only the "
            "authorizer's decision is cached (authorizer_cache_ttl_seconds).",
            "HIPAA.Security-APIGWCacheEnabledAndEncrypted",
        )
        acknowledge(
            self.stage,
            "Every integration of this stage is a Lambda proxy integration invoked through the "
            "Lambda API with IAM, not an HTTP backend: a client certificate authenticates only "
            "HTTP backends and would never be presented.",
            "HIPAA.Security-APIGWSSLEnabled",
        )
        role = self.rest_api.node.try_find_child("CloudWatchRole")
        if role is not None:
            acknowledge(
                role,
                "API Gateway's account-level logging role uses AmazonAPIGatewayPushToCloudWatchLogs, "
                "the policy API Gateway documents for it; only apigateway.amazonaws.com can assume it.",
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AmazonAPIGatewayPushToCloudWatchLogs]",
            )
