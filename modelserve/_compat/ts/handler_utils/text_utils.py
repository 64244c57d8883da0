"""TorchServe's text helpers: a ``basic_english`` tokenizer and n-gram expansion (no torchtext needed)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

# basic_english: lower-case, pad the punctuation it keeps, drop quotes and <br />, turn ; : into spaces
_RULES = [
    (re.compile(r"\'"), " '  "),
    (re.compile(r"\""), ""),
    (re.compile(r"\."), " . "),
    (re.compile(r"<br \/>"), " "),
    (re.compile(r","), " , "),
    (re.compile(r"\("), " ( "),
    (re.compile(r"\)"), " ) "),
    (re.compile(r"\!"), " ! "),
    (re.compile(r"\?"), " ? "),
    (re.compile(r"\;"), " "),
    (re.compile(r"\:"), " "),
    (re.compile(r"\s+"), " "),
]


def _basic_english(line: str) -> list[str]:
    text = line.lower()
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text.split()


def get_tokenizer(tokenizer: str | Callable[[str], list[str]] | None) -> Callable[[str], list[str]]:
    """``"basic_english"``, ``None`` (split on whitespace) or a callable used as is."""
    if tokenizer is None:
        return str.split
    if callable(tokenizer):
        return tokenizer
    if tokenizer == "basic_english":
        return _basic_english
    raise ValueError(f"tokenizer {tokenizer!r} is not available here: pass 'basic_english', None or a callable")


def ngrams_iterator(token_list: Iterable[str], ngrams: int) -> Iterator[str]:
    """Every token, then every run of 2..``ngrams`` consecutive tokens joined by a space."""
    tokens = list(token_list)
    yield from tokens
    for n in range(2, ngrams + 1):
        for start in range(len(tokens) - n + 1):
            yield " ".join(tokens[start : start + n])
