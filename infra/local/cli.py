"""The `ehr` command: run the platform locally and mint development tokens."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from urllib.parse import SplitResult, urlsplit

import click

from ehr import names
from infra.local.issuer import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, DevIssuer

DEMO_TOKEN_TTL = 8 * 3600
DEMO_SCOPES = {"clinic": "user/*.cruds", "lab": "system/*.cruds", "partner": "system/*.cruds"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="serverless-ehr", prog_name="ehr")
def main() -> None:
    """Serverless EHR: run the platform on this machine and work with it."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--no-seed", is_flag=True, help="Start without the demo tenants clinic-a, clinic-b and acme-lab."
)
@click.option(
    "--no-lab-simulator",
    is_flag=True,
    help="Do not start the simulated lab (acme-lab) that answers lab orders with results.",
)
@click.option(
    "--lab-result-timeout",
    type=click.IntRange(1, 365 * 24 * 3600),
    default=None,
    help="Seconds a lab order waits for results before it is put on hold [default: 259200 (72 h)].",
)
@click.option(
    "--lab-delay",
    type=click.FloatRange(0, 600),
    default=1.0,
    show_default=True,
    help="Seconds the simulated lab takes before it sends results.",
)
def local(  # noqa: PLR0917 - one parameter per option, as click passes them
    host: str,
    port: int,
    no_seed: bool,
    no_lab_simulator: bool,
    lab_result_timeout: int | None,
    lab_delay: float,
) -> None:
    """Serve the API with the real Lambda handlers and AWS emulated in-process."""
    from infra.local.platform import LocalPlatform  # moto is slow to import; `ehr token` skips it

    _log_to_stderr()
    issuer = DevIssuer()
    platform = LocalPlatform(
        issuer=issuer,
        seed=not no_seed,
        lab_simulator=not no_lab_simulator,
        lab_result_timeout=lab_result_timeout,
        lab_delay=lab_delay,
    )
    stop = _stop_on_signals()
    try:
        base = platform.start(host, port)
    except OSError as exc:
        platform.stop()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    _print_banner(base, platform.seeded, issuer, platform.lab_url)
    _serve_until(stop, platform.stop)


def _stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM: the long-running commands stop cleanly on either."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def _serve_until(stop: threading.Event, shut_down: Callable[[], None]) -> None:
    try:
        while not stop.wait(0.5):
            pass
    finally:
        click.echo("Stopping…", err=True)
        shut_down()
        click.echo("Stopped.", err=True)


def _http_url(value: str, option: str) -> SplitResult:
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise click.BadParameter("an http:// or https:// URL", param_hint=option)
    return url


def _log_to_stderr() -> None:
    """Local-mode logs (the request log among them) go to stderr; libraries stay at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    local_logger = logging.getLogger("ehr_local")
    local_logger.addHandler(handler)
    local_logger.setLevel(logging.INFO)
    local_logger.propagate = False
    # Metrics are disabled locally; Powertools still warns once per handler that none were added.
    warnings.filterwarnings("ignore", message="No application metrics to publish")


def _print_banner(base: str, seeded: list[str], issuer: DevIssuer, lab_url: str = "") -> None:
    echo = click.echo
    echo("Serverless EHR is running locally (AWS emulated in-process with moto).")
    echo(f"  API base      {base}")
    echo(f"  OpenAPI       {base}/openapi.json")
    echo(f"  SMART config  {base}/.well-known/smart-configuration")
    echo(f"  Health        {base}/health")
    if seeded:
        kinds = {t[0]: t[1] for t in names.DEMO_TENANTS}
        echo("")
        echo(f"Demo tenants and development tokens (valid {DEMO_TOKEN_TTL // 3600} h); paste into a shell:")
        for tenant in seeded:
            scope = DEMO_SCOPES[kinds[tenant]]
            token = issuer.mint(tenant=tenant, scope=scope, client_id=f"{tenant}-demo", ttl=DEMO_TOKEN_TTL)
            var = "EHR_TOKEN_" + tenant.upper().replace("-", "_")
            echo(f"  # {tenant} ({kinds[tenant]}), scope {scope}: FHIR base {base}/tenants/{tenant}/fhir")
            echo(f"  export {var}='{token}'")
        echo("")
        echo(f"Backend Services (client_credentials + private_key_jwt): token endpoint {base}/auth/token")
        echo(f"HL7 v2 (ER7, ACKs): POST {base}/tenants/acme-lab/hl7v2 with acme-lab's token")
        if lab_url:
            echo(f"Lab simulator (acme-lab) receives lab orders at {lab_url}; see docs/lab-workflow.md")
        from infra.local.platform import subscription_key_path

        keys = subscription_key_path("TENANT").parent
        echo(
            f"Subscriptions (rest-hook to http://127.0.0.1 allowed here) are signed with {keys}/<tenant>.key;"
            " see docs/sharing.md"
        )
        echo("")
        echo("Try:")
        echo(f'  curl -H "Authorization: Bearer $EHR_TOKEN_CLINIC_A" {base}/tenants/clinic-a/fhir/metadata')
    else:
        echo("")
        echo(
            "Started without demo tenants (--no-seed): every tenant URL answers 404 until one is registered."
        )
    echo("")
    echo("Ready. Press Ctrl-C to stop.", nl=True)
    sys.stdout.flush()


@main.command()
@click.option("--tenant", required=True, help="Tenant the token is issued for (e.g. clinic-a).")
@click.option("--scope", default="user/*.cruds", show_default=True, help="SMART scopes, space-separated.")
@click.option("--patient", default=None, help="Patient id for a patient-context token.")
@click.option("--client-id", default=None, help="Client id to put in the token (default ehr-dev-cli).")
@click.option(
    "--ttl",
    default=DEFAULT_TTL_SECONDS,
    show_default=True,
    type=click.IntRange(1, MAX_TTL_SECONDS),
    help="Lifetime in seconds.",
)
def token(tenant: str, scope: str, patient: str | None, client_id: str | None, ttl: int) -> None:
    """Print an RS256 access token from the local development issuer."""
    from ehr.security.identity import TENANT_ID

    if not TENANT_ID.match(tenant):
        raise click.BadParameter("lower-case letters, digits and inner hyphens only", param_hint="--tenant")
    click.echo(DevIssuer().mint(tenant=tenant, scope=scope, patient=patient, client_id=client_id, ttl=ttl))


@main.group()
def client() -> None:
    """Backend Services clients of the local issuer (labs, partner facilities)."""


@client.command("create")
@click.option("--client-id", required=True, help="The client's id (the iss/sub of its assertions).")
@click.option("--tenant", required=True, help="The tenant its tokens are issued for.")
@click.option("--scope", default="system/*.rs", show_default=True, help="The most it may ask for.")
def client_create(client_id: str, tenant: str, scope: str) -> None:
    """Register a client with a new ES384 key; prints where the private key was written."""
    from infra.local.backend_services import create_client_key, register_client

    try:
        key_path, jwks = create_client_key(client_id)
        register_client(client_id, tenant, scope, jwks)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"registered {client_id} for tenant {tenant} ({scope}); private key: {key_path}")


@main.command("mllp-bridge")
@click.option(
    "--listen",
    "port",
    required=True,
    type=click.IntRange(0, 65535),
    help="MLLP port to listen on (0 picks a free one).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--target",
    required=True,
    help="The platform's HL7 v2 endpoint, e.g. https://api.example.org/tenants/clinic-a/hl7v2.",
)
@click.option(
    "--token-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the bearer token; read again for every message, so it can be rotated.",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    help="Seconds to wait for the platform before answering the sender with a NAK (AE).",
)
def mllp_bridge(port: int, host: str, target: str, token_file: str, timeout: float) -> None:
    """Relay HL7 v2 over MLLP (TCP) to the platform's HL7 v2 endpoint and its ACKs back.

    Every message gets an ACK: the platform's, or a NAK (MSA-1 AE, or AR for a message that cannot
    be read) saying why when the platform is unreachable, slow, refuses the token or fails.
    """
    from pathlib import Path

    from infra.local.mllp_bridge import BridgeServer, Upstream

    url = _http_url(target, "--target")
    if url.scheme == "http" and url.hostname not in ("127.0.0.1", "localhost", "::1"):
        click.echo("warning: --target is plain http; the token will cross the network unencrypted", err=True)
    _log_to_stderr()
    server = BridgeServer(Upstream(url=target, token_file=Path(token_file), timeout=timeout))
    stop = _stop_on_signals()
    try:
        bound_host, bound_port = server.start(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    click.echo(f"MLLP bridge listening on {shown}:{bound_port} → {target}")
    sys.stdout.flush()
    _serve_until(stop, server.stop)


@main.command("lab-simulator")
@click.option(
    "--port", required=True, type=click.IntRange(0, 65535), help="Port to listen on (0 picks a free one)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--platform", "platform_url", required=True, help="The platform's base URL, e.g. http://127.0.0.1:8080."
)
@click.option(
    "--secret-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the HMAC secret shared with the platform (surrounding whitespace ignored).",
)
@click.option(
    "--delay",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="Seconds between an order and its first result (follow-ups come 3 times as long after).",
)
def lab_simulator(port: int, host: str, platform_url: str, secret_file: str, delay: float) -> None:
    """Play the demo lab acme-lab: take signed ORM^O01 orders on POST /orders, answer ACKs, and post
    ORU^R01 results to the platform. `simulate=<scenario>` in an order's note picks what happens
    (normal, abnormal, critical, preliminary-final, corrected, reject, silent); see
    docs/lab-simulator.md. Tokens come from the local development issuer ($EHR_HOME, as `ehr local`).
    """
    from pathlib import Path

    from infra.local.lab_simulator import LAB_TENANT, LabSimulator

    _http_url(platform_url, "--platform")
    secret = Path(secret_file).read_bytes().strip()
    if not secret:
        raise click.BadParameter("the file is empty", param_hint="--secret-file")
    _log_to_stderr()
    issuer = DevIssuer()
    simulator = LabSimulator(
        platform=platform_url,
        secret=secret,
        token=lambda: issuer.mint(
            tenant=LAB_TENANT, scope="system/*.cruds", client_id=f"{LAB_TENANT}-system"
        ),
        delay=delay,
    )
    stop = _stop_on_signals()
    try:
        webhook_url = simulator.start(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    click.echo(f"Lab simulator listening on {webhook_url} → {simulator.platform}")
    sys.stdout.flush()
    _serve_until(stop, simulator.stop)


if __name__ == "__main__":  # pragma: no cover
    main()
