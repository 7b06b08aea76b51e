"""Fixtures of the validation tests: where the external samples are (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from validation_helpers import EXAMPLES, REPO_ROOT, SYNTHEA


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip(f"the shared FHIR examples are not here ({EXAMPLES.relative_to(REPO_ROOT.parent)})")
    return EXAMPLES


@pytest.fixture(scope="session")
def synthea_dir() -> Path:
    if not SYNTHEA.is_dir():
        pytest.skip(f"the shared Synthea bundles are not here ({SYNTHEA.relative_to(REPO_ROOT.parent)})")
    return SYNTHEA
