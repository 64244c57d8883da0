"""The gRPC contracts: TorchServe's inference.proto and management.proto, and the Open Inference Protocol's messages
(oip.proto), with the Python modules grpcio-tools generates from them (``*_pb2.py``, ``*_pb2_grpc.py``, ``*.pyi``).

Regenerate after editing a .proto, from the repository root (grpcio-tools and googleapis-common-protos installed;
``SITE`` is the site-packages directory that holds ``grpc_tools`` and ``google/rpc``)::

    python -m grpc_tools.protoc -I . -I "$SITE/grpc_tools/_proto" -I "$SITE" \
        --python_out=. --pyi_out=. --grpc_python_out=. modelserve/server/protos/*.proto
    rm modelserve/server/protos/oip_pb2_grpc.py  # oip.proto declares no service (see grpc_oip.py)

Only the gRPC front (:mod:`modelserve.server.grpc_server`) imports these, and only when gRPC is on.
"""
