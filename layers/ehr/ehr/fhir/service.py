"""FHIR interactions on the record store: create, read, vread, update, patch, delete, history.

Transport-free: the HTTP layer turns requests into these calls and their results into
responses. Search lives in ``ehr.fhir.searching``, batch/transaction in ``ehr.fhir.bundles``.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import jsonpatch

from ehr.fhir.outcome import (
    OperationOutcomeError,
    conflict,
    gone,
    invalid,
    not_found,
    precondition_failed,
)
from ehr.fhir.search.extract import compartment_patients, index_terms
from ehr.fhir.validation import known_resource_types, validate_resource
from ehr.security.scopes import AccessPolicy, require
from ehr.store.dynamo import now_instant
from ehr.store.ports import ConflictError, IndexEntry, RecordStore, StoredResource, TooLargeError, Write

if TYPE_CHECKING:
    from ehr.documents.service import DocumentService
    from ehr.sharing.subscriptions import EndpointPolicy

HISTORY_DEFAULT_COUNT: Final = 50
HISTORY_MAX_COUNT: Final = 1000

Outcome = Literal["created", "updated", "unchanged", "deleted"]


@dataclass(frozen=True)
class WriteResult:
    outcome: Outcome
    stored: StoredResource | None

    @property
    def status(self) -> int:
        return {"created": 201, "updated": 200, "unchanged": 200, "deleted": 204}[self.outcome]


def check_type(resource_type: str) -> None:
    if resource_type not in known_resource_types():
        raise not_found(f"Unknown resource type {resource_type[:64]!r}.")


def parse_version(value: str, *, expression: str = "vid") -> int:
    text = value.strip()
    if text.startswith('W/"') and text.endswith('"'):
        text = text[3:-1]
    elif text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    if not text.isdigit() or len(text) > 12:
        raise invalid(f"{value[:40]!r} is not a version id.", expression=[expression])
    return int(text)


class FhirService:
    """One tenant-agnostic service; every call names the tenant its caller was authorised for."""

    def __init__(
        self,
        store: RecordStore,
        *,
        clock: Callable[[], str] = now_instant,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        documents: DocumentService | None = None,
        subscriptions: EndpointPolicy | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.new_id = new_id
        # DocumentReference attachments (ehr.documents): every write path (create, update, patch,
        # batch and transaction entries) goes through ``prepare``, so each gets the same rules.
        self.documents = documents
        # Subscriptions (ehr.sharing.subscriptions): a client's create/update is validated (channel,
        # criteria, endpoint on the tenant's allow-list) and activated; system writes (the
        # notifier recording a delivery failure) skip it.
        self.subscriptions = subscriptions

    # -- reads ---------------------------------------------------------------------------------

    def read(
        self, tenant: str, resource_type: str, resource_id: str, *, access: AccessPolicy | None = None
    ) -> StoredResource:
        check_type(resource_type)
        if access is not None:
            require(access.identity, "r", resource_type)
        stored = self.store.current(tenant, resource_type, resource_id)
        if stored is None:
            raise not_found(f"{resource_type}/{resource_id} is not known.")
        if access is not None:
            access.check("r", stored)
        if stored.deleted:
            raise gone(f"{resource_type}/{resource_id} was deleted.")
        return stored

    def vread(
        self,
        tenant: str,
        resource_type: str,
        resource_id: str,
        version_id: str,
        *,
        access: AccessPolicy | None = None,
    ) -> StoredResource:
        check_type(resource_type)
        version = parse_version(version_id)
        if access is not None:
            # Permission follows the resource as it is now (its compartment, its granular match).
            current = self.store.current(tenant, resource_type, resource_id)
            require(access.identity, "r", resource_type)
            if current is not None:
                access.check("r", current)
        stored = self.store.version(tenant, resource_type, resource_id, version)
        if stored is None:
            raise not_found(f"{resource_type}/{resource_id} has no version {version}.")
        if stored.deleted:
            raise gone(f"Version {version} of {resource_type}/{resource_id} is a deletion.")
        return stored

    # -- writes --------------------------------------------------------------------------------

    def prepare(
        self,
        tenant: str,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any] | None,
        previous: StoredResource | None,
        *,
        delete: bool = False,
        last_updated: str | None = None,
        access: AccessPolicy | None = None,
    ) -> Write:
        """A Write with server-set id and meta, and the index entries and compartments it owns.

        With ``access``, the caller's scopes must permit the change to what exists (update,
        delete) and to what will exist (create, update): a patient-context token can neither
        touch another patient's resource nor move one out of or into its patient's compartment.
        """
        version = (previous.version + 1) if previous else 1
        now = last_updated or self.clock()
        exists = previous is not None and not previous.deleted
        if delete or resource is None:
            if access is not None and previous is not None and exists:
                access.check("d", previous)
            return Write(
                resource_type, resource_id, version, "delete", now, None, frozenset(), frozenset(), previous
            )
        body = dict(resource)
        body["id"] = resource_id
        meta = dict(body.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = now
        body["meta"] = meta
        entries = frozenset(IndexEntry(t.param, t.key, t.sort, t.high, t.text) for t in index_terms(body))
        compartments = frozenset(compartment_patients(body))
        operation: Literal["create", "update"] = "update" if exists else "create"
        write = Write(
            resource_type, resource_id, version, operation, now, body, entries, compartments, previous
        )
        if access is not None:
            if exists and previous is not None:
                access.check("u", previous)
            access.check("u" if exists else "c", stored_from_write(write))
        if self.documents is not None and resource_type == "DocumentReference":
            # After the scope checks, so refused writes store no bytes.
            body = self.documents.prepare_write(tenant, resource_id, body, previous)
            entries = frozenset(IndexEntry(t.param, t.key, t.sort, t.high, t.text) for t in index_terms(body))
            write = Write(
                resource_type, resource_id, version, operation, now, body, entries, compartments, previous
            )
        if self.subscriptions is not None and resource_type == "Subscription" and access is not None:
            from ehr.sharing.subscriptions import prepare_subscription

            body = prepare_subscription(
                tenant, body, previous.body if previous is not None else None, self.subscriptions
            )
            entries = frozenset(IndexEntry(t.param, t.key, t.sort, t.high, t.text) for t in index_terms(body))
            write = Write(
                resource_type, resource_id, version, operation, now, body, entries, compartments, previous
            )
        return write

    def commit(self, tenant: str, writes: Sequence[Write], *, precondition: bool = False) -> None:
        try:
            self.store.commit(tenant, writes)
        except ConflictError as error:
            message = f"{error.reference} {error.reason}; read it again and retry."
            raise (precondition_failed(message) if precondition else conflict(message)) from error
        except TooLargeError as error:
            raise OperationOutcomeError(
                status=413, issues=invalid(str(error), code="too-long").issues
            ) from error

    def create(
        self, tenant: str, resource_type: str, resource: dict[str, Any], *, access: AccessPolicy | None = None
    ) -> WriteResult:
        check_type(resource_type)
        if access is not None:
            require(access.identity, "c", resource_type)
        validate_resource(resource, expected_type=resource_type)
        write = self.prepare(tenant, resource_type, self.new_id(), resource, None, access=access)
        self.commit(tenant, [write])
        return WriteResult("created", stored_from_write(write))

    def update(
        self,
        tenant: str,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: str | None = None,
        access: AccessPolicy | None = None,
    ) -> WriteResult:
        check_type(resource_type)
        validate_resource(resource, expected_type=resource_type, expected_id=resource_id, require_id=True)
        current = self.store.current(tenant, resource_type, resource_id)
        self._check_if_match(current, if_match, resource_type, resource_id)
        write = self.prepare(tenant, resource_type, resource_id, resource, current, access=access)
        self.commit(tenant, [write], precondition=if_match is not None)
        created = current is None or current.deleted
        return WriteResult("created" if created else "updated", stored_from_write(write))

    def patch(
        self,
        tenant: str,
        resource_type: str,
        resource_id: str,
        operations: Any,
        *,
        if_match: str | None = None,
        access: AccessPolicy | None = None,
    ) -> WriteResult:
        if access is not None:
            require(access.identity, "u", resource_type)
        current = self.read(tenant, resource_type, resource_id)
        self._check_if_match(current, if_match, resource_type, resource_id)
        if not isinstance(operations, list):
            raise invalid("A JSON Patch document is an array of operations.")
        patched = copy.deepcopy(current.body)
        for number, operation in enumerate(operations, start=1):
            try:
                patched = jsonpatch.apply_patch(patched, [operation])
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
                # Said in the client's own terms: the library's message quotes stored values and types.
                raise OperationOutcomeError(
                    status=422,
                    issues=invalid(
                        f"The patch cannot be applied: operation {number} {_patch_problem(operation, exc)}.",
                        code="processing",
                    ).issues,
                ) from exc
        if (
            not isinstance(patched, dict)
            or patched.get("id") != resource_id
            or patched.get("resourceType") != resource_type
        ):
            raise OperationOutcomeError(
                status=422,
                issues=invalid("A patch may not change the resource's type or id.", code="processing").issues,
            )
        validate_resource(patched, expected_type=resource_type, expected_id=resource_id, require_id=True)
        write = self.prepare(tenant, resource_type, resource_id, patched, current, access=access)
        self.commit(tenant, [write], precondition=if_match is not None)
        return WriteResult("updated", stored_from_write(write))

    def delete(
        self, tenant: str, resource_type: str, resource_id: str, *, access: AccessPolicy | None = None
    ) -> WriteResult:
        check_type(resource_type)
        if access is not None:
            require(access.identity, "d", resource_type)
        current = self.store.current(tenant, resource_type, resource_id)
        if current is None:
            raise not_found(f"{resource_type}/{resource_id} is not known.")
        if current.deleted:
            return WriteResult("deleted", None)  # deleting twice changes nothing
        write = self.prepare(tenant, resource_type, resource_id, None, current, delete=True, access=access)
        self.commit(tenant, [write])
        return WriteResult("deleted", None)

    @staticmethod
    def _check_if_match(
        current: StoredResource | None, if_match: str | None, resource_type: str, resource_id: str
    ) -> None:
        if if_match is None:
            return
        wanted = parse_version(if_match, expression="If-Match")
        if current is None or current.deleted or current.version != wanted:
            have = (
                "no current version" if current is None or current.deleted else f"version {current.version}"
            )
            raise precondition_failed(
                f"If-Match asked for version {wanted} of {resource_type}/{resource_id}, which has {have}."
            )

    # -- history -------------------------------------------------------------------------------

    def history(
        self,
        tenant: str,
        resource_type: str,
        resource_id: str | None,
        *,
        since: str | None,
        count: int,
        cursor: Mapping[str, Any] | None,
        access: AccessPolicy | None = None,
    ) -> tuple[list[StoredResource], dict[str, Any] | None]:
        check_type(resource_type)
        if access is not None:
            require(access.identity, "r" if resource_id else "s", resource_type)
        if resource_id is not None:
            if access is not None:
                current = self.store.current(tenant, resource_type, resource_id)
                if current is not None:
                    access.check("r", current)
            page = self.store.history(
                tenant,
                resource_type,
                resource_id,
                since=since,
                limit=count,
                cursor=dict(cursor) if cursor else None,
            )
            if (
                not page.items
                and cursor is None
                and self.store.current(tenant, resource_type, resource_id) is None
            ):
                raise not_found(f"{resource_type}/{resource_id} is not known.")
        else:
            page = self.store.type_history(
                tenant, resource_type, since=since, limit=count, cursor=dict(cursor) if cursor else None
            )
            if access is not None:
                # Versions are judged by the resource as it is now (its compartment, its matches).
                now = self.store.current_many(tenant, [(v.resource_type, v.id) for v in page.items])
                allowed = {ref for ref, stored in now.items() if access.may_see(stored)}
                return [v for v in page.items if (v.resource_type, v.id) in allowed], page.cursor
        return list(page.items), page.cursor


def _patch_problem(operation: Any, error: Exception) -> str:
    if not isinstance(operation, dict):
        return "is not an operation object"
    op = str(operation.get("op", ""))[:20]
    path = str(operation.get("path", ""))[:200]
    if isinstance(error, jsonpatch.JsonPatchTestFailed):
        return f"(test {path}) failed: the value there is not the one given"
    if isinstance(error, jsonpatch.InvalidJsonPatch) or not op or "path" not in operation:
        return "is not a valid JSON Patch operation (op, path and, where needed, value or from)"
    where = f"{path} or from {str(operation.get('from'))[:200]}" if "from" in operation else path
    return f"({op} {path}): {where} does not exist in the resource or cannot hold that value"


def stored_from_write(write: Write) -> StoredResource:
    """The stored form of a committed write."""
    return StoredResource(
        resource_type=write.resource_type,
        id=write.id,
        version=write.version,
        last_updated=write.last_updated,
        deleted=write.deleted,
        body=write.body,
        operation=write.operation,
        index=write.index,
        compartments=write.compartments,
    )
