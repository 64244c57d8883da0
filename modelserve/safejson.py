"""JSON from and to the network: untrusted text parsed with a nesting limit, results encoded as valid JSON only.

Python's parser recurses once per nesting level: a body of a few thousand ``[`` raises RecursionError (and code that
walks the result recurses again). :func:`loads` measures the nesting first, without recursion and at C speed, and
refuses a document nested deeper than :data:`MAX_DEPTH` with :class:`JSONInputError` (a ValueError).

Python writes ``NaN``, ``Infinity`` and ``-Infinity`` for non-finite floats, which is not JSON: most clients refuse the
whole body. :func:`dumps` writes them as ``null`` instead, as JavaScript's ``JSON.stringify`` does; numpy reads
``null`` back as NaN in a float array (``np.asarray([None], dtype=np.float32)``), so tensors survive the round trip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 100  # far past any real request (OIP tensors need one level per dimension), far below the recursion limit

# a JSON string, written so that the regex engine never backtracks (a body with an unclosed quote stays linear)
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING, re.DOTALL)
# bytes.translate arguments: every opening bracket becomes "[", every closing one "]", everything else goes
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NON_FINITE = re.compile(rf"({_STRING})|\bNaN\b|-?\bInfinity\b", re.DOTALL)


class JSONInputError(ValueError):
    """A document that is not JSON, or nested deeper than the limit; the message says which."""


def nesting_depth_exceeds(text: str, max_depth: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in ``text`` nest deeper than ``max_depth`` (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= max_depth:
        return False  # the common case: too few brackets to nest that deep
    import numpy as np  # only for bodies with many brackets: the parent rarely gets here

    outside_strings = _STRINGS.sub("", text).encode("utf-8", "surrogatepass")
    # the kinds of bracket do not matter for depth (mixing them up is a syntax error the parser reports)
    brackets = np.frombuffer(outside_strings.translate(_AS_BRACKETS, _NOT_BRACKETS), dtype=np.uint8)
    steps = np.where(brackets == ord("["), 1, -1).astype(np.int32)
    return bool(steps.size) and int(np.cumsum(steps).max()) > max_depth


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON (bytes in UTF-8, -16 or -32, as ``json.loads`` takes them); JSONInputError when it is not
    JSON or nests deeper than ``max_depth``."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
        try:
            text = data.decode(json.detect_encoding(data))
        except UnicodeDecodeError as exc:
            raise JSONInputError(f"not valid UTF-8 text: {exc}") from None
    else:
        text = raw
    if nesting_depth_exceeds(text, max_depth):
        raise JSONInputError(f"arrays and objects nest deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONInputError(str(exc)) from None
    except RecursionError:  # a recursion limit set lower than the depth limit
        raise JSONInputError(f"arrays and objects nest too deep to parse (limit {max_depth})") from None


def dumps(value: Any, default: Callable[[Any], Any] | None = None, separators: tuple[str, str] | None = None) -> bytes:
    """``value`` as UTF-8 JSON bytes; non-finite floats become ``null``.

    Raises TypeError for a value that is not serializable, ValueError for a circular one, RecursionError for one
    nested past the interpreter's recursion limit.
    """
    try:
        return json.dumps(value, default=default, separators=separators, allow_nan=False).encode()
    except ValueError:
        # out-of-range floats (or a circular structure, which fails again below): write them, then replace them
        text = json.dumps(value, default=default, separators=separators)
    return _NON_FINITE.sub(lambda match: match.group(1) or "null", text).encode()
