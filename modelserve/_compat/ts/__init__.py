"""TorchServe's handler API (the ``ts`` package), provided by modelserve for handlers written against TorchServe 0.12.

Only worker processes see this package (``modelserve.tscompat``); a real TorchServe installation takes precedence.
"""

from ts.version import __version__

__all__ = ["__version__"]
