"""DynamoDB table shapes: the single definition used by CDK, the local emulator and tests.

Every key of the records and audit tables starts with the tenant (``T#{tenant}#…``) so isolation
holds by partition key and can be enforced by IAM with ``dynamodb:LeadingKeys`` (see
``tenant_key_prefix``). The patient index (``MPI_TABLE``) is the one deliberate exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

KeyType = Literal["S", "N", "B"]


@dataclass(frozen=True)
class TableDefinition:
    """A table's key schema and stream settings (capacity, encryption and PITR are infra's)."""

    logical_id: str
    partition_key: str
    sort_key: str | None
    key_type: KeyType = "S"
    stream: Literal["NEW_AND_OLD_IMAGES", "NEW_IMAGE", None] = None
    ttl_attribute: str | None = None

    def key_schema(self) -> list[dict[str, str]]:
        schema = [{"AttributeName": self.partition_key, "KeyType": "HASH"}]
        if self.sort_key:
            schema.append({"AttributeName": self.sort_key, "KeyType": "RANGE"})
        return schema

    def attribute_definitions(self) -> list[dict[str, str]]:
        return [
            {"AttributeName": name, "AttributeType": self.key_type}
            for name in (self.partition_key, self.sort_key)
            if name
        ]

    def create_table_kwargs(self, table_name: str) -> dict[str, Any]:
        """Arguments for ``boto3 create_table``: how local mode and tests build the table."""
        kwargs: dict[str, Any] = {
            "TableName": table_name,
            "KeySchema": self.key_schema(),
            "AttributeDefinitions": self.attribute_definitions(),
            "BillingMode": "PAY_PER_REQUEST",
        }
        if self.stream:
            kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": self.stream}
        return kwargs


# Clinical records: resource versions, the current version, search-index items, compartments,
# and per-tenant registry items (DESIGN.md "Data layout").
RECORDS_TABLE: Final = TableDefinition(
    logical_id="RecordsTable",
    partition_key="pk",
    sort_key="sk",
    stream="NEW_AND_OLD_IMAGES",
)

# Append-only audit trail (FHIR AuditEvent), partitioned per tenant.
AUDIT_TABLE: Final = TableDefinition(
    logical_id="AuditTable",
    partition_key="pk",
    sort_key="sk",
    stream="NEW_IMAGE",  # copied into the Object Lock archive (ehr.audit_archive)
)

# The master patient index (ehr.sharing.mpi, ehr.store.mpi_dynamo): the one deliberately
# cross-tenant store, so its keys do NOT start with a tenant — matching a patient across facilities
# means looking up every tenant's records by the same blocking key. It holds no PHI and no chart:
# only keyed HMAC tokens of normalised identifiers and demographics (and keyed Bloom filters of
# name bigrams), tenant and patient ids, versions and enterprise ids. Without the MPI key a token
# cannot be turned back into a name, date, phone or postal code. Items: ``P#{tenant}#{id}``/``CUR``
# (a record's tokens), ``BK#{token}``/``{tenant}#{id}`` (blocking keys), ``E#{enterprise id}``/
# ``{tenant}#{id}`` (a person's records). Access to it goes through the MPI only, never a tenant's
# request path.
MPI_TABLE: Final = TableDefinition(
    logical_id="PatientIndexTable",
    partition_key="pk",
    sort_key="sk",
)

TABLES: Final = (RECORDS_TABLE, AUDIT_TABLE, MPI_TABLE)


def tenant_key_prefix(tenant: str) -> str:
    """The prefix every partition key of a tenant starts with."""
    return f"T#{tenant}#"


def tenant_registry_key(tenant: str) -> dict[str, str]:
    """Key of a tenant's registration item in the records table."""
    return {"pk": f"{tenant_key_prefix(tenant)}TENANT", "sk": "TENANT"}
