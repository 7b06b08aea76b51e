"""AWS emulated in-process with moto, built from the same definitions as the CDK stack.

Tables come from ``ehr.store.schema``, the bus and rules from ``ehr.events.schema``, the
state machine from ``statemachines/lab_order.asl.json``: nothing here restates a key schema,
a pattern or a flow.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws

from ehr import names
from ehr.audit_archive import ARCHIVE_LOCK_MODE, ARCHIVE_RETENTION_DAYS
from ehr.events import schema as events
from ehr.store import schema as store
from infra.local import moto_fast_paths
from infra.local.s3_server import LocalS3Server

REPO_ROOT = Path(__file__).resolve().parents[2]
MOTO_CONFIG: dict[str, Any] = {
    "stepfunctions": {"execute_state_machine": True},
    "lambda": {"use_docker": False},
    # Services of this machine's own (DynamoDB Local, a moto server) are reached for real.
    "core": {"passthrough": {"urls": [r"https?://(127\.0\.0\.1|localhost)(:\d+)?(/.*)?$"]}},
}
_SUBSTITUTION = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def render_asl(path: Path, substitutions: dict[str, str]) -> str:
    """The ASL text with every ``${Name}`` replaced, as CDK's definition_substitutions does."""
    text = path.read_text(encoding="utf-8")
    missing = sorted(set(_SUBSTITUTION.findall(text)) - set(substitutions))
    if missing:
        raise KeyError(f"{path.name} needs substitutions for {', '.join(missing)}")
    rendered = _SUBSTITUTION.sub(lambda m: substitutions[m.group(1)], text)
    json.loads(rendered)  # still valid JSON
    return rendered


@dataclass
class LocalResources:
    region: str
    records_table: str
    audit_table: str
    documents_bucket: str
    data_key_arn: str
    event_bus_name: str
    event_bus_arn: str
    dead_letter_queue_url: str
    lab_order_state_machine_arn: str
    cursor_secret_name: str
    archive_bucket: str
    s3_endpoint: str = ""  # the loopback S3 server (presigned URLs), see infra/local/s3_server.py
    lab_workflow_function_arn: str = ""
    lab_order_dead_letter_queue_url: str = ""
    # Cross-facility sharing: the master patient index, its tokenisation key, and where failed
    # Subscription notifications go.
    mpi_table: str = ""
    mpi_key_secret_name: str = ""
    subscription_dead_letter_queue_url: str = ""
    # Emulated Lambda function name -> the folder under functions/ whose handler serves it.
    function_names: dict[str, str] = field(default_factory=dict)


class LocalCloud:
    """Starts moto, creates the platform's AWS resources, and stops cleanly."""

    ACCOUNT = "123456789012"

    def __init__(self, *, region: str = "us-east-1", prefix: str = "ehr-local") -> None:
        self.region = region
        self.prefix = prefix
        self._mock = mock_aws(config=MOTO_CONFIG)
        self._saved_env: dict[str, str | None] = {}
        self._release_fast_paths: Callable[[], None] | None = None
        self.resources: LocalResources | None = None
        self.s3_server: LocalS3Server | None = None

    def __enter__(self) -> LocalResources:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalResources:
        # Fake credentials keep any request from leaving the machine even if moto were bypassed.
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self._mock.start()
        self._release_fast_paths = moto_fast_paths.install()
        self.resources = self._create()
        # Presigned URLs need a real endpoint: moto's server on loopback, over the same backends.
        self.s3_server = LocalS3Server(region=self.region, account=self.ACCOUNT)
        self.resources.s3_endpoint = self.s3_server.start()
        return self.resources

    def stop(self) -> None:
        if self.s3_server is not None:
            self.s3_server.stop()
            self.s3_server = None
        self._mock.stop()
        if self._release_fast_paths is not None:
            self._release_fast_paths()
            self._release_fast_paths = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=self.region)  # type: ignore[call-overload]

    def _create(self) -> LocalResources:
        kms = self.client("kms")
        key_arn = kms.create_key(Description="ehr local data key")["KeyMetadata"]["Arn"]
        kms.enable_key_rotation(KeyId=key_arn)

        dynamodb = self.client("dynamodb")
        table_names = {}
        for definition in store.TABLES:
            table_name = f"{self.prefix}-{definition.logical_id}"
            dynamodb.create_table(
                **definition.create_table_kwargs(table_name),
                SSESpecification={"Enabled": True, "SSEType": "KMS", "KMSMasterKeyId": key_arn},
            )
            dynamodb.update_continuous_backups(
                TableName=table_name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )
            table_names[definition.logical_id] = table_name

        s3 = self.client("s3")
        bucket = f"{self.prefix}-documents"
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": key_arn,
                        },
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )

        # The audit archive: Object Lock (which turns versioning on) with the stack's default retention.
        archive_bucket = f"{self.prefix}-audit-archive"
        s3.create_bucket(Bucket=archive_bucket, ObjectLockEnabledForBucket=True)
        s3.put_object_lock_configuration(
            Bucket=archive_bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": ARCHIVE_LOCK_MODE, "Days": ARCHIVE_RETENTION_DAYS}},
            },
        )
        s3.put_bucket_encryption(
            Bucket=archive_bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {
                            "SSEAlgorithm": "aws:kms",
                            "KMSMasterKeyID": key_arn,
                        },
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )

        sqs = self.client("sqs")
        dlq_url = sqs.create_queue(QueueName=f"{self.prefix}-events-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]

        eventbridge = self.client("events")
        bus_name = f"{self.prefix}-events"
        bus_arn = eventbridge.create_event_bus(Name=bus_name)["EventBusArn"]
        eventbridge.create_archive(
            ArchiveName=f"{self.prefix}-events-archive",
            EventSourceArn=bus_arn,
            RetentionDays=events.ARCHIVE_RETENTION_DAYS,
        )

        role_arn = self.client("iam").create_role(
            RoleName=f"{self.prefix}-workflows",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        # The functions the state machine and the rules invoke exist in the emulated Lambda; their
        # invocations run the real handlers (infra/local/bridges.py).
        function_names: dict[str, str] = {}
        function_arns: dict[str, str] = {}
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("README", "served in-process by ehr local")
        for function in (names.FN_LAB_WORKFLOW, names.FN_SHARING_NOTIFIER):
            name = f"{self.prefix}-{function}"
            function_arns[function] = self.client("lambda").create_function(
                FunctionName=name,
                Runtime="python3.12",
                Role=role_arn,
                Handler=names.handler_path(function),
                Code={"ZipFile": code.getvalue()},
            )["FunctionArn"]
            function_names[name] = function
        lab_dlq_url = sqs.create_queue(QueueName=f"{self.prefix}-lab-order-dlq")["QueueUrl"]
        definition = render_asl(
            REPO_ROOT / names.LAB_ORDER_ASL,
            {
                "EventBusName": bus_name,
                "EventSource": names.EVENT_SOURCE,
                "LabWorkflowFunctionArn": function_arns[names.FN_LAB_WORKFLOW],
                "DeadLetterQueueUrl": lab_dlq_url,
            },
        )
        state_machine_arn = self.client("stepfunctions").create_state_machine(
            name=f"{self.prefix}-lab-order", definition=definition, roleArn=role_arn, type="STANDARD"
        )["stateMachineArn"]

        targets = {
            "lab_order_state_machine": state_machine_arn,
            "lab_workflow_function": function_arns[names.FN_LAB_WORKFLOW],
            "sharing_notifier_function": function_arns[names.FN_SHARING_NOTIFIER],
        }
        for rule in events.RULES:
            eventbridge.put_rule(
                Name=f"{self.prefix}-{rule.logical_id}",
                EventBusName=bus_name,
                EventPattern=json.dumps(rule.event_pattern),
                Description=rule.description,
                State="ENABLED",
            )
            eventbridge.put_targets(
                Rule=f"{self.prefix}-{rule.logical_id}",
                EventBusName=bus_name,
                Targets=[
                    {
                        "Id": rule.target,
                        "Arn": targets[rule.target],
                        "RoleArn": role_arn,
                        "DeadLetterConfig": {"Arn": dlq_arn},
                        "RetryPolicy": {"MaximumRetryAttempts": 8, "MaximumEventAgeInSeconds": 3600},
                    }
                ],
            )

        cursor_secret = f"{self.prefix}/cursor-key"
        self.client("secretsmanager").create_secret(
            Name=cursor_secret, SecretString=secrets.token_hex(32), KmsKeyId=key_arn
        )
        mpi_key_secret = f"{self.prefix}/mpi-key"
        self.client("secretsmanager").create_secret(
            Name=mpi_key_secret, SecretString=secrets.token_hex(32), KmsKeyId=key_arn
        )
        subscription_dlq_url = sqs.create_queue(QueueName=f"{self.prefix}-subscription-dlq")["QueueUrl"]

        return LocalResources(
            region=self.region,
            records_table=table_names[store.RECORDS_TABLE.logical_id],
            audit_table=table_names[store.AUDIT_TABLE.logical_id],
            documents_bucket=bucket,
            data_key_arn=key_arn,
            event_bus_name=bus_name,
            event_bus_arn=bus_arn,
            dead_letter_queue_url=dlq_url,
            lab_order_state_machine_arn=state_machine_arn,
            cursor_secret_name=cursor_secret,
            archive_bucket=archive_bucket,
            lab_workflow_function_arn=function_arns[names.FN_LAB_WORKFLOW],
            lab_order_dead_letter_queue_url=lab_dlq_url,
            mpi_table=table_names[store.MPI_TABLE.logical_id],
            mpi_key_secret_name=mpi_key_secret,
            subscription_dead_letter_queue_url=subscription_dlq_url,
            function_names=function_names,
        )
