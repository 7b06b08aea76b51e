"""The per-environment configuration: what cdk.json holds and how bad values are reported."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from typing import Any

import pytest

from infra.config import ConfigError, EnvironmentConfig, cdk_json_context, load_config
from infra.stack import PROJECT_ROOT

pytestmark = pytest.mark.infra


def environments() -> dict[str, Any]:
    return copy.deepcopy(cdk_json_context(PROJECT_ROOT)["environments"])


def test_cdk_json_defines_dev_and_prod_that_validate() -> None:
    # Given the context block of cdk.json
    context = cdk_json_context(PROJECT_ROOT)
    # When each environment is loaded
    configs = {env: load_config(context, env) for env in ("dev", "prod")}
    # Then both validate, and prod keeps its data while dev can be torn down
    assert configs["prod"].retain and configs["prod"].deletion_protection
    assert not configs["dev"].retain and not configs["dev"].deletion_protection
    assert configs["prod"].backup_retention_days is not None


def test_env_defaults_to_dev() -> None:
    context = {"environments": environments()}
    assert load_config(context).name == "dev"


def test_unknown_environment_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown environment 'nope'.*known: dev, prod"):
        load_config({"environments": environments()}, "nope")


def test_invalid_values_are_reported_by_field_name() -> None:
    # Given a dev environment with three bad values
    envs = environments()
    envs["dev"].update(removal_policy="keep", log_retention_days=31, waf_rate_limit=1)
    # When it is loaded
    with pytest.raises(ConfigError) as error:
        load_config({"environments": envs}, "dev")
    # Then the message names the context key and every bad field, without a traceback dump
    message = str(error.value)
    assert "environments.dev" in message
    for name in ("removal_policy", "log_retention_days", "waf_rate_limit"):
        assert f"- {name}:" in message


def test_unknown_keys_are_rejected() -> None:
    envs = environments()
    envs["dev"]["log_retention"] = 30
    with pytest.raises(ConfigError, match="log_retention"):
        load_config({"environments": envs}, "dev")


def test_oidc_mode_requires_issuer_and_jwks_url() -> None:
    envs = environments()
    envs["dev"]["auth"] = {"mode": "oidc", "issuer": "https://idp.example.org"}
    with pytest.raises(ConfigError, match=r"auth: mode 'oidc' requires jwks_url"):
        load_config({"environments": envs}, "dev")


def test_cognito_mode_derives_the_issuer_itself() -> None:
    envs = environments()
    envs["dev"]["auth"] = {"mode": "cognito", "issuer": "https://idp.example.org"}
    with pytest.raises(ConfigError, match="derives issuer"):
        load_config({"environments": envs}, "dev")


def test_issuer_urls_must_be_https() -> None:
    envs = environments()
    envs["dev"]["auth"] = {"mode": "oidc", "issuer": "http://idp", "jwks_url": "https://idp/jwks"}
    with pytest.raises(ConfigError, match=r"auth\.issuer: .*https"):
        load_config({"environments": envs}, "dev")


def test_reserved_concurrency_names_known_functions_only() -> None:
    envs = environments()
    envs["dev"]["reserved_concurrency"] = {"fhir": 5}
    with pytest.raises(ConfigError, match=r"reserved_concurrency: .*unknown function\(s\) fhir"):
        load_config({"environments": envs}, "dev")


def test_environments_may_be_given_as_json_text() -> None:
    # `cdk synth -c environments='{...}'` passes the value as a string
    import json

    config = load_config({"environments": json.dumps(environments()), "env": "prod"})
    assert isinstance(config, EnvironmentConfig) and config.name == "prod"


def test_app_exits_with_a_readable_error_for_an_unknown_environment(tmp_path) -> None:
    # Given the app run as the CDK CLI runs it, with -c env=nope
    env = {**os.environ, "CDK_CONTEXT_JSON": '{"env": "nope"}', "CDK_OUTDIR": str(tmp_path)}
    # When it starts
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Then it stops with exit code 2 and one line naming the problem, not a Python traceback
    assert result.returncode == 2
    assert "error: unknown environment 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_subscription_endpoints_default_to_none_and_are_passed_as_compact_json() -> None:
    # Given dev without an allow-list, and one with two tenants' prefixes
    envs = environments()
    assert load_config({"environments": envs}, "dev").subscription_endpoints_json() is None
    envs["dev"]["subscription_endpoints"] = {"clinic-b": ["https://b.example.org"], "clinic-a": []}
    # When it is loaded
    config = load_config({"environments": envs}, "dev")
    # Then the functions get it as the JSON EHR_SUBSCRIPTION_ENDPOINTS expects
    assert config.subscription_endpoints_json() == '{"clinic-a":[],"clinic-b":["https://b.example.org"]}'


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ({"clinic-a": ["http://hooks.example.org"]}, r"clinic-a: 'http://hooks.example.org' is not an https"),
        ({"clinic-a": ["https://"]}, r"is not an https:// URL with a host"),
        ({"clinic-a": ["https://u:p@hooks.example.org"]}, r"has user info, a query or a fragment"),
        ({"clinic-a": ["https://hooks.example.org/?x=1"]}, r"has user info, a query or a fragment"),
        ({"Clinic A": ["https://hooks.example.org"]}, r"'Clinic A' is not a tenant id"),
        ({"clinic-a": ["https://hooks.example.org/" + "x" * 2100]}, r"longer than 2048 characters"),
    ],
)
def test_subscription_endpoints_must_be_https_prefixes_of_real_tenants(endpoints, message) -> None:
    envs = environments()
    envs["dev"]["subscription_endpoints"] = endpoints
    with pytest.raises(ConfigError, match=rf"subscription_endpoints: .*{message}"):
        load_config({"environments": envs}, "dev")


def test_only_the_sharing_notifier_gets_the_longer_timeout() -> None:
    from ehr import names

    config = load_config({"environments": environments()}, "prod")
    assert config.timeout_seconds(names.FN_SHARING_NOTIFIER) == config.sharing_notifier_timeout_seconds
    for fn in names.FUNCTIONS:
        if fn != names.FN_SHARING_NOTIFIER:
            assert config.timeout_seconds(fn) == config.function_timeout_seconds <= 29


def test_the_notifier_timeout_cannot_exceed_lambdas_limit() -> None:
    envs = environments()
    envs["dev"]["sharing_notifier_timeout_seconds"] = 901
    with pytest.raises(ConfigError, match="sharing_notifier_timeout_seconds"):
        load_config({"environments": envs}, "dev")
