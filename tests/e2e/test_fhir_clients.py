"""Real FHIR client libraries against `ehr local` over HTTP: the SMART Python client
(``fhirclient``) and ``fhirpy``, each doing create, read, update, delete, search and paging."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests
from fhirclient import client as smart_client
from fhirclient.models.bundle import Bundle
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException, FHIRServer
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

CROWD = 25
PAGE = 10


@pytest.fixture(scope="module")
def base(local_server) -> str:
    # The shared server is stopped by the last test of test_local_platform.py; this module runs first.
    assert local_server.process.poll() is None, "the ehr local server was stopped before these tests"
    return f"{local_server.base}/tenants/clinic-a/fhir"


@pytest.fixture(scope="module")
def token(local_server) -> str:
    return local_server.token("--tenant", "clinic-a")


@pytest.fixture(scope="module")
def smart(base: str, token: str) -> Iterator[FHIRServer]:
    """The SMART client's server handle, carrying the bearer token on its session."""
    fhir = smart_client.FHIRClient(settings={"app_id": "ehr-e2e-tests", "api_base": base})
    fhir.server.session.headers["Authorization"] = f"Bearer {token}"
    yield fhir.server
    fhir.server.session.close()


@pytest.fixture(scope="module")
def fhirpy_client(base: str, token: str) -> SyncFHIRClient:
    return SyncFHIRClient(base, authorization=f"Bearer {token}")


@pytest.fixture
def family() -> str:
    return f"Client{uuid.uuid4().hex[:10]}"


def crowd_bundle(family: str) -> dict:
    """A transaction creating CROWD Patients of one family, born on successive days."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "name": [{"family": family}],
                    "birthDate": f"2002-02-{n + 1:02d}",
                },
                "request": {"method": "POST", "url": "Patient"},
            }
            for n in range(CROWD)
        ],
    }


def created_ids(transaction_response: dict) -> set[str]:
    return {e["response"]["location"].split("/")[1] for e in transaction_response["entry"]}


# -- fhirclient (SMART on FHIR Python client) ----------------------------------------------------


def test_fhirclient_creates_and_reads_a_patient(smart: FHIRServer, family: str) -> None:
    # When the client creates a Patient
    created = Patient({"name": [{"family": family, "given": ["Sam"]}], "birthDate": "1975-05-05"}).create(
        smart
    )

    # Then reading it back gives the same Patient, as version 1
    patient = Patient.read(created["id"], smart)
    assert (patient.name[0].family, patient.name[0].given, patient.birthDate.isostring) == (
        family,
        ["Sam"],
        "1975-05-05",
    )
    assert patient.meta.versionId == "1"


def test_fhirclient_updates_a_patient(smart: FHIRServer, family: str) -> None:
    # Given a Patient read by the client
    created = Patient({"name": [{"family": family}]}).create(smart)
    patient = Patient.read(created["id"], smart)

    # When it changes a field and updates
    patient.active = True
    patient.update()

    # Then the server holds version 2 with the change
    again = Patient.read(created["id"], smart)
    assert (again.active, again.meta.versionId) == (True, "2")


def test_fhirclient_deletes_a_patient(smart: FHIRServer, family: str) -> None:
    # Given a Patient
    created = Patient({"name": [{"family": family}]}).create(smart)
    patient = Patient.read(created["id"], smart)

    # When the client deletes it
    patient.delete()

    # Then reading it fails with 410 Gone
    with pytest.raises(requests.HTTPError) as gone:
        Patient.read(created["id"], smart)
    assert gone.value.response.status_code == 410


def test_fhirclient_reading_an_unknown_patient_raises_not_found(smart: FHIRServer) -> None:
    with pytest.raises(FHIRNotFoundException):
        Patient.read(f"nobody-{uuid.uuid4().hex[:8]}", smart)


def test_fhirclient_searches_with_parameters(smart: FHIRServer, family: str) -> None:
    # Given two Patients of one family, born in different decades
    older = Patient({"name": [{"family": family}], "birthDate": "1950-01-01"}).create(smart)
    Patient({"name": [{"family": family}], "birthDate": "1990-01-01"}).create(smart)

    # When the client searches the family born before 1970
    found = list(Patient.where({"family": family, "birthdate": "lt1970-01-01"}).perform_resources_iter(smart))

    # Then only the older one is found
    assert [p.id for p in found] == [older["id"]]


def test_fhirclient_pages_through_a_search(smart: FHIRServer, family: str) -> None:
    # Given 25 Patients of one family, posted by the client as one transaction
    response = Bundle(crowd_bundle(family)).create(smart)

    # When the client searches them ten at a time, following the next links
    pages = list(Patient.where({"family": family, "_count": str(PAGE)}).perform_iter(smart))

    # Then three pages bring each Patient once
    assert [len(page.entry) for page in pages] == [10, 10, 5]
    ids = [entry.resource.id for page in pages for entry in page.entry]
    assert sorted(ids) == sorted(created_ids(response))


# -- fhirpy --------------------------------------------------------------------------------------


def test_fhirpy_creates_and_reads_a_patient(fhirpy_client: SyncFHIRClient, family: str) -> None:
    # When fhirpy saves a new Patient
    patient = fhirpy_client.resource("Patient", name=[{"family": family}], gender="other")
    patient.save()

    # Then it has a server id, and reading it back gives the same Patient
    assert patient.id
    read = fhirpy_client.reference("Patient", patient.id).to_resource()
    assert (read["name"][0]["family"], read["gender"], read["meta"]["versionId"]) == (family, "other", "1")


def test_fhirpy_updates_a_patient(fhirpy_client: SyncFHIRClient, family: str) -> None:
    # Given a saved Patient
    patient = fhirpy_client.resource("Patient", name=[{"family": family}])
    patient.save()

    # When a field changes and it is saved again
    patient["active"] = False
    patient.save()

    # Then the server holds version 2 with the change
    read = fhirpy_client.reference("Patient", patient.id).to_resource()
    assert (read["active"], read["meta"]["versionId"]) == (False, "2")


def test_fhirpy_deletes_a_patient(fhirpy_client: SyncFHIRClient, family: str) -> None:
    # Given a saved Patient
    patient = fhirpy_client.resource("Patient", name=[{"family": family}])
    patient.save()

    # When fhirpy deletes it
    patient.delete()

    # Then it can no longer be read, nor found
    with pytest.raises(ResourceNotFound):
        fhirpy_client.reference("Patient", patient.id).to_resource()
    assert fhirpy_client.resources("Patient").search(family=family).fetch() == []


def test_fhirpy_searches_with_parameters(fhirpy_client: SyncFHIRClient, family: str) -> None:
    # Given two Patients of one family with different genders
    female = fhirpy_client.resource("Patient", name=[{"family": family}], gender="female")
    female.save()
    fhirpy_client.resource("Patient", name=[{"family": family}], gender="male").save()

    # When fhirpy searches the family's women
    found = fhirpy_client.resources("Patient").search(family=family, gender="female").fetch()

    # Then only she is found
    assert [p.id for p in found] == [female.id]


def test_fhirpy_fetches_one_page_then_all_pages(fhirpy_client: SyncFHIRClient, family: str) -> None:
    # Given 25 Patients of one family (one transaction)
    response = fhirpy_client.execute("", method="post", data=crowd_bundle(family))
    search = fhirpy_client.resources("Patient").search(family=family).limit(PAGE)

    # When fhirpy fetches the first page, then all pages through the next links
    first = search.fetch()
    everyone = search.fetch_all()

    # Then the page holds ten, and all pages hold each Patient once
    assert len(first) == PAGE
    assert sorted(p.id for p in everyone) == sorted(created_ids(response))
