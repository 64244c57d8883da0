"""modelserve: a pure-Python model archiver and multi-model inference server."""

__version__ = "0.1.0"
