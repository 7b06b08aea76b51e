"""Search: every parameter type, modifiers, OR/AND, chains, includes, sorting, paging, cursors.

A small cast is written once for the module in one transaction; every cast resource carries the
module's tag, so a search scoped with ``_tag`` sees the cast and nothing other tests wrote.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest
from api_support import FORM, FhirClient, location_ref, match_ids, new_uuid, next_link, post_entry

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
TAGS = "urn:test:tags"


@dataclass
class Cast:
    """Ids of the module's resources by role, and the values that find them."""

    uid: str
    system: str
    ids: dict[str, str]

    @property
    def tag(self) -> str:
        return f"{TAGS}|{self.uid}"

    def __getitem__(self, role: str) -> str:
        return self.ids[role]


@pytest.fixture(scope="module")
def cast(fhir: FhirClient) -> Cast:
    uid = uuid.uuid4().hex[:12]
    system = f"urn:test:{uid}"
    meta = {"tag": [{"system": TAGS, "code": uid}]}
    urls = {
        role: new_uuid() for role in ("org", "elodie", "bob", "nobody", "weight", "height", "risk", "form")
    }

    def ident(value: str) -> list[dict]:
        return [{"system": system, "value": f"{value}-{uid}"}]

    resources = {
        "org": {
            "resourceType": "Organization",
            "meta": meta,
            "name": f"Clinic {uid}",
            "identifier": ident("org"),
        },
        "elodie": {
            "resourceType": "Patient",
            "meta": meta,
            "identifier": ident("elodie"),
            "name": [{"family": "Van Der Berg", "given": ["Élodie"]}],
            "gender": "female",
            "birthDate": "1970-01-01",
            "address": [{"city": "Zürich"}],
            "managingOrganization": {"reference": urls["org"]},
        },
        "bob": {
            "resourceType": "Patient",
            "meta": meta,
            "identifier": ident("bob"),
            "name": [{"family": "Berger", "given": ["Bob"]}],
            "gender": "male",
            "birthDate": "1990-06-15",
        },
        "nobody": {
            "resourceType": "Patient",
            "meta": meta,
            "identifier": ident("nobody"),
            "name": [{"family": "Ng"}],
        },
        "weight": {
            "resourceType": "Observation",
            "meta": meta,
            "identifier": ident("weight"),
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "29463-7"}], "text": "Body weight"},
            "subject": {"reference": urls["elodie"]},
            "effectiveDateTime": "2021-03-04T10:00:00Z",
            "valueQuantity": {"value": Decimal("72.5"), "unit": "kg", "system": UCUM, "code": "kg"},
        },
        "height": {
            "resourceType": "Observation",
            "meta": meta,
            "identifier": ident("height"),
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "8302-2"}], "text": "Body height"},
            "subject": {"reference": urls["bob"]},
            "effectiveDateTime": "2022-03-04T10:00:00Z",
            "valueQuantity": {"value": 180, "unit": "cm", "system": UCUM, "code": "cm"},
        },
        "risk": {
            "resourceType": "RiskAssessment",
            "meta": meta,
            "status": "final",
            "subject": {"reference": urls["elodie"]},
            "prediction": [{"probabilityDecimal": Decimal("0.25")}],
        },
        "form": {
            "resourceType": "Questionnaire",
            "meta": meta,
            "status": "active",
            "url": f"http://example.org/Questionnaire/{uid}",
        },
    }
    reply = fhir.transaction([post_entry(resources[role], urls[role]) for role in urls])
    assert reply.status == 200, reply
    ids = {
        role: location_ref(entry["response"]["location"]).split("/")[1]
        for role, entry in zip(urls, reply.json["entry"], strict=True)
    }
    return Cast(uid, system, ids)


def found(fhir: FhirClient, cast: Cast, resource_type: str, params: dict | list) -> set[str]:
    """Roles of the cast matched by a search scoped to the cast."""
    pairs = list(params.items()) if isinstance(params, dict) else list(params)
    roles = {v: k for k, v in cast.ids.items()}
    return {roles.get(i, i) for i in match_ids(fhir.search(resource_type, [*pairs, ("_tag", cast.tag)]))}


# -- parameter types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"identifier": "{system}|bob-{uid}"}, {"bob"}),
        ({"identifier": "bob-{uid}"}, {"bob"}),
        ({"identifier": "http://elsewhere.example|bob-{uid}"}, set()),
        ({"identifier": "{system}|"}, {"elodie", "bob", "nobody"}),
        ({"gender": "female"}, {"elodie"}),
    ],
    ids=["system-and-code", "code-only", "other-system", "system-only", "code"],
)
def test_token_search(fhir: FhirClient, cast: Cast, params: dict, expected: set) -> None:
    values = {k: v.format(system=cast.system, uid=cast.uid) for k, v in params.items()}
    assert found(fhir, cast, "Patient", values) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"family": "berg"}, {"bob"}),
        ({"family": "BERGER"}, {"bob"}),
        ({"given": "elodie"}, {"elodie"}),
        ({"name": "van der"}, {"elodie"}),
        ({"address-city": "zurich"}, {"elodie"}),
        ({"family:exact": "Berger"}, {"bob"}),
        ({"family:exact": "berger"}, set()),
        ({"family:contains": "der b"}, {"elodie"}),
        ({"family:contains": "erge"}, {"bob"}),
    ],
    ids=[
        "prefix",
        "case",
        "accent",
        "name-any-part",
        "address",
        "exact",
        "exact-case",
        "contains",
        "contains-mid",
    ],
)
def test_string_search(fhir: FhirClient, cast: Cast, params: dict, expected: set) -> None:
    assert found(fhir, cast, "Patient", params) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1970-01-01", {"elodie"}),
        ("1970", {"elodie"}),
        ("eq1980", set()),
        ("ne1980", {"elodie", "bob"}),
        ("lt1980", {"elodie"}),
        ("gt1980", {"bob"}),
        ("le1970-01-01", {"elodie"}),
        ("ge1990-06-15", {"bob"}),
        ("sa1980", {"bob"}),
        ("eb1980", {"elodie"}),
    ],
)
def test_date_search_with_prefixes(fhir: FhirClient, cast: Cast, value: str, expected: set) -> None:
    assert found(fhir, cast, "Patient", {"birthdate": value}) == expected


def test_date_search_on_a_date_time(fhir: FhirClient, cast: Cast) -> None:
    weighed_at = "2021-03-04T10:00:00Z"
    assert found(fhir, cast, "Observation", {"date": f"ge{weighed_at}"}) == {"weight", "height"}
    assert found(fhir, cast, "Observation", {"date": f"gt{weighed_at}"}) == {"height"}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"subject": "Patient/{elodie}"}, {"weight"}),
        ({"subject": "{elodie}"}, {"weight"}),
        ({"patient": "{bob}"}, {"height"}),
        ({"subject:Patient": "{bob}"}, {"height"}),
    ],
    ids=["type-and-id", "bare-id", "patient", "typed-modifier"],
)
def test_reference_search(fhir: FhirClient, cast: Cast, params: dict, expected: set) -> None:
    values = {k: v.format(**cast.ids) for k, v in params.items()}
    assert found(fhir, cast, "Observation", values) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("72.5", {"weight"}),
        ("72.5|http://unitsofmeasure.org|kg", {"weight"}),
        ("72.5||kg", {"weight"}),
        ("72.5|http://unitsofmeasure.org|cm", set()),
        ("gt100||cm", {"height"}),
        ("lt100", {"weight"}),
    ],
    ids=["number-only", "system-and-code", "code-only", "other-unit", "gt-with-unit", "lt"],
)
def test_quantity_search(fhir: FhirClient, cast: Cast, value: str, expected: set) -> None:
    assert found(fhir, cast, "Observation", {"value-quantity": value}) == expected


@pytest.mark.parametrize(("value", "expected"), [("0.25", {"risk"}), ("gt0.5", set()), ("le0.25", {"risk"})])
def test_number_search(fhir: FhirClient, cast: Cast, value: str, expected: set) -> None:
    assert found(fhir, cast, "RiskAssessment", {"probability": value}) == expected


def test_uri_search_matches_the_whole_uri(fhir: FhirClient, cast: Cast) -> None:
    url = f"http://example.org/Questionnaire/{cast.uid}"
    assert found(fhir, cast, "Questionnaire", {"url": url}) == {"form"}
    assert found(fhir, cast, "Questionnaire", {"url": url[:-1]}) == set()


def test_id_search_takes_several_ids(fhir: FhirClient, cast: Cast) -> None:
    assert found(fhir, cast, "Patient", {"_id": f"{cast['bob']},{cast['nobody']}"}) == {"bob", "nobody"}


# -- modifiers, OR and AND -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"birthdate:missing": "true"}, {"nobody"}),
        ({"gender:missing": "false"}, {"elodie", "bob"}),
        ({"gender:not": "male"}, {"elodie", "nobody"}),
    ],
    ids=["missing-true", "missing-false", "not-keeps-missing"],
)
def test_missing_and_not_modifiers(fhir: FhirClient, cast: Cast, params: dict, expected: set) -> None:
    assert found(fhir, cast, "Patient", params) == expected


def test_text_modifier_searches_the_code_text(fhir: FhirClient, cast: Cast) -> None:
    assert found(fhir, cast, "Observation", {"code:text": "weight"}) == {"weight"}


def test_comma_ors_values(fhir: FhirClient, cast: Cast) -> None:
    either = {"code": f"{LOINC}|29463-7,{LOINC}|8302-2"}
    assert found(fhir, cast, "Observation", either) == {"weight", "height"}


def test_repeating_a_parameter_ands_it(fhir: FhirClient, cast: Cast) -> None:
    assert found(fhir, cast, "Patient", [("birthdate", "gt1960"), ("birthdate", "lt1980")]) == {"elodie"}
    assert found(fhir, cast, "Observation", [("code", "29463-7"), ("code", "8302-2")]) == set()


# -- chains and includes -------------------------------------------------------------------------


def test_chained_search_on_the_patient_identifier(fhir: FhirClient, cast: Cast) -> None:
    bobs = {"patient.identifier": f"{cast.system}|bob-{cast.uid}"}
    assert found(fhir, cast, "Observation", bobs) == {"height"}


def test_chained_search_with_a_type_modifier(fhir: FhirClient, cast: Cast) -> None:
    assert found(fhir, cast, "Observation", {"subject:Patient.family": "van der berg"}) == {"weight"}


def test_include_adds_the_referenced_patient(fhir: FhirClient, cast: Cast) -> None:
    bundle = fhir.search("Observation", {"_id": cast["weight"], "_include": "Observation:subject"})
    modes = {(e["resource"]["id"], e["search"]["mode"]) for e in bundle["entry"]}
    assert modes == {(cast["weight"], "match"), (cast["elodie"], "include")}


def test_revinclude_adds_the_observations_of_the_patient(fhir: FhirClient, cast: Cast) -> None:
    bundle = fhir.search("Patient", {"_id": cast["bob"], "_revinclude": "Observation:subject"})
    modes = {(e["resource"]["id"], e["search"]["mode"]) for e in bundle["entry"]}
    assert modes == {(cast["bob"], "match"), (cast["height"], "include")}


def test_revinclude_iterate_follows_the_included_resources(fhir: FhirClient, cast: Cast) -> None:
    # When an Organization is searched with its Patients and, iterating, their Observations
    bundle = fhir.search(
        "Organization",
        [
            ("_id", cast["org"]),
            ("_revinclude", "Patient:organization"),
            ("_revinclude:iterate", "Observation:subject"),
        ],
    )

    # Then the Organization matches, and its Patient and that Patient's Observation are included
    modes = {(e["resource"]["id"], e["search"]["mode"]) for e in bundle["entry"]}
    assert modes == {(cast["org"], "match"), (cast["elodie"], "include"), (cast["weight"], "include")}


# -- results: sort, count, summary, total --------------------------------------------------------


@pytest.mark.parametrize(
    ("sort", "expected"), [("birthdate", ["elodie", "bob"]), ("-birthdate", ["bob", "elodie"])]
)
def test_sort_on_a_date_parameter(fhir: FhirClient, cast: Cast, sort: str, expected: list) -> None:
    ids = match_ids(fhir.search("Patient", {"_tag": cast.tag, "birthdate": "gt1900", "_sort": sort}))
    assert ids == [cast[role] for role in expected]


@pytest.mark.parametrize(
    ("sort", "expected"), [("date", ["weight", "height"]), ("-date", ["height", "weight"])]
)
def test_sort_on_an_observation_date(fhir: FhirClient, cast: Cast, sort: str, expected: list) -> None:
    ids = match_ids(fhir.search("Observation", {"_tag": cast.tag, "_sort": sort}))
    assert ids == [cast[role] for role in expected]


def test_sort_on_last_updated_both_ways(fhir: FhirClient, system: str) -> None:
    # Given three Patients written one after the other
    created = [
        fhir.create({"resourceType": "Patient", "identifier": [{"system": system, "value": str(n)}]})["id"]
        for n in range(3)
    ]

    # When they are searched sorted by _lastUpdated, ascending and descending
    ascending = match_ids(fhir.search("Patient", {"identifier": f"{system}|", "_sort": "_lastUpdated"}))
    descending = match_ids(fhir.search("Patient", {"identifier": f"{system}|", "_sort": "-_lastUpdated"}))

    # Then the orders are the write order and its reverse
    assert (ascending, descending) == (created, created[::-1])


def test_count_limits_the_page_and_links_the_next(fhir: FhirClient, cast: Cast) -> None:
    bundle = fhir.search("Patient", {"_tag": cast.tag, "_count": "1"})
    assert len(match_ids(bundle)) == 1
    assert next_link(bundle) is not None


def test_summary_count_answers_the_total_only(fhir: FhirClient, cast: Cast) -> None:
    bundle = fhir.search("Patient", {"_tag": cast.tag, "_summary": "count"})
    assert bundle["total"] == 3
    assert "entry" not in bundle


def test_total_accurate_counts_beyond_the_page(fhir: FhirClient, cast: Cast) -> None:
    bundle = fhir.search("Patient", {"_tag": cast.tag, "_count": "1", "_total": "accurate"})
    assert (bundle["total"], len(bundle["entry"])) == (3, 1)


# -- paging --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crowd(fhir: FhirClient) -> tuple[str, list[str]]:
    """25 Patients of one family born on successive days (one transaction); ids in birth order."""
    family = f"Crowd{uuid.uuid4().hex[:10]}"
    entries = [
        post_entry(
            {"resourceType": "Patient", "name": [{"family": family}], "birthDate": f"2001-01-{n + 1:02d}"}
        )
        for n in range(25)
    ]
    reply = fhir.transaction(entries)
    assert reply.status == 200, reply
    return family, [location_ref(e["response"]["location"]).split("/")[1] for e in reply.json["entry"]]


@pytest.mark.parametrize(
    "extra",
    [{}, {"_sort": "-birthdate"}, {"birthdate": "ge2001-01-01"}],
    ids=["index-order", "sorted", "date-range"],
)
def test_paging_follows_next_links_without_duplicates_or_gaps(
    fhir: FhirClient, crowd: tuple[str, list[str]], extra: dict
) -> None:
    # Given 25 matching Patients
    family, ids = crowd

    # When they are searched ten at a time, following next links until there is none
    pages = fhir.pages(fhir.get("Patient", params={"family": family, "_count": "10", **extra}))

    # Then three pages hold each Patient exactly once
    seen = [i for page in pages for i in match_ids(page)]
    assert [len(match_ids(p)) for p in pages] == [10, 10, 5]
    assert sorted(seen) == sorted(ids)


def test_paging_keeps_the_sort_order_across_pages(fhir: FhirClient, crowd: tuple[str, list[str]]) -> None:
    family, ids = crowd
    pages = fhir.pages(fhir.get("Patient", params={"family": family, "_count": "10", "_sort": "-birthdate"}))
    assert [i for page in pages for i in match_ids(page)] == ids[::-1]


# -- freshness -----------------------------------------------------------------------------------


def test_a_create_is_searchable_at_once(fhir: FhirClient, uid: str) -> None:
    created = fhir.create({"resourceType": "Patient", "name": [{"family": f"Fresh{uid}"}]})
    assert match_ids(fhir.search("Patient", {"family": f"Fresh{uid}"})) == [created["id"]]


def test_an_update_replaces_what_search_finds_at_once(fhir: FhirClient, uid: str) -> None:
    # Given a Patient renamed by an update
    created = fhir.create({"resourceType": "Patient", "name": [{"family": f"Old{uid}"}]})
    fhir.put(
        f"Patient/{created['id']}",
        json_body={"resourceType": "Patient", "id": created["id"], "name": [{"family": f"New{uid}"}]},
    )

    # Then the new name finds it and the old one no longer does
    assert match_ids(fhir.search("Patient", {"family": f"New{uid}"})) == [created["id"]]
    assert match_ids(fhir.search("Patient", {"family": f"Old{uid}"})) == []


def test_a_deleted_resource_is_not_found_by_search(fhir: FhirClient, uid: str) -> None:
    created = fhir.create({"resourceType": "Patient", "name": [{"family": f"Gone{uid}"}]})
    fhir.delete(f"Patient/{created['id']}")
    assert match_ids(fhir.search("Patient", {"family": f"Gone{uid}"})) == []


# -- POST _search and unknown parameters ---------------------------------------------------------


def test_post_search_with_a_form_body_finds_what_get_finds(fhir: FhirClient, cast: Cast) -> None:
    # When the same search is POSTed as a form
    form = f"gender=male&_tag={cast.tag}".encode()
    reply = fhir.post("Patient/_search", body=form, content_type=FORM)

    # Then the results are those of the GET search
    assert reply.status == 200, reply
    assert match_ids(reply.json) == [cast["bob"]]


def test_an_unknown_parameter_is_ignored_with_a_warning(fhir: FhirClient, cast: Cast) -> None:
    # When a search has a parameter the server does not know
    bundle = fhir.search("Patient", {"_tag": cast.tag, "gender": "male", "shoe-size": "42"})

    # Then the known ones apply, and an outcome entry warns about the unknown one
    assert match_ids(bundle) == [cast["bob"]]
    outcomes = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert [o["resourceType"] for o in outcomes] == ["OperationOutcome"]
    assert [i["severity"] for i in outcomes[0]["issue"]] == ["warning"]
    assert "shoe-size" in outcomes[0]["issue"][0]["diagnostics"]
    assert "shoe-size" not in bundle["link"][0]["url"]


def test_an_unknown_parameter_with_strict_handling_is_400(fhir: FhirClient, cast: Cast) -> None:
    reply = fhir.get(
        "Patient", params={"_tag": cast.tag, "shoe-size": "42"}, headers={"Prefer": "handling=strict"}
    )
    assert (reply.status, reply.expressions) == (400, {"shoe-size"})


# -- cursors -------------------------------------------------------------------------------------


def first_next_link(fhir: FhirClient, crowd: tuple[str, list[str]]) -> str:
    url = next_link(fhir.search("Patient", {"family": crowd[0], "_count": "10"}))
    assert url is not None
    return url


def test_an_altered_cursor_is_400(fhir: FhirClient, crowd: tuple[str, list[str]]) -> None:
    # Given a next link whose cursor was tampered with
    url = first_next_link(fhir, crowd)
    token = re.search(r"_cursor=([^&]+)", url).group(1)
    forged = url.replace(token, token[:20] + ("A" if token[20] != "A" else "B") + token[21:])

    # When it is followed
    reply = fhir.follow(forged)

    # Then 400 naming the cursor
    assert (reply.status, reply.expressions) == (400, {"_cursor"})


def test_a_made_up_cursor_is_400(fhir: FhirClient, crowd: tuple[str, list[str]]) -> None:
    reply = fhir.get("Patient", params={"family": crowd[0], "_count": "10", "_cursor": "eyJvZmZzZXQiOjEwfQ"})
    assert (reply.status, reply.expressions) == (400, {"_cursor"})


def test_a_cursor_reused_for_another_search_is_400(fhir: FhirClient, crowd: tuple[str, list[str]]) -> None:
    url = first_next_link(fhir, crowd)
    reply = fhir.follow(url.replace(f"family={crowd[0]}", "family=Someone"))
    assert (reply.status, reply.expressions) == (400, {"_cursor"})


def test_a_cursor_of_clinic_a_replayed_by_clinic_b_gives_no_data(
    fhir: FhirClient, fhir_b: FhirClient, crowd: tuple[str, list[str]]
) -> None:
    # Given a next link clinic-a was handed
    url = first_next_link(fhir, crowd)

    # When clinic-b follows it in its own base, with its own token
    reply = fhir_b.follow(url.replace("/tenants/clinic-a/", "/tenants/clinic-b/"))

    # Then it is refused, and nothing of clinic-a is in the answer
    assert reply.status in (400, 403), reply
    assert reply.json["resourceType"] == "OperationOutcome"
    assert not any(i in reply.body.decode() for i in crowd[1])


def test_another_tenant_does_not_find_the_cast(fhir_b: FhirClient, cast: Cast) -> None:
    assert match_ids(fhir_b.search("Patient", {"_tag": cast.tag})) == []
