"""TorchServe's ``ts.protocol.otf_message_handler``: only ``send_intermediate_predict_response``, the part of it that
handlers call (its older, deprecated home; ``ts.handler_utils.utils`` has the same function)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ts.handler_utils import utils
from ts.utils.util import deprecated


@deprecated(version=1.0, replacement="ts.handler_utils.utils.send_intermediate_predict_response")
def send_intermediate_predict_response(
    ret: list[Any], req_id_map: Mapping[int, str], message: str, code: int, context: Any = None
) -> None:
    utils.send_intermediate_predict_response(ret, req_id_map, message, code, context)
