"""Test material for the search engine: the external FHIR samples (used as they are) and builders."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
# ../shared/data beside the repository (DESIGN: external samples are used as they are).
SHARED_DATA = Path(os.environ.get("EHR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
FHIR_EXAMPLES = SHARED_DATA / "fhir-examples"
SYNTHEA = SHARED_DATA / "synthea"


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def example_files() -> list[Path]:
    return _files(FHIR_EXAMPLES)


def synthea_files() -> list[Path]:
    return _files(SYNTHEA)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8-sig"))  # some samples start with a BOM


def resources_in(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The document and, for a Bundle, every entry resource (recursively)."""
    yield document
    if document.get("resourceType") == "Bundle":
        for entry in document.get("entry") or ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                yield from resources_in(resource)


def example(name: str) -> dict[str, Any]:
    path = FHIR_EXAMPLES / name
    if not path.exists():
        pytest.skip(f"shared FHIR example {name} not available")
    return load(path)


def resolve_transaction(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The bundle's resources with ``urn:uuid:`` references rewritten to ``Type/id``.

    That is what the server does when it processes a transaction; the file stays untouched.
    """
    ids = {
        entry["fullUrl"]: f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
        for entry in bundle["entry"]
        if entry.get("fullUrl") and entry["resource"].get("id")
    }
    text = json.dumps([entry["resource"] for entry in bundle["entry"]])
    pattern = re.compile(r'"reference": "(urn:uuid:[0-9a-f\-]+)"')
    return json.loads(pattern.sub(lambda m: f'"reference": "{ids.get(m.group(1), m.group(1))}"', text))
