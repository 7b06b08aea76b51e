"""DynamoDB tables built from the core's ``TableDefinition`` (``ehr.store.schema``), never restated."""

from __future__ import annotations

from typing import Final

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from ehr.store.schema import TableDefinition, tenant_key_prefix
from infra.config import EnvironmentConfig

_ATTRIBUTE_TYPES: Final = {
    "S": dynamodb.AttributeType.STRING,
    "N": dynamodb.AttributeType.NUMBER,
    "B": dynamodb.AttributeType.BINARY,
}

# Every partition key has the shape ``T#{tenant}#...`` (``tenant_key_prefix``). IAM can insist on
# that shape, but not on *which* tenant: the role serves every tenant (see docs/infrastructure.md).
TENANT_KEY_PATTERN: Final = f"{tenant_key_prefix('*')}*"
LEADING_KEYS_CONDITION: Final = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [TENANT_KEY_PATTERN]}}


def build_table(
    scope: Construct, definition: TableDefinition, *, key: kms.IKey, config: EnvironmentConfig
) -> dynamodb.Table:
    """A table with the definition's keys and stream, on-demand, PITR, CMK encryption."""
    key_type = _ATTRIBUTE_TYPES[definition.key_type]
    return dynamodb.Table(
        scope,
        definition.logical_id,
        partition_key=dynamodb.Attribute(name=definition.partition_key, type=key_type),
        sort_key=dynamodb.Attribute(name=definition.sort_key, type=key_type) if definition.sort_key else None,
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
        encryption_key=key,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        deletion_protection=config.deletion_protection,
        removal_policy=RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY,
        stream=dynamodb.StreamViewType[definition.stream] if definition.stream else None,
        time_to_live_attribute=definition.ttl_attribute,
    )


def table_key_statement(table: dynamodb.Table, key: kms.IKey, actions: list[str]) -> iam.PolicyStatement:
    """Use of the table's CMK, only through DynamoDB in this region."""
    stack = Stack.of(table)
    return iam.PolicyStatement(
        actions=actions,
        resources=[key.key_arn],
        conditions={"StringEquals": {"kms:ViaService": f"dynamodb.{stack.region}.{stack.url_suffix}"}},
    )
