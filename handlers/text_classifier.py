"""Built-in ``text_classifier``: text in, ``{"label": probability}`` for every class out.

A plain tokenizer: lowercase, words and single punctuation marks, mapped through a vocabulary file from the archive
(``vocab.txt``: one token per line, line number = id; or ``vocab.json``: {token: id}). Unknown words map to
``<unk>`` (or id 1), padding uses ``<pad>`` (or id 0). The model takes token ids ``[N, L]`` (int64) and returns
class scores ``[N, C]``. Model config (``handler:``): ``vocab`` (file name), ``max_length`` (256); labels from
index_to_name.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from modelserve.handler import BadInputError, BaseHandler, Context
from modelserve.vision import load_labels, softmax

TOKEN = re.compile(r"\w+|[^\w\s]")


def read_vocabulary(path: Path) -> dict[str, int]:
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return {str(k): int(v) for k, v in data.items()}
    lines = path.read_text(encoding="utf-8").splitlines()
    return {token: index for index, token in enumerate(line.strip() for line in lines) if token}


class TextClassifier(BaseHandler):
    # batches of up to 8 when no batchSize is configured (one request still goes at once)
    default_batch_size = 8

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        config = self.handler_config
        model_dir = Path(context.system_properties["model_dir"])
        names = [config["vocab"]] if "vocab" in config else ["vocab.txt", "vocab.json"]
        found = [model_dir / n for n in names if (model_dir / n).is_file()]
        if not found:
            raise FileNotFoundError(f"text_classifier needs a vocabulary file in the archive ({' or '.join(names)})")
        self.vocab = read_vocabulary(found[0])
        self.unk = self.vocab.get("<unk>", 1)
        self.pad = self.vocab.get("<pad>", 0)
        self.max_length = int(config.get("max_length", 256))
        self.labels = load_labels(model_dir / "index_to_name.json")

    def preprocess_one(self, item: dict[str, Any]) -> list[int]:
        value = item.get("data", item.get("body"))
        if isinstance(value, dict):
            value = value.get("text", value.get("data"))
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise BadInputError("the text is not valid UTF-8") from None
        if not isinstance(value, str):
            raise BadInputError('send plain text, or JSON {"text": "..."}')
        tokens = TOKEN.findall(value.lower())[: self.max_length]
        if not tokens:
            raise BadInputError("the text is empty")
        return [self.vocab.get(token, self.unk) for token in tokens]

    def collate(self, samples: list[Any]) -> np.ndarray:
        width = max(len(s) for s in samples)
        batch = np.full((len(samples), width), self.pad, dtype=np.int64)
        for row, ids in enumerate(samples):
            batch[row, : len(ids)] = ids
        return batch

    def postprocess(self, data: Any) -> list[Any]:
        probabilities = softmax(np.asarray(data, dtype=np.float64).reshape(len(data), -1))
        return [{self.labels.get(str(i), str(i)): float(p) for i, p in enumerate(row)} for row in probabilities]
