"""History: of one resource and of a type, with _since, _count and next-link paging."""

from __future__ import annotations

from api_support import FhirClient


def a_practitioner(system: str, family: str) -> dict:
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": system, "value": "1"}],
        "name": [{"family": family}],
    }


def versions_of(pages: list[dict]) -> list[tuple[str, str]]:
    return [
        (e["fullUrl"].rsplit("/", 1)[-1], e["response"]["etag"])
        for page in pages
        for e in page.get("entry", [])
    ]


def test_instance_history_lists_every_version_newest_first(fhir: FhirClient, system: str) -> None:
    # Given a Practitioner created and updated twice
    created = fhir.create(a_practitioner(system, "One"))
    for family in ("Two", "Three"):
        fhir.put(
            f"Practitioner/{created['id']}", json_body={**a_practitioner(system, family), "id": created["id"]}
        )

    # When its history is read
    bundle = fhir.get(f"Practitioner/{created['id']}/_history").json

    # Then each version is an entry with its resource, newest first
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "history")
    assert [e["resource"]["name"][0]["family"] for e in bundle["entry"]] == ["Three", "Two", "One"]
    assert [e["response"]["status"][:3] for e in bundle["entry"]] == ["200", "200", "201"]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "PUT", "POST"]


def test_instance_history_pages_with_count_and_next_links(fhir: FhirClient, system: str) -> None:
    # Given a Practitioner with five versions
    created = fhir.create(a_practitioner(system, "v1"))
    for n in range(2, 6):
        fhir.put(
            f"Practitioner/{created['id']}",
            json_body={**a_practitioner(system, f"v{n}"), "id": created["id"]},
        )

    # When its history is read two versions at a time, following next links
    pages = fhir.pages(fhir.get(f"Practitioner/{created['id']}/_history", params={"_count": "2"}))

    # Then three pages hold the five versions once each, newest first
    assert [len(p["entry"]) for p in pages] == [2, 2, 1]
    assert [etag for _, etag in versions_of(pages)] == [f'W/"{n}"' for n in range(5, 0, -1)]


def test_instance_history_since_leaves_out_earlier_versions(fhir: FhirClient, system: str) -> None:
    # Given a Practitioner updated after it was created
    created = fhir.create(a_practitioner(system, "Before"))
    updated = fhir.put(
        f"Practitioner/{created['id']}", json_body={**a_practitioner(system, "After"), "id": created["id"]}
    ).json

    # When the history since the update is read
    bundle = fhir.get(
        f"Practitioner/{created['id']}/_history", params={"_since": updated["meta"]["lastUpdated"]}
    ).json

    # Then only the update is listed
    assert [e["resource"]["name"][0]["family"] for e in bundle["entry"]] == ["After"]


def test_type_history_since_lists_what_changed_from_then(fhir: FhirClient, system: str) -> None:
    # Given two Practitioners created one after the other, the first then updated
    first = fhir.create(a_practitioner(system, "First"))
    second = fhir.create(a_practitioner(system, "Second"))
    fhir.put(
        f"Practitioner/{first['id']}", json_body={**a_practitioner(system, "First v2"), "id": first["id"]}
    )

    # When the type's history since the second create is read
    pages = fhir.pages(
        fhir.get("Practitioner/_history", params={"_since": second["meta"]["lastUpdated"], "_count": "1"})
    )

    # Then it holds the second create and the update, not the first create, newest first
    assert versions_of(pages) == [(first["id"], 'W/"2"'), (second["id"], 'W/"1"')]


def test_history_of_an_unknown_resource_is_404(fhir: FhirClient) -> None:
    reply = fhir.get("Practitioner/no-such-practitioner/_history")
    assert (reply.status, reply.codes) == (404, {"not-found"})


def test_history_with_a_malformed_since_is_400(fhir: FhirClient) -> None:
    reply = fhir.get("Practitioner/_history", params={"_since": "last tuesday"})
    assert (reply.status, reply.expressions) == (400, {"_since"})


def test_history_with_an_altered_cursor_is_400(fhir: FhirClient, system: str) -> None:
    # Given the next link of a history page
    created = fhir.create(a_practitioner(system, "v1"))
    fhir.put(f"Practitioner/{created['id']}", json_body={**a_practitioner(system, "v2"), "id": created["id"]})
    first = fhir.get(f"Practitioner/{created['id']}/_history", params={"_count": "1"}).json
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")

    # When its cursor is altered
    reply = fhir.follow(next_url[:-6] + ("AAAAAA" if not next_url.endswith("AAAAAA") else "BBBBBB"))

    # Then 400 naming the cursor
    assert (reply.status, reply.expressions) == (400, {"_cursor"})
