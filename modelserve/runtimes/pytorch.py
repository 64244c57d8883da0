"""What the torch formats share: threads and device, numpy in and out, input errors, the optimized CPU form.

torch is imported when a model loads or runs, never when this module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from modelserve.handler_errors import BadInputError
from modelserve.runtimes.base import ModelRuntime, first_line

if TYPE_CHECKING:
    import numpy as np  # the server imports this table for platform and needs_torch: no numpy there

PLATFORM = "pytorch_libtorch"
_INPUT_ERROR_MARKERS = ("shape", "size mismatch", "expected", "dimension", "dtype", "must match", "channels", "sizes")


def torch_device(threads: int, device_type: str) -> str:
    """Set torch's thread count (when given) and pick the device: CUDA for ``gpu`` when there is one, else CPU."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return "cuda" if device_type == "gpu" and torch.cuda.is_available() else "cpu"


def _looks_like_input_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _INPUT_ERROR_MARKERS)


def _to_torch(value: Any, device: str) -> Any:
    import numpy as np  # loaded already in a worker that runs a model
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).to(device)
    if isinstance(value, list):
        return [_to_torch(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_torch(v, device) for k, v in value.items()}
    return value


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numpy(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value


class TorchRuntime(ModelRuntime):
    """A torch module (scripted or eager) run under ``inference_mode``, through its optimized form where it wins."""

    platform: ClassVar[str] = PLATFORM
    needs_torch: ClassVar[bool] = True

    def __init__(self, model: Any, device: str = "cpu") -> None:
        super().__init__(model, device)
        self.forms: Any = None  # a FormChooser once enable_optimization ran on CPU

    def enable_optimization(self, release_original: bool) -> None:
        """Let ``run`` use the frozen, optimized form of the model where it measures faster (CPU only).

        With ``release_original`` the handler promises to call the model through ``run`` only: once the optimized
        form wins everywhere, ``model`` becomes that form and the original is freed.
        """
        if self.device != "cpu":
            return
        from modelserve.optimize import FormChooser

        def settled(form: Any) -> None:
            if release_original:
                self.model = form

        self.forms = FormChooser(self.model, f"{self.name} model", settled)

    def run(self, *args: Any) -> Any:
        import torch

        tensors = [_to_torch(a, self.device) for a in args]
        call = self.forms if self.forms is not None else self.model
        with torch.inference_mode():
            try:
                output = call(*tensors)
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                if _looks_like_input_error(exc):
                    raise BadInputError(f"the model rejected the input: {first_line(exc)}") from None
                raise
        return _to_numpy(output)

    def run_named(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        """The arrays are passed positionally, in the order given (a torch module's inputs have no names here)."""
        output = self.run(*feeds.values())
        return list(output) if isinstance(output, (list, tuple)) else [output]
