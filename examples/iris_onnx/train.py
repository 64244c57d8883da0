"""Train a scikit-learn classifier on the bundled iris data, convert it with skl2onnx and archive it (``onnx``).

python examples/iris_onnx/train.py --export-path model_store --samples-dir .
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelserve.archive.packer import PackRequest, pack_archive

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 16
maxBatchDelay: 5
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-path", type=Path, default=Path("model_store"))
    parser.add_argument("--samples-dir", type=Path, default=Path())
    args = parser.parse_args()
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data.astype(np.float32), iris.target, test_size=0.3, random_state=0, stratify=iris.target
    )
    names = np.array(iris.target_names)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(x_train, names[y_train])
    accuracy = float((model.predict(x_test) == names[y_test]).mean())
    print(f"held-out accuracy {accuracy:.3f}")
    onnx_model = to_onnx(model, x_train[:1], target_opset=17)
    args.export_path.mkdir(parents=True, exist_ok=True)
    args.samples_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        model_path = Path(work) / "iris.onnx"
        model_path.write_bytes(onnx_model.SerializeToString())
        (Path(work) / "feature_names.json").write_text(json.dumps(FEATURES))
        (Path(work) / "model-config.yaml").write_text(CONFIG)
        path = pack_archive(
            PackRequest(
                model_name="iris", handler="onnx", serialized_file=model_path,
                extra_files=[Path(work) / "feature_names.json"], config_file=Path(work) / "model-config.yaml",
                export_path=args.export_path, force=True,
            )
        )  # fmt: skip
    print(f"archived {path}")
    sample = {"instances": [dict(zip(FEATURES, map(float, row), strict=True)) for row in x_test[:2]]}
    (args.samples_dir / "iris.json").write_text(json.dumps(sample))
    print(f"wrote {args.samples_dir / 'iris.json'}")
    return 0 if accuracy >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
