"""TorchServe's ``ts.context``: ``Context`` and ``RequestProcessor`` with TorchServe's constructors.

Workers hand handlers modelserve's ``Context``, which already has TorchServe's accessors; these subclasses exist for
code (handler unit tests, mostly) that builds a context itself the way TorchServe does.
"""

from __future__ import annotations

from typing import Any

from modelserve.handler import Context as ServerContext
from modelserve.handler import RequestInfo, ResponseInfo
from modelserve.handler import RequestProcessor as ServerRequestProcessor


class Context(ServerContext):
    def __init__(
        self,
        model_name: str,
        model_dir: str,
        manifest: dict[str, Any],
        batch_size: int,
        gpu: int | None,
        mms_version: str,
        limit_max_image_pixels: bool = True,
        metrics: Any = None,
        model_yaml_config: dict[str, Any] | None = None,
    ) -> None:
        model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
        super().__init__(
            model_name=model_name,
            model_version=str(model.get("modelVersion", "")),
            model_dir=model_dir,
            manifest=manifest,
            batch_size=batch_size,
            model_yaml_config=model_yaml_config or {},
            intra_op_threads=0,
            gpu_id=gpu,
            server_version=mms_version,
        )
        self.system_properties["limit_max_image_pixels"] = limit_max_image_pixels
        if metrics is not None:
            self.metrics = metrics


class RequestProcessor(ServerRequestProcessor):
    def __init__(self, request_header: dict[str, str]) -> None:
        headers = {str(k).lower(): v for k, v in request_header.items()}
        super().__init__(RequestInfo("", headers, str(headers.get("content-type", ""))), ResponseInfo())


__all__ = ["Context", "RequestProcessor"]
