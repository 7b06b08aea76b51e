"""The Lambda functions: one per ``ehr.names.FUNCTIONS``, each with its own role, policy and log group."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct
from pydantic_settings import BaseSettings

from ehr import names
from ehr.settings import (
    AuditArchiverSettings,
    AuthorizerSettings,
    ChangePublisherSettings,
    DiscoverySettings,
    DocumentVerifierSettings,
    FhirApiSettings,
    GatewayAuditSettings,
    Hl7v2InboundSettings,
    LabWorkflowSettings,
    SharingNotifierSettings,
    TokenCustomizerSettings,
    environment_for,
)
from infra.bundling import function_code, layer_code
from infra.config import RETENTION_DAYS, EnvironmentConfig
from infra.constructs.audit import AuditTrail
from infra.constructs.audit_archive import via_service
from infra.constructs.clinical_store import ClinicalStore
from infra.constructs.documents import DocumentStore
from infra.constructs.events import Events
from infra.constructs.identity import Identity
from infra.constructs.nag import acknowledge
from infra.constructs.queues import dead_letter_queue
from infra.constructs.sharing import Sharing

# The newest Python runtime this aws-cdk-lib knows; cdk-nag's AwsSolutions-L1 accepts only that one.
RUNTIME: Final = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE: Final = lambda_.Architecture.ARM_64

# Each function's environment is its settings model (validated again at cold start).
SETTINGS: Final[dict[str, type[BaseSettings]]] = {
    names.FN_FHIR_API: FhirApiSettings,
    names.FN_DISCOVERY: DiscoverySettings,
    names.FN_AUTHORIZER: AuthorizerSettings,
    names.FN_AUDIT_ARCHIVER: AuditArchiverSettings,
    names.FN_DOCUMENT_VERIFIER: DocumentVerifierSettings,
    names.FN_HL7V2_INBOUND: Hl7v2InboundSettings,
    names.FN_LAB_WORKFLOW: LabWorkflowSettings,
    names.FN_CHANGE_PUBLISHER: ChangePublisherSettings,
    names.FN_SHARING_NOTIFIER: SharingNotifierSettings,
    names.FN_GATEWAY_AUDIT: GatewayAuditSettings,
    names.FN_TOKEN_CUSTOMIZER: TokenCustomizerSettings,
}
# Who invokes each function, for the reasons of the acknowledgements below.
INVOKED_BY: Final[dict[str, str]] = {
    names.FN_FHIR_API: "API Gateway's Lambda proxy integration of the FHIR routes",
    names.FN_DISCOVERY: "API Gateway's Lambda proxy integration of the public discovery routes",
    names.FN_AUTHORIZER: "API Gateway's TOKEN authorizer before each authenticated request",
    names.FN_AUDIT_ARCHIVER: "the Lambda event source mapping of the audit table's DynamoDB stream "
    "(failed batches go to its on-failure SQS queue)",
    names.FN_DOCUMENT_VERIFIER: "an EventBridge rule on the documents bucket's 'Object Created' events "
    "(asynchronous; failed events go to its dead-letter queue)",
    names.FN_HL7V2_INBOUND: "API Gateway's Lambda proxy integration of the HL7 v2 route",
    names.FN_LAB_WORKFLOW: "the lab-order state machine's Lambda tasks (synchronously) and the "
    "LabOrderCancelled EventBridge rule (asynchronously; failed events go to its on-failure SQS queue)",
    names.FN_CHANGE_PUBLISHER: "the Lambda event source mapping of the records table's DynamoDB stream "
    "(failed batches go to its on-failure SQS queue)",
    names.FN_SHARING_NOTIFIER: "the ResourceChangedRule EventBridge rule (asynchronously; failed events go "
    "to its on-failure SQS queue)",
    names.FN_GATEWAY_AUDIT: "a CloudWatch Logs subscription filter on the API's access log, with the "
    "requests API Gateway refused at the authorizer (asynchronously; failed batches go to its on-failure "
    "SQS queue)",
    names.FN_TOKEN_CUSTOMIZER: "the Cognito user pool's pre token generation trigger (event version V3_0) "
    "before the pool issues an access token",
}

# What each function talks to over the network, for the reason of the VPC acknowledgement.
REACHES: Final[dict[str, str]] = {
    names.FN_FHIR_API: "DynamoDB (the records, audit and patient-index tables), S3 (the documents bucket), "
    "Secrets Manager (the cursor and patient-index keys), KMS through them, and X-Ray, over TLS with IAM",
    names.FN_DOCUMENT_VERIFIER: "S3 (the documents bucket), DynamoDB, SQS (its dead-letter queue), KMS "
    "through them, and X-Ray, over TLS with IAM",
    names.FN_DISCOVERY: "X-Ray only, over TLS with IAM",
    names.FN_AUTHORIZER: "X-Ray over TLS with IAM, and the token issuer's public JWKS over HTTPS",
    names.FN_AUDIT_ARCHIVER: "S3 (the audit archive bucket, and KMS through it) and X-Ray, over TLS with IAM",
    names.FN_HL7V2_INBOUND: "DynamoDB, S3 (the documents bucket's message archive), Secrets Manager (the "
    "cursor and patient-index keys), Step Functions (SendTaskSuccess to resume a waiting lab order), KMS "
    "and X-Ray, over TLS with IAM",
    names.FN_LAB_WORKFLOW: "DynamoDB, Secrets Manager (the cursor and lab partner secrets), Step "
    "Functions (SendTaskSuccess), SQS (its on-failure queue), KMS through them and X-Ray, over TLS "
    "with IAM, and the partner labs' webhooks over HTTPS (each request HMAC-signed, each answer an "
    "HL7 ACK)",
    names.FN_CHANGE_PUBLISHER: "DynamoDB Streams (the records table's), DynamoDB (the patient-index "
    "table), Secrets Manager (the patient-index key), EventBridge (the platform bus), SQS (its on-failure "
    "queue), KMS through them, and X-Ray, over TLS with IAM",
    names.FN_SHARING_NOTIFIER: "DynamoDB (the records, audit and patient-index tables), Secrets Manager "
    "(the cursor and patient-index keys and the tenants' Subscription signing secrets), EventBridge (the "
    "platform bus), SQS (the Subscription dead-letter queue and its on-failure queue), KMS through them "
    "and X-Ray, over TLS with IAM, and the tenants' Subscription endpoints over HTTPS (each request "
    "HMAC-signed, each URL within the tenant's subscription_endpoints allow-list)",
    names.FN_GATEWAY_AUDIT: "DynamoDB (tenant registrations in the records table, appends to the audit "
    "table), SQS (its on-failure queue), KMS through them and X-Ray, over TLS with IAM",
    names.FN_TOKEN_CUSTOMIZER: "Amazon Cognito (DescribeUserPoolClient on the stack's user pool, for the "
    "name that binds an app client to a tenant) and X-Ray, over TLS with IAM",
}
# Functions that exist only with the stack's own Cognito user pool (auth mode "cognito"): an
# external OIDC issuer puts the tenant claim into its tokens itself.
COGNITO_ONLY: Final = frozenset({names.FN_TOKEN_CUSTOMIZER})
# Cognito waits about five seconds for a trigger; a longer timeout would only hold the token request.
COGNITO_TRIGGER_TIMEOUT_SECONDS: Final = 5
# Functions that call URLs outside AWS which change with onboarding: why a VPC would not narrow it.
OPEN_EGRESS: Final[dict[str, str]] = {
    names.FN_LAB_WORKFLOW: "partner webhooks are per-tenant HTTPS URLs, so egress could only be narrowed "
    "by a NAT gateway plus an allow-list kept in step with partner onboarding",
    names.FN_SHARING_NOTIFIER: "Subscription endpoints are per-tenant HTTPS URLs, already held to the "
    "subscription_endpoints allow-list in code; a network-level allow-list would take a NAT gateway or "
    "egress firewall kept in step with that context key",
}

# Functions that an EventBridge rule invokes asynchronously: what their on-failure queue holds.
# Lambda retries a failed asynchronous event ASYNC_RETRY_ATTEMPTS times within ASYNC_MAX_EVENT_AGE,
# then sends it, with the error, to that queue (an EventInvokeConfig on-failure destination).
ASYNC_FAILURES: Final[dict[str, str]] = {
    names.FN_LAB_WORKFLOW: "LabOrderCancelled events (tenant and ServiceRequest id) the lab_workflow "
    "function failed to process after Lambda's retries, with the error",
    names.FN_SHARING_NOTIFIER: "ResourceChanged events (tenant, resource type, id and version) the "
    "sharing_notifier function failed to process after Lambda's retries (the store or the index was "
    "unavailable), with the error; undelivered webhooks go to the Subscription dead-letter queue instead",
    names.FN_GATEWAY_AUDIT: "access log batches of refused requests the gateway_audit function could not "
    "record in the audit trail after Lambda's retries, with the error",
}
# Functions that only ask whether a tenant exists and only append to the audit trail: no clinical
# record, no reading of the trail.
TENANT_DIRECTORY_ONLY: Final = frozenset({names.FN_GATEWAY_AUDIT})
ASYNC_RETRY_ATTEMPTS: Final = 2
ASYNC_MAX_EVENT_AGE: Final = Duration.hours(6)
DEAD_LETTER_ACTIONS: Final = ("sqs:SendMessage",)
DEAD_LETTER_KEY_ACTIONS: Final = ("kms:GenerateDataKey", "kms:Decrypt")

POWERTOOLS_ENVIRONMENT: Final = {
    "POWERTOOLS_SERVICE_NAME": names.SERVICE_NAME,
    "POWERTOOLS_METRICS_NAMESPACE": names.METRICS_NAMESPACE,
    "POWERTOOLS_LOG_LEVEL": "INFO",
    # Events and responses carry PHI: never log an event or put a response into a trace.
    "POWERTOOLS_LOGGER_LOG_EVENT": "false",
    "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
}


def deployed_functions(identity: Identity) -> tuple[str, ...]:
    """The functions of ``names.FUNCTIONS`` this stack creates (the Cognito trigger only with a pool)."""
    return tuple(fn for fn in names.FUNCTIONS if identity.user_pool is not None or fn not in COGNITO_ONLY)


def pascal(name: str) -> str:
    """``fhir_api`` -> ``FhirApi`` (construct ids are PascalCase)."""
    return "".join(part.title() for part in name.split("_"))


class Compute(Construct):
    """``layer`` (the ``ehr`` core + dependencies) and, keyed by function name: ``functions``,
    ``roles``, ``policies`` (each role's single customer-managed policy) and ``log_groups``;
    ``async_configs`` and ``dead_letter_queues`` (keyed by construct id, for monitoring) of the
    functions in ``ASYNC_FAILURES``.

    Grants follow the settings model: a function whose settings name ``records_table`` may read
    and write records, one whose settings name ``audit_table`` may append and read audit events,
    one whose settings name ``archive_bucket`` consumes the audit stream into the archive, one
    whose settings name ``event_bus_name`` may put events on the platform bus; ``change_publisher``
    consumes the records stream. One whose settings name ``mpi_table`` reads the patient index and
    its key (``change_publisher``, which indexes every committed Patient version, also writes it);
    one whose settings name ``subscription_dead_letter_queue_url`` (``sharing_notifier``) reads the
    tenants' Subscription signing secrets and dead-letters undelivered notifications. The others
    touch no data. ``gateway_audit`` (``TENANT_DIRECTORY_ONLY``) may read tenant registrations and
    append to the audit trail, nothing else. In ``cognito`` mode ``token_customizer`` becomes the
    user pool's pre token generation trigger and may read the pool's app client names
    (``Identity.attach_token_customizer``); without a pool it is not created
    (``deployed_functions``). Grants that name the lab-order state machine are added by
    ``Workflows`` once it exists (the stack wires them).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        project_root: Path,
        identity: Identity,
        records: ClinicalStore,
        audit: AuditTrail,
        logs_key: kms.IKey,
        messaging_key: kms.IKey,
        events: Events,
        documents: DocumentStore | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY

        self.layer = lambda_.LayerVersion(
            self,
            "CoreLayer",
            code=layer_code(
                project_root / "layers" / "ehr", runtime=RUNTIME.name, architecture=ARCHITECTURE.name
            ),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            description="The ehr domain core and its locked runtime dependencies.",
        )
        code = function_code(project_root / "functions")

        available: dict[str, str | None] = {
            "environment": config.name,
            **identity.settings(),
            "records_table": records.records_table.table_name,
            "audit_table": audit.audit_table.table_name,
            "archive_bucket": audit.archive_bucket.bucket_name,
            "cursor_secret_name": records.cursor_secret.secret_name,
            "documents_bucket": documents.bucket.bucket_name if documents else None,
            "documents_key_arn": documents.key.key_arn if documents else None,
            "event_bus_name": events.bus.event_bus_name,
            "mpi_table": sharing.mpi_table.table_name if sharing else None,
            "mpi_key_secret_name": sharing.mpi_key_secret.secret_name if sharing else None,
            "subscription_dead_letter_queue_url": sharing.subscription_dead_letters.queue_url
            if sharing
            else None,
            "subscription_endpoints": config.subscription_endpoints_json(),
        }

        self.functions: dict[str, lambda_.Function] = {}
        self.roles: dict[str, iam.Role] = {}
        self.policies: dict[str, iam.ManagedPolicy] = {}
        self.log_groups: dict[str, logs.LogGroup] = {}
        self.async_configs: dict[str, lambda_.EventInvokeConfig] = {}
        self.dead_letter_queues: dict[str, sqs.IQueue] = {}

        for fn in deployed_functions(identity):
            model = SETTINGS[fn]
            fid = pascal(fn)
            log_group = logs.LogGroup(
                self,
                f"{fid}LogGroup",
                retention=logs.RetentionDays[RETENTION_DAYS[config.log_retention_days]],
                encryption_key=logs_key,
                removal_policy=removal,
            )
            role = iam.Role(
                self,
                f"{fid}Role",
                assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                description=f"Execution role of the {fn} function (its policy lists everything it may do).",
            )
            policy = iam.ManagedPolicy(
                self,
                f"{fid}Policy",
                description=f"Permissions of the {fn} function.",
                roles=[role],
                statements=[
                    iam.PolicyStatement(
                        sid="WriteOwnLogs",
                        actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                        resources=[log_group.log_group_arn],
                    ),
                    iam.PolicyStatement(
                        sid="SendTraces",
                        actions=["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
                        resources=["*"],
                    ),
                ],
            )
            acknowledge(
                policy,
                f"X-Ray's PutTraceSegments and PutTelemetryRecords support no resource-level "
                f"permissions; '*' is the only resource they accept (active tracing of {fn}).",
                "AwsSolutions-IAM5[Resource::*]",
            )
            if fn in TENANT_DIRECTORY_ONLY:
                records.grant_tenant_directory(policy)
                audit.grant_append(policy)
            else:
                if "records_table" in model.model_fields:
                    records.grant_read_write(policy)
                if "audit_table" in model.model_fields:
                    audit.grant_append(policy)
                    audit.grant_read(policy)
            if "cursor_secret_name" in model.model_fields:
                records.grant_cursor_secret(policy)
            if documents is not None and "documents_bucket" in model.model_fields:
                documents.grant_documents(policy, write=fn != names.FN_DOCUMENT_VERIFIER)
            if "event_bus_name" in model.model_fields:
                events.grant_put_events(policy)
            if sharing is not None and "mpi_table" in model.model_fields:
                sharing.grant_index(policy, write=fn == names.FN_CHANGE_PUBLISHER)
            if sharing is not None and "subscription_dead_letter_queue_url" in model.model_fields:
                sharing.grant_subscription_secrets(policy)
                sharing.grant_subscription_dead_letters(policy)

            values = {k: v for k, v in available.items() if k in model.model_fields}
            function = lambda_.Function(
                self,
                fid,
                description=f"{names.STACK_NAME} {fn}: invoked by {INVOKED_BY[fn]}.",
                runtime=RUNTIME,
                architecture=ARCHITECTURE,
                code=code,
                handler=names.handler_path(fn),
                layers=[self.layer],
                # The role's permissions are exactly its policy: CDK may not add any of its own.
                role=role.without_policy_updates(),
                log_group=log_group,
                tracing=lambda_.Tracing.ACTIVE,
                memory_size=config.function_memory_mb,
                timeout=Duration.seconds(
                    min(config.timeout_seconds(fn), COGNITO_TRIGGER_TIMEOUT_SECONDS)
                    if fn in COGNITO_ONLY
                    else config.timeout_seconds(fn)
                ),
                reserved_concurrent_executions=config.reserved_concurrency.get(fn),
                environment={**environment_for(model, **values), **POWERTOOLS_ENVIRONMENT},
            )
            if fn == names.FN_TOKEN_CUSTOMIZER:
                # No DependsOn on the policy here: the pool invokes the function and the policy names
                # the pool, so pool -> function -> policy -> pool would be a CloudFormation cycle.
                identity.attach_token_customizer(function, policy)
            else:
                function.node.add_dependency(policy)
            if "archive_bucket" in model.model_fields:
                audit.attach_archiver(function, policy)
            if documents is not None and fn == names.FN_DOCUMENT_VERIFIER:
                documents.attach_verifier(function, policy)
            if fn == names.FN_CHANGE_PUBLISHER:
                records.attach_change_publisher(function, policy)
            if fn in ASYNC_FAILURES:
                self._configure_async(fn, function, policy, key=messaging_key, config=config)
            self._acknowledge(function, fn, config)

            self.functions[fn] = function
            self.roles[fn] = role
            self.policies[fn] = policy
            self.log_groups[fn] = log_group

    def _configure_async(
        self,
        fn: str,
        function: lambda_.Function,
        policy: iam.ManagedPolicy,
        *,
        key: kms.IKey,
        config: EnvironmentConfig,
    ) -> None:
        """Retries and an on-failure SQS destination for ``fn``'s asynchronous invocations."""
        fid = pascal(fn)
        queue = dead_letter_queue(self, f"{fid}DeadLetters", holds=ASYNC_FAILURES[fn], key=key, config=config)
        policy.add_statements(
            iam.PolicyStatement(
                sid="SendFailedAsyncEvents", actions=list(DEAD_LETTER_ACTIONS), resources=[queue.queue_arn]
            ),
            via_service(key, "sqs", DEAD_LETTER_KEY_ACTIONS),
        )
        # The destination's grant would go to the role, which takes none: the policy above has it.
        invoke_config = lambda_.EventInvokeConfig(
            self,
            f"{fid}AsyncInvokeConfig",
            function=function,
            retry_attempts=ASYNC_RETRY_ATTEMPTS,
            max_event_age=ASYNC_MAX_EVENT_AGE,
            on_failure=destinations.SqsDestination(queue),
        )
        # Lambda checks that the role may send to the destination when the config is created.
        invoke_config.node.add_dependency(policy)
        self.async_configs[fn] = invoke_config
        self.dead_letter_queues[fid] = queue

    @staticmethod
    def _acknowledge(function: lambda_.Function, fn: str, config: EnvironmentConfig) -> None:
        if fn in ASYNC_FAILURES:
            acknowledge(
                function,
                f"The {fn} function is invoked by {INVOKED_BY[fn]}. A failed asynchronous event is "
                f"retried {ASYNC_RETRY_ATTEMPTS} times, then sent with its error to that SQS queue through "
                "an EventInvokeConfig on-failure destination, which keeps more context than a Lambda DLQ "
                "(DeadLetterConfig) would; synchronous failures go back to the caller.",
                "HIPAA.Security-LambdaDLQ",
                "Serverless-LambdaDLQ",
            )
        elif fn != names.FN_DOCUMENT_VERIFIER:  # invoked asynchronously, with a dead-letter queue
            acknowledge(
                function,
                f"The {fn} function is invoked only synchronously, by {INVOKED_BY[fn]}; a Lambda "
                "dead-letter queue receives failed asynchronous invocations only, so it would stay "
                "empty. Failures are returned to the caller and alarmed on (Errors metric).",
                "HIPAA.Security-LambdaDLQ",
                "Serverless-LambdaDLQ",
            )
        acknowledge(
            function,
            f"The {fn} function calls {REACHES[fn]}; it exposes no network-reachable resource a VPC "
            "would shield, and inside a VPC it would need a NAT gateway or interface endpoints to "
            "reach the same services" + (f" ({OPEN_EGRESS[fn]})." if fn in OPEN_EGRESS else "."),
            "HIPAA.Security-LambdaInsideVPC",
        )
        if fn not in config.reserved_concurrency:
            acknowledge(
                function,
                f"Environment '{config.name}' reserves no concurrency for {fn} (reserved_concurrency "
                "in cdk.json): new accounts have a concurrency quota too small to reserve from; the "
                "stage throttle limits the load instead.",
                "HIPAA.Security-LambdaConcurrency",
            )
