"""An ImageClassifier subclass with its own topk and a custom postprocess on top of the default one."""

from typing import Any

from ts.torch_handler.image_classifier import ImageClassifier


class TopKClassifier(ImageClassifier):
    topk = 3

    def postprocess(self, data: Any) -> list[Any]:
        results = super().postprocess(data)
        return [{"best": next(iter(r)), "scores": {k: round(v, 6) for k, v in r.items()}} for r in results]
