"""Powertools logger, tracer and metrics as every function uses them (identifiers only, no PHI)."""

from __future__ import annotations

import os
from collections.abc import Callable

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from ehr import names


def powertools() -> tuple[Logger, Tracer, Metrics]:
    return (
        Logger(service=names.SERVICE_NAME),
        Tracer(service=names.SERVICE_NAME),
        Metrics(namespace=names.METRICS_NAMESPACE, service=names.SERVICE_NAME),
    )


def outcome_metric(operation_id: str, status: int) -> str:
    """``getCapabilityStatement`` + 200 → ``GetCapabilityStatementServed`` (``<Subject><Event>``)."""
    event = "Served" if status < 400 else "Refused" if status < 500 else "Failed"
    return f"{operation_id[:1].upper()}{operation_id[1:]}{event}"


def metrics_enabled() -> bool:
    return os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() != "true"


def count(metrics: Metrics, name: str, value: float = 1) -> None:
    """Add to a ``<Subject><Event>`` count metric (nothing when metrics are disabled, as locally)."""
    if metrics_enabled():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def count_requests(metrics: Metrics) -> Callable[[str, int], None]:
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() == "true":
        # Powertools never flushes a disabled metric set, so adding to it would only grow memory.
        return lambda operation_id, status: None

    def observe(operation_id: str, status: int) -> None:
        metrics.add_metric(name=outcome_metric(operation_id, status), unit=MetricUnit.Count, value=1)

    return observe
