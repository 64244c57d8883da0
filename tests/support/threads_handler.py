"""Test handler: reports the thread settings its worker runs with."""

import os
import sys
from typing import Any

from modelserve.handler import BaseHandler, Context


class ThreadsHandler(BaseHandler):
    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        loaded_before = "torch" in sys.modules
        import torch

        report = {
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(),
            "intra_op_threads": context.system_properties["intra_op_threads"],
            "torch_loaded_before": loaded_before,
        }
        return [report for _ in data]
