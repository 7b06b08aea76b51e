"""Shared fixtures of the infrastructure tests: the app synthesized once per session per environment.

Docker bundling is skipped (``aws:cdk:bundling-stacks: []``) so the template tests stay fast and
offline; ``test_bundling.py`` runs the real local layer bundling once.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def _silence_node_warnings() -> None:
    # jsii prints a banner when Node is past its end of life; it is noise in test output.
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    try:
        version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return
    match = re.match(r"v(\d+)\.", version)
    if match:
        os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", match.group(1))


_silence_node_warnings()

from aws_cdk import App, Validations  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks, ServerlessChecks  # noqa: E402

import infra.constructs.nag as nag  # noqa: E402
from infra.config import EnvironmentConfig, cdk_json_context  # noqa: E402
from infra.stack import PROJECT_ROOT, EhrStack  # noqa: E402


def _load_app_module() -> Any:
    """``app.py`` at the project root (not a package module), loaded by path."""
    spec = importlib.util.spec_from_file_location("ehr_cdk_app", PROJECT_ROOT / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cdk_app = _load_app_module()

NAG_PACKS = (AwsSolutionsChecks, HIPAASecurityChecks, ServerlessChecks)
OIDC_ENV = "oidc"
OIDC_AUTH = {
    "mode": "oidc",
    "issuer": "https://login.example.org/realms/ehr",
    "audience": "urn:example:ehr",
    "jwks_url": "https://login.example.org/realms/ehr/protocol/openid-connect/certs",
    "token_endpoint": "https://login.example.org/realms/ehr/protocol/openid-connect/token",
    "tenant_claim": "facility",
}
ALARM_EMAIL = "oncall@example.org"
SUBSCRIPTION_ENDPOINTS = {
    "clinic-a": ["https://hooks.clinic-a.example.org/fhir", "https://partner.example.net/ehr/clinic-a"],
    "clinic-b": ["https://hooks.clinic-b.example.org"],
}


@dataclass(frozen=True)
class Finding:
    severity: str
    rule: str
    path: str


@dataclass(frozen=True)
class Acknowledgement:
    path: str
    rule: str
    reason: str


@dataclass
class Synth:
    """One synthesized environment: the app, its stack and template, what cdk-nag still reports."""

    app: App
    stack: EhrStack
    template: Template
    findings: list[Finding] = field(default_factory=list)

    @property
    def config(self) -> EnvironmentConfig:
        return self.stack.config

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.template.to_json()["Resources"]

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v["Type"] == resource_type}

    def logical_id(self, construct: Any) -> str:
        """Logical id of an L2 construct's default child (or of an L1)."""
        target = getattr(construct.node, "default_child", None) or construct
        return self.stack.get_logical_id(target)

    def function_statements(self, fn: str) -> list[dict[str, Any]]:
        """Every statement of a function's role: its managed policies (the stack has no inline ones)."""
        role = {"Ref": self.logical_id(self.stack.compute.roles[fn])}
        return [
            statement
            for policy in self.of_type("AWS::IAM::ManagedPolicy").values()
            if role in policy["Properties"].get("Roles", [])
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        ]

    def acknowledgements(self) -> list[Acknowledgement]:
        found = []
        for construct in self.app.node.find_all():
            for entry in construct.node.metadata:
                if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                    for rule, reason in entry.data.items():
                        found.append(
                            Acknowledgement(construct.node.path, rule.split("::", 1)[-1], str(reason))
                        )
        return found


def nag_findings(scope: Any) -> list[Finding]:
    """Every finding of the three packs that is not acknowledged, errors and warnings alike."""
    findings = []
    for pack in NAG_PACKS:
        report = pack().validate_scope(scope)
        for violation in report.violations:
            for resource in violation.violating_resources:
                findings.append(
                    Finding(violation.severity, violation.rule_name, resource.construct_path or "")
                )
    return findings


def base_context() -> dict[str, Any]:
    context = copy.deepcopy(cdk_json_context(PROJECT_ROOT))
    context["aws:cdk:bundling-stacks"] = []
    return context


def synthesize(tmp: Path, env: str, environments: dict[str, Any] | None = None) -> Synth:
    context = base_context()
    context["env"] = env
    if environments is not None:
        context["environments"] = environments
    app = App(context=context, outdir=str(tmp))
    stack = cdk_app.build_app(app)
    app.synth()  # fails here on any unacknowledged cdk-nag error
    return Synth(app=app, stack=stack, template=Template.from_stack(stack), findings=nag_findings(app))


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-dev"), "dev")


@pytest.fixture(scope="session")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-prod"), "prod")


@pytest.fixture(scope="session")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """dev's settings with an external OIDC issuer, an alarm e-mail subscription and a Subscription
    endpoint allow-list."""
    environments = copy.deepcopy(cdk_json_context(PROJECT_ROOT)["environments"])
    environments[OIDC_ENV] = {
        **environments["dev"],
        "auth": OIDC_AUTH,
        "alarm_email": ALARM_EMAIL,
        "subscription_endpoints": SUBSCRIPTION_ENDPOINTS,
    }
    return synthesize(tmp_path_factory.mktemp("cdk-oidc"), OIDC_ENV, environments)


@pytest.fixture(scope="session")
def unacknowledged() -> Any:
    """``build(env)`` -> (acknowledgements the app asks for, every finding without them)."""

    def build(env: str) -> tuple[list[Acknowledgement], list[Finding]]:
        recorded: list[Acknowledgement] = []

        class Recorder:
            def __init__(self, scope: Any) -> None:
                self.path = scope.node.path

            @classmethod
            def of(cls, scope: Any) -> Recorder:
                return cls(scope)

            def acknowledge(self, *rules: Any) -> None:
                recorded.extend(Acknowledgement(self.path, r.id, r.reason) for r in rules)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(nag, "Validations", Recorder)
            context = base_context()
            context["env"] = env
            app = App(context=context)
            cdk_app.build_app(app)  # not synthesized: the packs check the construct tree
            return recorded, nag_findings(app)

    return build


@pytest.fixture(scope="session", params=["dev", "prod", OIDC_ENV])
def any_env(request: pytest.FixtureRequest) -> Iterator[Synth]:
    fixture = {"dev": "dev", "prod": "prod", OIDC_ENV: "oidc"}[request.param]
    yield request.getfixturevalue(fixture)
