"""JSON from files a user or a download supplies: every failure a ``ValueError`` naming the file.

``json.loads`` alone keeps the last of two equal keys (silently losing data), raises a bare
``RecursionError`` on deeply nested input and a ``ValueError`` that names no file on an integer of
thousands of digits. ``parse`` refuses all three with one exception, ``InvalidJSON``; ``loads``
and ``load`` add the file (and the line, where known) to its message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class InvalidJSON(ValueError):
    """Text that is not JSON this project accepts: ``reason`` says why, ``line`` where (or 0)."""

    def __init__(self, reason: str, line: int = 0) -> None:
        super().__init__(reason)
        self.reason, self.line = reason, line


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidJSON(
                f"the key {key!r} appears twice in one object; only one value can be kept, "
                "so remove or rename the other"
            )
        seen.add(key)
    return dict(pairs)


def parse(text: str | bytes) -> Any:
    """The JSON value in ``text``; ``InvalidJSON`` if it is not valid JSON, repeats a key in one
    object or is nested too deeply."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise InvalidJSON(f"{err.msg} at column {err.colno}", err.lineno) from None
    except InvalidJSON:
        raise
    except RecursionError:
        raise InvalidJSON("nested too deeply") from None
    except ValueError as err:  # an integer of too many digits, undecodable bytes
        raise InvalidJSON(str(err)) from None


def loads(text: str | bytes, source: str | Path) -> Any:
    """``parse``, with ``source`` (a file name) and the line in the error's message."""
    try:
        return parse(text)
    except InvalidJSON as err:
        where = f"{source}:{err.line}" if err.line else str(source)
        raise ValueError(f"{where}: invalid JSON ({err.reason})") from None


def load(path: Path) -> Any:
    """``loads`` of the file ``path``."""
    return loads(path.read_bytes(), path)
