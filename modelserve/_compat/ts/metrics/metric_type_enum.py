"""TorchServe's ``MetricTypes``: counter, gauge, histogram (modelserve's own metric kinds)."""

from modelserve.handler_metrics import MetricKind as MetricTypes

__all__ = ["MetricTypes"]
