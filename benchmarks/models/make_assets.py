"""Write the reference models as TorchScript (seeded weights) and the sample inputs ``digit.png`` and ``cat.jpg``,
and W3's model: a scikit-learn classifier of the bundled iris data as ONNX (``iris.onnx``, ``feature_names.json``,
one row as ``iris.json``).

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
    iris(out)


def iris(out: Path) -> None:
    """W3: an ONNX tabular model whose compute is tiny, so a server's own cost is nearly all of a request's."""
    import json

    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    x = data.data.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        x, np.array(data.target_names)[data.target]
    )
    (out / "iris.onnx").write_bytes(to_onnx(model, x[:1], target_opset=17).SerializeToString())
    (out / "feature_names.json").write_text(json.dumps(features))
    (out / "iris.json").write_text(json.dumps({f: round(float(v), 2) for f, v in zip(features, x[70], strict=True)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
