#!/usr/bin/env python3
"""The CDK app: ``cdk synth -c env=dev|prod`` (or ``python app.py``) builds the one EHR stack.

cdk-nag's AWS Solutions, HIPAA Security and Serverless packs validate it at synthesis; a finding
that is neither fixed nor acknowledged (with a reason, on the resource) fails the synth.
"""

from __future__ import annotations

import sys

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks, ServerlessChecks

from infra.config import ConfigError, cdk_json_context, load_config
from infra.stack import PROJECT_ROOT, EhrStack


def build_app(app: App) -> EhrStack:
    """Add the stack for the selected environment and the cdk-nag packs to ``app``."""
    config = load_config({key: app.node.try_get_context(key) for key in ("env", "environments")})
    stack = EhrStack(app, config=config)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app), ServerlessChecks(app))
    return stack


def main() -> int:
    # Under the CDK CLI the context comes from cdk.json and -c; run directly, read cdk.json here
    # (values given by the CLI still take precedence).
    app = App(context=cdk_json_context(PROJECT_ROOT))
    try:
        build_app(app)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
