"""Lambda asset bundling without Docker.

The layer (``layers/ehr``) is built on the host: ``pip install --target`` downloads the locked
wheels for the Lambda platform (Linux, ARM64, the runtime's CPython) with hash checking, and the
core package ``ehr`` is copied beside them. CDK calls :class:`LayerBundler` before it would try
Docker; the bundler either succeeds or raises :class:`BundlingError`, so the Docker image named
in the bundling options is never run.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as _lambda

# Files that never belong in an asset.
IGNORED: Final = ("__pycache__", "*.pyc", "*.pyo", ".mypy_cache", ".pytest_cache", ".ruff_cache")
# Bundling options require an image; this one is a marker and is never pulled or run.
UNUSED_IMAGE: Final = "local-bundling-only/docker-is-not-used"
# Part of the asset hash: bump it when the bundle's layout changes for the same inputs.
BUNDLE_FORMAT: Final = "2"


class BundlingError(RuntimeError):
    """Local bundling failed; the message says which step and what to do."""


def lambda_platforms(architecture: str) -> tuple[str, ...]:
    """pip ``--platform`` tags for a Lambda architecture (``arm64`` or ``x86_64``).

    The Python 3.12+ runtimes run on Amazon Linux 2023 (glibc 2.34); manylinux2014 (glibc 2.17)
    and manylinux_2_28 wheels both load there, and the lock is resolved for manylinux_2_28.
    """
    machine = {"arm64": "aarch64", "x86_64": "x86_64"}[architecture]
    return (f"manylinux2014_{machine}", f"manylinux_2_28_{machine}")


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(rel.match(p) or p in rel.parts for p in IGNORED):
            yield path


@jsii.implements(cdk.ILocalBundling)
class LayerBundler:
    """Builds ``<out>/python/`` = locked third-party wheels + the ``ehr`` package."""

    def __init__(
        self,
        *,
        requirements: Path,
        package: Path,
        python_version: str,
        platforms: Sequence[str],
        python: str = sys.executable,
    ) -> None:
        self.requirements = requirements
        self.package = package
        self.python_version = python_version
        self.platforms = tuple(platforms)
        self.python = python

    def pip_command(self, target: Path) -> list[str]:
        command = [self.python, "-m", "pip", "install", "--target", str(target)]
        for platform in self.platforms:
            command += ["--platform", platform]
        command += [
            "--implementation", "cp",
            "--python-version", self.python_version,
            "--only-binary=:all:",
            "--require-hashes",
            "--no-deps",  # the lock is complete; nothing outside it may be installed
            "--no-compile",  # byte code would make the asset differ from build to build
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "-r", str(self.requirements),
        ]  # fmt: skip
        return command

    def asset_hash(self) -> str:
        """Hash of everything the bundle is made from, so the asset changes only when they do."""
        digest = hashlib.sha256()
        digest.update(" ".join((BUNDLE_FORMAT, self.python_version, *self.platforms)).encode())
        digest.update(self.requirements.read_bytes())
        for path in _files(self.package):
            digest.update(str(path.relative_to(self.package)).encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def try_bundle(self, output_dir: str, *, image: cdk.DockerImage, **_options: Any) -> bool:
        target = Path(output_dir) / "python"
        if not self.requirements.is_file():
            raise BundlingError(f"layer bundling: {self.requirements.name} not found; regenerate the lock")
        try:
            result = subprocess.run(  # noqa: S603 - fixed argv, no shell
                self.pip_command(target), capture_output=True, text=True, check=False, timeout=900
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BundlingError(f"layer bundling: could not run pip ({exc})") from exc
        if result.returncode != 0:
            detail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise BundlingError(
                f"layer bundling: pip could not install {self.requirements.name} for "
                f"cp{self.python_version.replace('.', '')} on {'/'.join(self.platforms)} "
                f"(exit {result.returncode}). Docker is not used as a fallback: check that the package index "
                f"is reachable and that the lock is current (docs/infrastructure.md). pip said:\n{detail}"
            )
        # Console scripts are of no use in a layer and their shebangs name this machine's Python.
        shutil.rmtree(target / "bin", ignore_errors=True)
        destination = target / self.package.name
        if destination.exists():
            raise BundlingError(f"layer bundling: a dependency already provides '{self.package.name}'")
        shutil.copytree(self.package, destination, ignore=shutil.ignore_patterns(*IGNORED))
        return True


def python_version_of(runtime: str) -> str:
    """``python3.14`` -> ``3.14``."""
    if not runtime.startswith("python"):
        raise BundlingError(f"layer bundling: {runtime} is not a Python runtime")
    return runtime.removeprefix("python")


def layer_code(layer_dir: Path, *, runtime: str, architecture: str, package: str = "ehr") -> _lambda.Code:
    """The layer's code asset: ``layer_dir/requirements.txt`` + ``layer_dir/<package>``, bundled locally."""
    bundler = LayerBundler(
        requirements=layer_dir / "requirements.txt",
        package=layer_dir / package,
        python_version=python_version_of(runtime),
        platforms=lambda_platforms(architecture),
    )
    return _lambda.Code.from_asset(
        str(layer_dir),
        exclude=list(IGNORED),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        asset_hash=bundler.asset_hash(),
        bundling=cdk.BundlingOptions(image=cdk.DockerImage.from_registry(UNUSED_IMAGE), local=bundler),
    )


def function_code(functions_dir: Path) -> _lambda.Code:
    """All function entry points in one asset (handler = ``<function>.handler.lambda_handler``)."""
    return _lambda.Code.from_asset(str(functions_dir), exclude=list(IGNORED))
