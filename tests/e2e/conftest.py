"""`ehr local` as a real subprocess on a free port; tokens from the real `ehr token` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import requests

BIN = Path(sys.executable).parent
STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalServer:
    base: str
    process: subprocess.Popen[str]
    env: dict[str, str]
    log_path: Path

    def token(self, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / "ehr"), "token", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout.strip()


def start_local_server(
    home: Path, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> LocalServer:
    """`ehr local` on a free port with its own EHR_HOME, once its banner says Ready."""
    log_path = home / "server.log"
    env = {**os.environ, "EHR_HOME": str(home), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(BIN / "ehr"), "local", "--port", str(port), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    server = LocalServer(base=f"http://127.0.0.1:{port}", process=process, env=env, log_path=log_path)
    deadline = time.monotonic() + STARTUP_SECONDS
    banner = []
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"ehr local exited early:\n{''.join(banner)}\n{log_path.read_text()}")
        banner.append(line)
        if line.startswith("Ready."):
            break
    else:
        process.kill()
        pytest.fail("ehr local did not become ready")
    server.banner = "".join(banner)  # type: ignore[attr-defined]
    # Keep reading stdout so the server can never block on a full pipe.
    threading.Thread(target=_drain, args=(process.stdout, home / "stdout.log"), daemon=True).start()
    return server


def _drain(stream: IO[str], path: Path) -> None:
    with open(path, "a") as sink:
        for line in stream:
            sink.write(line)


def stop_local_server(server: LocalServer) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = start_local_server(tmp_path_factory.mktemp("ehr-home"))
    yield server
    stop_local_server(server)


@pytest.fixture
def own_local_server(tmp_path: Path) -> Iterator[LocalServer]:
    """A server of the test's own, for tests that stop it."""
    server = start_local_server(tmp_path)
    yield server
    stop_local_server(server)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session
