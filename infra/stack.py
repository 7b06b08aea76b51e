"""The one stack of the platform: it composes the capability constructs and owns nothing itself."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, Environment, Stack, Tags
from constructs import Construct

from ehr import names
from infra.config import EnvironmentConfig
from infra.constructs.api import Api
from infra.constructs.audit import AuditTrail
from infra.constructs.backups import Backups
from infra.constructs.clinical_store import ClinicalStore
from infra.constructs.compute import Compute
from infra.constructs.documents import DocumentStore
from infra.constructs.encryption import Encryption
from infra.constructs.events import Events
from infra.constructs.identity import Identity
from infra.constructs.monitoring import Monitoring
from infra.constructs.sharing import Sharing
from infra.constructs.workflows import Workflows

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class EhrStack(Stack):
    """Everything one deployment of the EHR needs, in one stack configured by ``config``."""

    def __init__(
        self, scope: Construct, *, config: EnvironmentConfig, project_root: Path = PROJECT_ROOT
    ) -> None:
        super().__init__(
            scope,
            config.stack_name,
            stack_name=config.stack_name,
            description=f"{names.STACK_NAME} ({config.name}): serverless multi-tenant EHR, FHIR R4 API.",
            env=Environment(account=config.account, region=config.region)
            if config.account or config.region
            else None,
            termination_protection=config.retain,
        )
        self.config = config
        Tags.of(self).add("Application", names.STACK_NAME)
        Tags.of(self).add("Environment", config.name)

        self.encryption = Encryption(self, "Encryption", config=config)
        self.clinical_store = ClinicalStore(
            self, "ClinicalStore", key=self.encryption.data_key, config=config
        )
        self.audit = AuditTrail(self, "Audit", key=self.encryption.data_key, config=config)
        self.sharing = Sharing(
            self,
            "Sharing",
            key=self.encryption.data_key,
            messaging_key=self.encryption.messaging_key,
            config=config,
        )
        self.backups = Backups(
            self,
            "Backups",
            tables=[self.clinical_store.records_table, self.audit.audit_table, self.sharing.mpi_table],
            key=self.encryption.data_key,
            config=config,
        )
        self.documents = DocumentStore(
            self,
            "Documents",
            key=self.encryption.data_key,
            config=config,
            messaging_key=self.encryption.messaging_key,
        )
        self.identity = Identity(self, "Identity", config=config)
        self.events = Events(self, "Events", config=config, messaging_key=self.encryption.messaging_key)
        self.compute = Compute(
            self,
            "Functions",
            config=config,
            project_root=project_root,
            identity=self.identity,
            records=self.clinical_store,
            audit=self.audit,
            logs_key=self.encryption.logs_key,
            messaging_key=self.encryption.messaging_key,
            events=self.events,
            documents=self.documents,
            sharing=self.sharing,
        )
        self.api = Api(
            self, "Api", config=config, functions=self.compute.functions, logs_key=self.encryption.logs_key
        )
        self.workflows = Workflows(
            self,
            "Workflows",
            config=config,
            project_root=project_root,
            bus=self.events.bus,
            logs_key=self.encryption.logs_key,
            messaging_key=self.encryption.messaging_key,
            lab_workflow=self.compute.functions[names.FN_LAB_WORKFLOW],
        )
        # The workflow's own steps, and the HL7 endpoint when a result arrives, resume a waiting
        # execution; only the workflow's steps sign orders with the partners' secrets.
        for fn in (names.FN_LAB_WORKFLOW, names.FN_HL7V2_INBOUND):
            self.workflows.grant_task_response(self.compute.policies[fn])
        self.workflows.grant_partner_secrets(self.compute.policies[names.FN_LAB_WORKFLOW])
        self.events.route(
            state_machines={"lab_order_state_machine": self.workflows.lab_order},
            functions={
                "lab_workflow_function": self.compute.functions[names.FN_LAB_WORKFLOW],
                "sharing_notifier_function": self.compute.functions[names.FN_SHARING_NOTIFIER],
            },
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            config=config,
            messaging_key=self.encryption.messaging_key,
            rest_api=self.api.rest_api,
            access_log_group=self.api.access_log_group,
            functions=self.compute.functions,
            state_machines={"LabOrder": self.workflows.lab_order},
            dead_letter_queues={
                **self.events.dead_letter_queues,
                **self.audit.dead_letter_queues,
                **self.documents.dead_letter_queues,
                **self.clinical_store.dead_letter_queues,
                **self.compute.dead_letter_queues,
                **self.workflows.dead_letter_queues,
                **self.sharing.dead_letter_queues,
            },
        )

        CfnOutput(self, "ApiUrl", value=self.api.url, description="Base URL of the API stage.")
        CfnOutput(self, "FhirBaseUrlTemplate", value=f"{self.api.url}tenants/{{tenant}}/fhir")
        CfnOutput(self, "TokenIssuer", value=self.identity.issuer)
        if self.identity.token_endpoint:
            CfnOutput(self, "TokenEndpoint", value=self.identity.token_endpoint)
        if self.identity.client is not None:
            CfnOutput(self, "SystemClientId", value=self.identity.client.user_pool_client_id)
        CfnOutput(self, "DocumentsBucket", value=self.documents.bucket.bucket_name)
        CfnOutput(self, "EventBusName", value=self.events.bus.event_bus_name)
        CfnOutput(
            self,
            "SubscriptionDeadLetterQueueUrl",
            value=self.sharing.subscription_dead_letters.queue_url,
            description="Subscription notifications that could not be delivered (ids only), for redrive.",
        )
        CfnOutput(
            self,
            "SubscriptionSecretNamePattern",
            value=f"{names.SUBSCRIPTION_SECRET_PREFIX}{{tenant}}",
            description="Name of each tenant's Secrets Manager secret holding its Subscription signing key.",
        )
