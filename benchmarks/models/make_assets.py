"""Write the reference models as TorchScript (seeded weights) and the sample inputs ``digit.png`` and ``cat.jpg``.

python benchmarks/models/make_assets.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "examples" / "mnist"))  # the ConvNet lives with the MNIST example

from convnet import ConvNet  # noqa: E402
from resnet import ResNet18  # noqa: E402

MODELS = {"convnet": (ConvNet, (1, 1, 28, 28)), "resnet18": (ResNet18, (1, 3, 224, 224))}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, (cls, shape) in MODELS.items():
        model = cls().eval()
        torch.save(model.state_dict(), out / f"{name}.pth")
        torch.jit.save(torch.jit.trace(model, torch.randn(*shape)), str(out / f"{name}.pt"))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(out / "digit.png")
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), "RGB").save(out / "cat.jpg", quality=90)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
