"""Item keys of the records table (DESIGN.md "Data layout"); every partition key starts with the tenant."""

from __future__ import annotations

import hashlib
from typing import Final

from ehr.store.schema import tenant_key_prefix

CURRENT: Final = "CUR"
TX_RECORD: Final = "TX"
MAX_KEY_PART: Final = 512  # longer values are replaced by a digest (equality still exact)
MAX_SORT_PART: Final = 600  # longer sort values are cut (order kept; matches() re-checks)


def _bounded(value: str) -> str:
    if len(value.encode("utf-8")) <= MAX_KEY_PART:
        return value
    return "~sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def bounded_sort(value: str) -> str:
    encoded = value.encode("utf-8")
    if len(encoded) <= MAX_SORT_PART:
        return value
    return encoded[:MAX_SORT_PART].decode("utf-8", errors="ignore")


def resource_pk(tenant: str, resource_type: str, resource_id: str) -> str:
    return f"{tenant_key_prefix(tenant)}{resource_type}#{resource_id}"


def version_sk(version: int) -> str:
    return f"V#{version:012d}"


def index_pk(tenant: str, resource_type: str, param: str, key: str) -> str:
    return f"{tenant_key_prefix(tenant)}IX#{resource_type}#{param}#{_bounded(key)}"


def index_sk(sort: str, resource_id: str) -> str:
    return f"{bounded_sort(sort)}#{resource_id}"


def id_from_index_sk(sk: str) -> str:
    return sk.rsplit("#", 1)[1]


def compartment_pk(tenant: str, patient_id: str) -> str:
    return f"{tenant_key_prefix(tenant)}PT#{patient_id}"


def compartment_sk(resource_type: str, resource_id: str) -> str:
    return f"{resource_type}#{resource_id}"


def type_history_pk(tenant: str, resource_type: str) -> str:
    return f"{tenant_key_prefix(tenant)}HX#{resource_type}"


def type_history_sk(last_updated: str, resource_id: str, version: int) -> str:
    return f"{last_updated}#{resource_id}#{version:012d}"


def tx_pk(tenant: str, tx_id: str) -> str:
    return f"{tenant_key_prefix(tenant)}TX#{tx_id}"
