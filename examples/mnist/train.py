"""Train the reference ConvNet on scikit-learn's bundled 8x8 digits (upscaled to 28x28) and archive it.

Nothing is downloaded: the digits ship with scikit-learn. Writes ``mnist.mar`` (built-in ``image_classifier``) into
the export directory, plus a held-out ``digit.png`` and the held-out accuracy.

    python examples/mnist/train.py --export-path model_store --samples-dir .
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from convnet import ConvNet  # noqa: E402

from modelserve.archive.packer import PackRequest, pack_archive  # noqa: E402

MEAN, STD = 0.1307, 0.3081
CONFIG = """\
minWorkers: 2
maxWorkers: 2
batchSize: 8
maxBatchDelay: 5
handler:
  grayscale: true
  resize: 28
  crop: 28
  mean: [0.1307]
  std: [0.3081]
  topk: 3
"""


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits as 28x28 uint8 images, as a PNG of them would decode."""
    digits = load_digits()
    images = []
    for image in digits.images:
        small = Image.fromarray((image * (255.0 / 16.0)).astype(np.uint8), "L")
        images.append(np.asarray(small.resize((28, 28), Image.Resampling.BILINEAR)))
    return np.stack(images), digits.target.astype(np.int64)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((images.astype(np.float32) / 255.0) - MEAN) / STD)[:, None]


def train(epochs: int, seed: int) -> tuple[ConvNet, float, np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    images, labels = digit_images()
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    model = ConvNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = to_tensor(x_train), torch.from_numpy(y_train)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss = F.nll_loss(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = model(to_tensor(x_test)).argmax(dim=1).numpy()
    accuracy = float((predictions == y_test).mean())
    return model, accuracy, x_test, y_test


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-path", type=Path, default=Path("model_store"))
    parser.add_argument("--samples-dir", type=Path, default=Path())
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, accuracy, x_test, y_test = train(args.epochs, args.seed)
    print(f"held-out accuracy {accuracy:.3f} after {time.monotonic() - started:.0f} s")
    args.export_path.mkdir(parents=True, exist_ok=True)
    args.samples_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        weights = Path(work) / "convnet.pth"
        torch.save(model.state_dict(), weights)
        labels = Path(work) / "index_to_name.json"
        labels.write_text(json.dumps({str(i): str(i) for i in range(10)}))
        config = Path(work) / "model-config.yaml"
        config.write_text(CONFIG)
        path = pack_archive(
            PackRequest(
                model_name="mnist", handler="image_classifier", model_file=HERE / "convnet.py",
                serialized_file=weights, extra_files=[labels], config_file=config,
                export_path=args.export_path, force=True,
            )
        )  # fmt: skip
    print(f"archived {path}")
    for index in range(len(y_test)):
        if y_test[index] == 7:
            Image.fromarray(x_test[index], "L").save(args.samples_dir / "digit.png")
            print(f"wrote {args.samples_dir / 'digit.png'} (a held-out 7)")
            break
    return 0 if accuracy >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
