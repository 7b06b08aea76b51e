"""CloudWatch alarms on what needs a human, published to one encrypted SNS topic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from ehr import names
from infra.config import EnvironmentConfig
from infra.constructs.compute import pascal
from infra.constructs.queues import dead_letter_queue

PERIOD: Final = Duration.minutes(5)
API_THROTTLED_METRIC: Final = "ApiRequestsThrottled"


class Monitoring(Construct):
    """``topic`` (KMS, TLS-only), ``alarms`` keyed by name, and, with ``alarm_email``, the e-mail
    subscription's ``subscription_dead_letters``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        messaging_key: kms.IKey,
        rest_api: apigw.RestApi,
        access_log_group: logs.ILogGroup,
        functions: Mapping[str, lambda_.IFunction],
        state_machines: Mapping[str, sfn.IStateMachine],
        dead_letter_queues: Mapping[str, sqs.IQueue],
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name=f"{config.stack_name} alarms",
            master_key=messaging_key,
            enforce_ssl=True,
        )
        self.subscription_dead_letters: sqs.Queue | None = None
        queues: dict[str, sqs.IQueue] = dict(dead_letter_queues)
        if config.alarm_email:
            self.subscription_dead_letters = dead_letter_queue(
                self,
                "AlarmEmailDeadLetterQueue",
                holds="alarm notifications SNS could not deliver to the alarm e-mail address",
                key=messaging_key,
                config=config,
            )
            self.topic.add_subscription(
                subscriptions.EmailSubscription(
                    config.alarm_email, dead_letter_queue=self.subscription_dead_letters
                )
            )
            queues["AlarmEmail"] = self.subscription_dead_letters

        self.alarms: dict[str, cloudwatch.Alarm] = {}
        action = actions.SnsAction(self.topic)

        def alarm(alarm_id: str, metric: cloudwatch.IMetric, description: str, threshold: float = 0) -> None:
            created = cloudwatch.Alarm(
                self,
                alarm_id,
                metric=metric,
                threshold=threshold,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=description,
            )
            created.add_alarm_action(action)
            created.add_ok_action(action)
            self.alarms[alarm_id] = created

        alarm(
            "Api5xx",
            rest_api.metric_server_error(period=PERIOD, statistic="Sum"),
            "The API answered 5xx: a function failed or timed out.",
        )
        # API Gateway publishes no throttle metric for REST APIs; count 429s in the access log.
        throttled = logs.MetricFilter(
            self,
            "ApiThrottledFilter",
            log_group=access_log_group,
            metric_namespace=names.METRICS_NAMESPACE,
            metric_name=API_THROTTLED_METRIC,
            filter_pattern=logs.FilterPattern.string_value("$.status", "=", "429"),
            metric_value="1",
            default_value=0,
        )
        alarm(
            "ApiThrottled",
            throttled.metric(period=PERIOD, statistic="Sum"),
            "The API throttled requests (429): stage throttling or the WAF rate limit was reached.",
        )
        for fn, function in functions.items():
            alarm(
                f"{pascal(fn)}Throttles",
                function.metric_throttles(period=PERIOD, statistic="Sum"),
                f"Lambda throttled the {fn} function (concurrency exhausted).",
            )
            alarm(
                f"{pascal(fn)}Errors",
                function.metric_errors(period=PERIOD, statistic="Sum"),
                f"The {fn} function raised unhandled errors.",
            )
        for name, machine in state_machines.items():
            alarm(
                f"{name}ExecutionsFailed",
                machine.metric_failed(period=PERIOD, statistic="Sum"),
                f"A {name} workflow execution failed.",
            )
            alarm(
                f"{name}ExecutionsTimedOut",
                machine.metric_timed_out(period=PERIOD, statistic="Sum"),
                f"A {name} workflow execution timed out.",
            )
        for name, queue in queues.items():
            alarm(
                f"{name}DeadLetters",
                queue.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
                f"Messages wait in the {name} dead-letter queue (ApproximateNumberOfMessagesVisible > 0).",
            )
