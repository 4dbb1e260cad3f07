"""The floor: parse every line of the given files with bare `orjson.loads`, nothing else.

    python -m benchmarks.baseline FILE…

Prints `{"lines": N, "bytes": N, "seconds": S}`. It reads the files the way jobvault does
(large reads, split on newlines) so the ratio compares parsing work, not I/O strategies.
"""

from __future__ import annotations

import sys
import time

import orjson

READ = 8 * 1024 * 1024


def parse_file(path: str) -> tuple[int, int]:
    """Parse every non-blank line of `path`; return (lines, bytes)."""
    lines = size = 0
    rest = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(READ)
            if not block:
                break
            size += len(block)
            data = rest + block
            parts = data.split(b"\n")
            rest = parts.pop()
            for line in parts:
                if line.strip():
                    orjson.loads(line)
                lines += 1
    if rest.strip():
        orjson.loads(rest)
        lines += 1
    return lines, size


def main(paths: list[str]) -> None:
    start = time.perf_counter()
    lines = size = 0
    for path in paths:
        n, b = parse_file(path)
        lines += n
        size += b
    seconds = time.perf_counter() - start
    print(orjson.dumps({"lines": lines, "bytes": size, "seconds": seconds}).decode())


if __name__ == "__main__":
    main(sys.argv[1:])
