"""Built-in handlers. Each module is self-contained and imports only ``modelserve.handler`` (plus torch or
onnxruntime lazily); naming one with ``modelserve-archive --handler NAME`` copies its file into the archive."""
