"""The import direction holds: the core never imports functions/ or infra/ (import-linter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports)], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_handlers_stay_thin():
    # A handler wires Powertools around the core; logic living there could not be tested with fakes.
    for handler in (REPO_ROOT / "functions").glob("*/handler.py"):
        source = handler.read_text()
        assert "import boto3" not in source and "pynamodb" not in source, handler
        assert len(source.splitlines()) < 40, handler
