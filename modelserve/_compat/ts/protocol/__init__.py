"""TorchServe's ``ts.protocol``."""
