"""TorchServe's ``TextClassifier``: one text in, ``{label: probability}`` for every class out.

The model is called as ``model(token_ids, offsets)`` (an ``EmbeddingBag`` text model); like TorchServe's, it
classifies the first request of a batch only, so serve it with ``batchSize: 1``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from modelserve.handler import BadInputError
from ts.handler_utils.text_utils import ngrams_iterator
from ts.torch_handler.text_handler import TextHandler
from ts.utils.util import map_class_to_label


class TextClassifier(TextHandler):
    ngrams = 2

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        line = data[0]
        text = line.get("data") or line.get("body")
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                raise BadInputError("the text is not valid UTF-8") from None
        if not isinstance(text, str):
            raise BadInputError(f"expected text, got {type(text).__name__}")
        text = self._remove_html_tags(text).lower()
        text = self._expand_contractions(text)
        text = self._remove_accented_characters(text)
        text = self._remove_punctuation(text)
        tokens = self._tokenize(text)
        ids = [self.source_vocab[token] for token in ngrams_iterator(tokens, self.ngrams)]
        if not ids:
            raise BadInputError("the text has no words")
        return torch.as_tensor(ids, device=self.device), tokens

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        text_tensor, _ = data
        offsets = torch.as_tensor([0], device=self.device)
        return super().inference(text_tensor, offsets)

    def postprocess(self, data: Any) -> list[Any]:
        return map_class_to_label(F.softmax(data, dim=-1).tolist(), self.mapping)

    def get_insights(self, text_preprocess: Any, _: Any, target: Any = 0) -> Any:
        if self.lig is None:
            raise RuntimeError("explanations of text models need captum: pip install captum")
        from captum.attr import TokenReferenceBase

        text_tensor, all_tokens = text_preprocess
        offsets = torch.tensor([0]).to(self.device)
        reference = TokenReferenceBase().generate_reference(text_tensor.shape[0], device=self.device).squeeze(0)
        attributions = self.lig.attribute(
            text_tensor, reference, additional_forward_args=(offsets), return_convergence_delta=False, target=target
        )
        summary = self.summarize_attributions(attributions)
        return [{"importances": summary.tolist(), "words": self.get_word_token(all_tokens)}]
