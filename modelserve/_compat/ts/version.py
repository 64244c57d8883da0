"""The TorchServe release whose handler API this package provides."""

__version__ = "0.12.0"
