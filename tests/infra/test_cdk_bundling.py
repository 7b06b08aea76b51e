"""The Lambda layer is bundled on the host, never in Docker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aws_cdk import App, DockerImage, Stack
from aws_cdk import aws_lambda as lambda_

from infra.bundling import UNUSED_IMAGE, BundlingError, LayerBundler, lambda_platforms, layer_code
from infra.constructs.compute import ARCHITECTURE, RUNTIME
from infra.stack import PROJECT_ROOT

pytestmark = pytest.mark.infra

LAYER_DIR = PROJECT_ROOT / "layers" / "ehr"


def bundler(**overrides) -> LayerBundler:
    options = {
        "requirements": LAYER_DIR / "requirements.txt",
        "package": LAYER_DIR / "ehr",
        "python_version": RUNTIME.name.removeprefix("python"),
        "platforms": lambda_platforms(ARCHITECTURE.name),
    }
    return LayerBundler(**{**options, **overrides})


def test_layer_bundles_locally_for_the_lambda_platform(tmp_path: Path) -> None:
    # Given the locked requirements and the core package (wheels come from the package index)
    started = time.monotonic()
    # When the layer is bundled the way CDK asks for it
    bundled = bundler().try_bundle(str(tmp_path), image=DockerImage.from_registry(UNUSED_IMAGE))
    # Then pip installed aarch64 wheels for the runtime's CPython beside the ehr package
    assert bundled is True
    python = tmp_path / "python"
    assert (python / "ehr" / "__init__.py").is_file()
    assert not list((python / "ehr").rglob("__pycache__"))
    tag = f"cpython-{RUNTIME.name.removeprefix('python').replace('.', '')}-aarch64-linux-gnu.so"
    assert list((python / "pydantic_core").glob(f"*{tag}")), "pydantic_core is not the aarch64 build"
    assert (python / "jwt" / "__init__.py").is_file()
    assert not (python / "bin").exists()
    assert time.monotonic() - started < 120


def test_missing_lock_is_a_readable_error(tmp_path: Path) -> None:
    with pytest.raises(BundlingError, match=r"requirements\.txt not found"):
        bundler(requirements=tmp_path / "requirements.txt").try_bundle(
            str(tmp_path), image=DockerImage.from_registry(UNUSED_IMAGE)
        )


def test_a_failing_pip_stops_the_synth_instead_of_falling_back_to_docker(tmp_path: Path) -> None:
    # Given a layer whose lock cannot be installed (no such package)
    layer = tmp_path / "layer"
    (layer / "ehr").mkdir(parents=True)
    (layer / "ehr" / "__init__.py").write_text("")
    (layer / "requirements.txt").write_text(
        "--no-index\nno-such-package-for-ehr-tests==1.0 --hash=sha256:" + "0" * 64 + "\n"
    )
    app = App(outdir=str(tmp_path / "out"))
    stack = Stack(app, "LayerOnly")
    # When the layer asset is staged (bundling is on for this app)
    with pytest.raises(Exception, match="layer bundling: pip could not install") as error:
        lambda_.LayerVersion(
            stack, "Layer", code=layer_code(layer, runtime=RUNTIME.name, architecture=ARCHITECTURE.name)
        )
    # Then the error says so, and Docker was not tried
    assert "Docker is not used" in str(error.value)


def test_asset_hash_follows_the_inputs(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "ehr").mkdir(parents=True)
    (layer / "ehr" / "__init__.py").write_text("")
    (layer / "requirements.txt").write_text("")
    make = lambda: bundler(requirements=layer / "requirements.txt", package=layer / "ehr")  # noqa: E731
    before = make().asset_hash()
    (layer / "ehr" / "__pycache__").mkdir()
    (layer / "ehr" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert make().asset_hash() == before  # byte code does not count
    (layer / "ehr" / "__init__.py").write_text("X = 1\n")
    assert make().asset_hash() != before
