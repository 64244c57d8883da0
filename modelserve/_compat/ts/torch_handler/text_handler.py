"""TorchServe's ``TextHandler``: a vocabulary (``source_vocab.pt``) and the text clean-up steps of its handlers.

The vocabulary is read with ``weights_only=True``: a plain ``{token: index}`` dict or a list of tokens. A pickled
torchtext ``Vocab`` object is code and is refused; save ``dict(vocab.get_stoi())`` instead.
"""

from __future__ import annotations

import logging
import os
import re
import string
import unicodedata
from abc import ABC
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ts.handler_utils.text_utils import get_tokenizer
from ts.torch_handler.base_handler import BaseHandler
from ts.torch_handler.contractions import CONTRACTION_MAP
from ts.utils.util import CLEANUP_REGEX

logger = logging.getLogger(__name__)

CONTRACTIONS_PATTERN = re.compile(
    "({})".format("|".join(re.escape(k) for k in CONTRACTION_MAP)), flags=re.IGNORECASE | re.DOTALL
)
UNKNOWN_TOKEN = "<unk>"


class Vocabulary(Mapping[str, int]):
    """Token -> index; an unknown token maps to ``<unk>``'s index (or 0), as a torchtext vocab with a default does."""

    def __init__(self, stoi: Mapping[str, int]) -> None:
        self.stoi = dict(stoi)
        self.default = self.stoi.get(UNKNOWN_TOKEN, 0)

    def __getitem__(self, token: str) -> int:
        return self.stoi.get(token, self.default)

    def __iter__(self) -> Any:
        return iter(self.stoi)

    def __len__(self) -> int:
        return len(self.stoi)


def load_vocabulary(path: str) -> Vocabulary:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(
            f"cannot read {os.path.basename(path)} with weights_only=True: save the vocabulary as a plain "
            f"{{token: index}} dict (e.g. dict(vocab.get_stoi())) - {str(exc).splitlines()[0][:200]}"
        ) from None
    if isinstance(loaded, dict):
        return Vocabulary({str(k): int(v) for k, v in loaded.items()})
    if isinstance(loaded, (list, tuple)):
        return Vocabulary({str(token): index for index, token in enumerate(loaded)})
    raise RuntimeError(f"{os.path.basename(path)} holds a {type(loaded).__name__}; expected a dict or a list")


class TextHandler(BaseHandler, ABC):
    """Base class of the text handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: Any = None
        self.tokenizer = get_tokenizer("basic_english")
        self.input_text: Any = None
        self.lig: Any = None

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.initialized = False
        named = self.manifest["model"].get("sourceVocab")
        path = os.path.join(context.system_properties["model_dir"], named) if named else None
        self.source_vocab = load_vocabulary(path or self.get_source_vocab_path(context))
        try:
            from captum.attr import LayerIntegratedGradients
        except ImportError:
            self.lig = None
        else:
            self.lig = LayerIntegratedGradients(self.model, self.model.embedding)
        self.initialized = True

    def get_source_vocab_path(self, ctx: Any) -> str:
        path = os.path.join(ctx.system_properties.get("model_dir"), "source_vocab.pt")
        if os.path.isfile(path):
            return path
        raise RuntimeError("Missing the source_vocab file: archive it as source_vocab.pt with --extra-files")

    def _expand_contractions(self, text: str) -> str:
        def expand(match: re.Match[str]) -> str:
            found = match.group(0)
            expansion = CONTRACTION_MAP.get(found) or CONTRACTION_MAP.get(found.lower(), found)
            return found[0] + expansion[1:]

        return CONTRACTIONS_PATTERN.sub(expand, text).replace("'", "")

    def _remove_accented_characters(self, text: str) -> str:
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8", "ignore")

    def _remove_html_tags(self, text: str) -> str:
        return CLEANUP_REGEX.sub("", text)

    def _remove_puncutation(self, *args: Any, **kwargs: Any) -> str:
        """TorchServe's misspelled name, kept for handlers that call it."""
        return self._remove_punctuation(*args, **kwargs)

    def _remove_punctuation(self, text: str) -> str:
        return text.translate(str.maketrans("", "", string.punctuation))

    def _tokenize(self, text: str) -> list[str]:
        return self.tokenizer(text)

    def get_word_token(self, input_tokens: list[str]) -> list[str]:
        return [token.replace("\u0120", "") for token in input_tokens]  # the BPE space marker

    def summarize_attributions(self, attributions: Any) -> Any:
        attributions = F.softmax(attributions, dim=-1)
        return attributions / torch.norm(attributions.sum(dim=-1))
