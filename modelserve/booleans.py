"""What reads as true and false: the server's readings of a boolean setting or parameter, in one place."""

from __future__ import annotations

from collections.abc import Collection

TRUE_FALSE: tuple[Collection[str], Collection[str]] = (("true",), ("false",))
# config.properties and the environment also take the usual synonyms, and an empty value for false
SYNONYMS: tuple[Collection[str], Collection[str]] = (("true", "yes", "1", "on"), ("false", "no", "0", "off", ""))


def parse_bool(value: object, words: tuple[Collection[str], Collection[str]] = TRUE_FALSE) -> bool:
    """A bool as it is; a text when it is one of ``words`` (true words, false words) in any case, spaces around
    ignored; ValueError for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in words[0]:
            return True
        if lowered in words[1]:
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def query_bool(text: str) -> bool:
    """TorchServe's reading of a query parameter (Java's ``Boolean.parseBoolean``): true only when it says "true" in
    any case; anything else, ``yes`` and ``1`` included, is false."""
    return text.lower() == "true"
