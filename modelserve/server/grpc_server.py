"""The gRPC front: one grpc.aio server on ``grpc_inference_port`` (the Open Inference Protocol's
``inference.GRPCInferenceService`` and TorchServe's ``InferenceAPIsService``) and one on ``grpc_management_port``
(TorchServe's ``ManagementAPIsService``), in the parent's event loop, beside the HTTP apps.

Limits: messages up to ``max_request_size`` in and ``max_response_size`` (plus the message's own framing) out, else
RESOURCE_EXHAUSTED; at most ``grpc_max_concurrent_streams`` calls in progress per server (a stream is one call), one
more is RESOURCE_EXHAUSTED; a call past its deadline is cancelled, and so is its job. :mod:`modelserve.server.lifecycle`
imports this module only when gRPC is on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from modelserve.config import is_loopback
from modelserve.errors import ModelServeError
from modelserve.server import grpc_oip, grpc_torchserve
from modelserve.server.dataplane import DataPlane
from modelserve.server.grpc_common import Context
from modelserve.server.state import ServerState

log = logging.getLogger("modelserve.grpc")
# the bytes a response message adds around a body of max_response_size (names, shapes, framing)
RESPONSE_SLACK = 64 << 10


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcFront:
    """The two gRPC servers: built, bound and started by :meth:`start`, stopped by :meth:`stop`."""

    def __init__(self, state: ServerState, token: str | None) -> None:
        self.state = state
        self.context = Context(state, DataPlane(state), token)
        self.servers: list[grpc.aio.Server] = []

    def _options(self, max_age_ms: int, grace_ms: int) -> list[tuple[str, Any]]:
        config = self.state.config
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", config.max_request_size),
            ("grpc.max_send_message_length", config.max_response_size + RESPONSE_SLACK),
            ("grpc.so_reuseport", 0),  # a port in use is an error, never a second server sharing it
        ]
        if max_age_ms:
            options.append(("grpc.max_connection_age_ms", max_age_ms))
        if grace_ms:
            options.append(("grpc.max_connection_age_grace_ms", grace_ms))
        return options

    async def _serve(
        self, handlers: list[grpc.GenericRpcHandler], host: str, port: int, max_age_ms: int, grace_ms: int
    ) -> str:
        server = grpc.aio.server(
            options=self._options(max_age_ms, grace_ms),
            maximum_concurrent_rpcs=self.state.config.grpc_max_concurrent_streams,
        )
        server.add_generic_rpc_handlers(handlers)
        try:
            bound = server.add_insecure_port(_shown(host, port))
        except RuntimeError as exc:
            raise ModelServeError(f"cannot bind gRPC address {_shown(host, port)}: {exc}") from None
        if bound == 0:
            raise ModelServeError(f"cannot bind gRPC address {_shown(host, port)}")
        await server.start()
        self.servers.append(server)
        if not is_loopback(host):
            log.warning("gRPC on %s is reachable from other machines: put authentication in front of it", host)
        return _shown(host, bound)

    async def start(self) -> tuple[str, str]:
        config = self.state.config
        inference = await self._serve(
            [grpc_oip.handler(self.context), grpc_torchserve.inference_handler(self.context)],
            config.grpc_inference_address,
            config.grpc_inference_port,
            config.grpc_inference_max_connection_age_ms,
            config.grpc_inference_max_connection_age_grace_ms,
        )
        management = await self._serve(
            [grpc_torchserve.management_handler(self.context)],
            config.grpc_management_address,
            config.grpc_management_port,
            config.grpc_management_max_connection_age_ms,
            config.grpc_management_max_connection_age_grace_ms,
        )
        return inference, management

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop taking calls; the calls in progress get ``grace_s`` to finish."""
        servers, self.servers = self.servers, []
        await asyncio.gather(*(server.stop(grace_s) for server in servers))
