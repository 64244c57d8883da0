"""TorchServe's ``ts.metrics``: dimensions, metric types and the metrics cache handlers reach as ``context.metrics``."""
