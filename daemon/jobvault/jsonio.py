"""JSON for the commands people run: the standard library's codec for small documents,
orjson's for large ones.

orjson is several times faster than `json`, but importing it costs about 10 ms on a 2-core
machine (it imports dataclasses, inspect, uuid and platform): more than a read command
spends on what it usually parses and prints (`jobvault stats daily --json` is a few
kilobytes; `jobs --json --limit 50` about 140 KB, 2 ms with `json`'s C scanner and its
indenting encoder). So the read path (the CLI's output, the socket client, the queries the
CLI runs on the database itself) goes through here: orjson is used past `LARGE` bytes or
items, or whenever it is already loaded (the daemon, an import), and `json` otherwise.

Both give the same values; the text printed is the same too (two-space indent, UTF-8 kept,
`tests/test_jsonio.py`), except that a float that needs an exponent may be spelled with a
zero after the `e` (`1e-05` for `1e-5`). What `json` would accept and orjson would not
(`NaN`, `Infinity`) is refused here as well.
"""

from __future__ import annotations

import json
import sys

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any

LARGE = 512 * 1024  # bytes of JSON to parse past which orjson's import pays for itself
MANY = 300  # items (list entries, or those of a dict's lists) to print past which it does


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _fast() -> bool:
    return "orjson" in sys.modules


def loads(data: bytes | str) -> Any:
    """Parse one JSON document; ValueError (json.JSONDecodeError) when it is not one."""
    if _fast() or len(data) > LARGE:
        import orjson

        return orjson.loads(data)
    return json.loads(data, parse_constant=_no_constant)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (orjson's spelling: no spaces, nothing escaped that need not be)."""
    if _fast():
        import orjson

        return orjson.dumps(value)
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode()
    except (TypeError, ValueError, UnicodeEncodeError):  # what orjson turns into JSON itself
        import orjson

        return orjson.dumps(value)


def _items(value: Any) -> int:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        return sum(len(v) for v in value.values() if isinstance(v, list | dict))
    return 0


def pretty(value: Any) -> str:
    """JSON indented by two spaces, as `--json` prints it."""
    if not _fast() and _items(value) <= MANY:
        try:
            return json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            pass
    import orjson

    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
