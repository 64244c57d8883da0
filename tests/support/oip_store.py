"""The ONNX models the OIP tests serve over HTTP and gRPC: ``dtypes`` (one Identity per datatype) and ``affine``,
each with the tensor handler, one worker and batches of up to 4."""

from __future__ import annotations

from pathlib import Path

from modelserve.archive.packer import PackRequest, pack_archive
from tests.support import models

ONE = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 10\n"


def write_onnx_models(work: Path) -> Path:
    """identity.onnx, affine.onnx and their model-config.yaml in ``work``."""
    models.identity_onnx(work / "identity.onnx")
    models.affine_onnx(work / "affine.onnx")
    (work / "config.yaml").write_text(ONE)
    return work


def pack_oip_models(onnx_files: Path, store: Path) -> None:
    """dtypes.mar and affine.mar in ``store``, from the files of ``write_onnx_models``."""
    for name, file in (("dtypes", "identity.onnx"), ("affine", "affine.onnx")):
        pack_archive(PackRequest(model_name=name, handler="tensor", serialized_file=onnx_files / file,
                                 config_file=onnx_files / "config.yaml", export_path=store))  # fmt: skip
