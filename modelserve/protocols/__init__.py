"""One codec per protocol, and the table that finds it.

Workers decode requests and encode results through :data:`CODECS`; the server writes errors in the shape of the
codec a route (or, for a path no route serves, :func:`codec_for_path`) names. A new protocol is one module with a
:class:`~modelserve.protocols.codec.Codec` and one entry in the table. Nothing here imports aiohttp or, outside the
worker-only modules, numpy.
"""

from __future__ import annotations

from modelserve.protocols import kserve_v1, oip, torchserve
from modelserve.protocols.codec import Codec

# keyed by the Protocol's value, which is what an InferRequest carries across the worker socket
CODECS: dict[str, Codec] = {codec.protocol.value: codec for codec in (torchserve.CODEC, kserve_v1.CODEC, oip.CODEC)}
_BY_PREFIX = [(prefix, codec) for codec in CODECS.values() for prefix in codec.prefixes]


def codec_for_path(path: str) -> Codec:
    """The codec whose error shape a path answers with: the protocol owning its prefix, else TorchServe's."""
    for prefix, codec in _BY_PREFIX:
        if path.startswith(prefix):
            return codec
    return torchserve.CODEC
