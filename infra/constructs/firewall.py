"""AWS WAF in front of the REST API: AWS managed rule groups, a per-IP rate limit, redacted logs."""

from __future__ import annotations

import json
from typing import Final

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from ehr.fhir.outcome import throttled
from infra.config import RETENTION_DAYS, EnvironmentConfig

RATE_LIMIT_BODY_KEY: Final = "RateLimitedOperationOutcome"
# (priority, rule group, rules switched from block to count). FHIR payloads trip two rules of the
# common rule set: Bundles routinely exceed its 8 KB body limit, and resource narratives
# (`text.div`) are XHTML, which the cross-site-scripting body rule takes for an attack. The API
# never renders HTML, and bodies are validated against FHIR models by the function.
MANAGED_RULE_GROUPS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (1, "AWSManagedRulesAmazonIpReputationList", ()),
    (2, "AWSManagedRulesCommonRuleSet", ("SizeRestrictions_BODY", "CrossSiteScripting_BODY")),
    (3, "AWSManagedRulesKnownBadInputsRuleSet", ()),
)


def _visibility(metric: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
    return wafv2.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=metric, sampled_requests_enabled=True
    )


class Firewall(Construct):
    """``web_acl`` (REGIONAL) associated with ``resource_arn``; ``log_group`` receives its logs."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        resource_arn: str,
        config: EnvironmentConfig,
        logs_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        metric_prefix = config.stack_name.replace("-", "")

        rules = [
            wafv2.CfnWebACL.RuleProperty(
                name="RateLimitPerIp",
                priority=0,
                statement=wafv2.CfnWebACL.StatementProperty(
                    rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                        aggregate_key_type="IP", limit=config.waf_rate_limit, evaluation_window_sec=300
                    )
                ),
                action=wafv2.CfnWebACL.RuleActionProperty(
                    block=wafv2.CfnWebACL.BlockActionProperty(
                        custom_response=wafv2.CfnWebACL.CustomResponseProperty(
                            response_code=429, custom_response_body_key=RATE_LIMIT_BODY_KEY
                        )
                    )
                ),
                visibility_config=_visibility(f"{metric_prefix}RateLimitPerIp"),
            )
        ]
        for priority, group, counted in MANAGED_RULE_GROUPS:
            rules.append(
                wafv2.CfnWebACL.RuleProperty(
                    name=group,
                    priority=priority,
                    override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                            vendor_name="AWS",
                            name=group,
                            rule_action_overrides=[
                                wafv2.CfnWebACL.RuleActionOverrideProperty(
                                    name=rule, action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={})
                                )
                                for rule in counted
                            ]
                            or None,
                        )
                    ),
                    visibility_config=_visibility(f"{metric_prefix}{group}"),
                )
            )

        body = throttled("Too many requests from this address; retry in a few minutes.").to_fhir()
        self.web_acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="REGIONAL",
            description=f"{config.stack_name}: managed rule groups and a per-IP rate limit.",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            custom_response_bodies={
                RATE_LIMIT_BODY_KEY: wafv2.CfnWebACL.CustomResponseBodyProperty(
                    content_type="APPLICATION_JSON", content=json.dumps(body)
                )
            },
            rules=rules,
            visibility_config=_visibility(f"{metric_prefix}WebAcl"),
        )
        self.association = wafv2.CfnWebACLAssociation(
            self, "Association", resource_arn=resource_arn, web_acl_arn=self.web_acl.attr_arn
        )

        # WAF delivers only to log groups named aws-waf-logs-*. The Authorization header (bearer
        # tokens) and the query string (FHIR search parameters can be PHI) are redacted.
        log_group_name = f"aws-waf-logs-{config.stack_name}"
        self.log_group = logs.LogGroup(
            self,
            "LogGroup",
            log_group_name=log_group_name,
            retention=logs.RetentionDays[RETENTION_DAYS[config.log_retention_days]],
            encryption_key=logs_key,
            removal_policy=RemovalPolicy.RETAIN if config.retain else RemovalPolicy.DESTROY,
        )
        self.logging = wafv2.CfnLoggingConfiguration(
            self,
            "Logging",
            resource_arn=self.web_acl.attr_arn,
            log_destination_configs=[
                stack.format_arn(
                    service="logs",
                    resource="log-group",
                    resource_name=log_group_name,
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
            ],
            redacted_fields=[
                wafv2.CfnLoggingConfiguration.FieldToMatchProperty(single_header={"Name": "authorization"}),
                wafv2.CfnLoggingConfiguration.FieldToMatchProperty(query_string={}),
            ],
        )
        self.logging.node.add_dependency(self.log_group)
