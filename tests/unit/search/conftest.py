"""Fixtures of the search-engine tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.search.samples import SYNTHEA, load, synthea_files


@pytest.fixture(scope="session")
def synthea_bundle() -> dict[str, Any]:
    files = [f for f in synthea_files() if "hospitalInformation" not in f.name]
    if not files:
        pytest.skip(f"Synthea bundles not available under {SYNTHEA}")
    return load(files[0])
