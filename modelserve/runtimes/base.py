"""The contract of a model runtime: one ``ModelRuntime`` subclass per model format.

The class answers from the manifest alone whether an archive holds its format, the platform name the Open Inference
Protocol reports, and whether its workers import torch: the server asks these without importing torch or
onnxruntime. An instance is the loaded model: it runs on numpy arrays and describes its tensors with OIP datatypes.
Subclasses import their framework only when they load.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modelserve.archive.manifest import Manifest
from modelserve.handler_errors import HandlerError

if TYPE_CHECKING:
    import numpy as np  # the server imports this table for platform and needs_torch: no numpy there


class UnknownFormatError(HandlerError):
    """The manifest names a serialized file that no runtime reads."""


@dataclass
class TensorSpec:
    """An input or output of a model: name, dtype (numpy name; ``string`` for text) and shape (-1 for any)."""

    name: str
    dtype: str
    shape: list[int]

    def describe(self) -> dict[str, Any]:
        """The tensor as OIP metadata lists it; a type OIP has no name for (bfloat16) keeps the model's name."""
        from modelserve.datatypes import oip_datatype  # numpy: worker side only

        try:
            datatype = oip_datatype(self.dtype)
        except ValueError:
            datatype = self.dtype.upper()
        return {"name": self.name, "datatype": datatype, "shape": list(self.shape)}


def suffix_of(manifest: Manifest) -> str | None:
    """The serialized file's suffix (lower case, with its dot), or None when the manifest names no such file."""
    return Path(manifest.serialized_file).suffix.lower() if manifest.serialized_file else None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, short enough for a load failure or a 400 reason."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class ModelRuntime(abc.ABC):
    """A model of one format, ready to run on numpy arrays.

    ``run(*args)`` takes arrays positionally (ONNX also takes one dict of feeds) and returns what the model returns,
    as numpy; ``run_named(feeds)`` takes arrays by input name and returns every output in order, which is what a
    handler serving any format calls.
    """

    name: ClassVar[str]  # the format, as logs name it
    platform: ClassVar[str]  # the Open Inference Protocol's platform name
    needs_torch: ClassVar[bool]  # whether loading imports torch (the server then forks workers from its template)
    suffixes: ClassVar[tuple[str, ...]]  # serialized-file suffixes this runtime reads
    feeds_by_name: ClassVar[bool] = False  # whether every named input must be fed (else inputs are positional)

    def __init__(
        self,
        model: Any,
        device: str = "cpu",
        inputs: list[TensorSpec] | None = None,
        outputs: list[TensorSpec] | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.inputs = inputs or []
        self.outputs = outputs or []

    @classmethod
    @abc.abstractmethod
    def detect(cls, manifest: Manifest) -> bool:
        """Whether the archive this manifest describes holds this runtime's format."""

    @classmethod
    @abc.abstractmethod
    def load(cls, model_dir: Path, manifest: Manifest, threads: int, device_type: str) -> ModelRuntime:
        """Load the manifest's model from the extracted archive; HandlerError with the reason when it cannot."""

    @abc.abstractmethod
    def run(self, *args: Any) -> Any:
        """Run the model; numpy arrays in, numpy arrays (or lists/dicts of them) out."""

    @abc.abstractmethod
    def run_named(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        """Run the model on inputs given by name; every output, in the model's order."""

    def enable_optimization(self, release_original: bool) -> None:  # noqa: B027 - most formats have no faster form
        """Let ``run`` use a faster form of the model where one exists (``release_original``: see TorchRuntime)."""

    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """Inputs and outputs as the Open Inference Protocol's metadata lists them."""
        return {"inputs": [s.describe() for s in self.inputs], "outputs": [s.describe() for s in self.outputs]}
