"""Reading the archive back: file rows, chunks, and the lines and objects they hold.

Kept apart from the writer so that the read side (queries, reports, replay, the CLI) does not
import the writer, the source adapters or the record builders.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import zstandard

from jobvault.errors import StoreError


@dataclass(slots=True)
class FileRow:
    """A tracked file as stored (one generation of a path)."""

    id: int
    source: str
    path: str
    root: str
    rel_path: str
    generation: int
    dev: int
    ino: int
    fp_len: int
    fp_hash: bytes | None
    offset: int
    size: int
    mtime_ns: int
    in_long_line: bool
    partial_tail: bool
    state: str
    job_key: str | None
    role: str
    agent_id: str | None
    line_count: int
    bad_lines: int
    lost_bytes: int
    # "zstd": a compressed rollout (`.jsonl.zst`); offsets count its decompressed bytes, and
    # `disk_size` is the compressed file's size when it was last read to its end.
    codec: str = "plain"
    disk_size: int = 0


FILE_COLUMNS = (
    "id, source, path, root, rel_path, generation, dev, ino, fp_len, fp_hash, offset, size, "
    "mtime_ns, in_long_line, partial_tail, state, job_key, role, agent_id, line_count, "
    "bad_lines, lost_bytes, codec, disk_size"
)


def file_row(row: tuple[Any, ...]) -> FileRow:
    values = list(row)
    values[13] = bool(values[13])
    values[14] = bool(values[14])
    return FileRow(*values)


def iter_chunks(
    conn: sqlite3.Connection, file_id: int, decompressor: zstandard.ZstdDecompressor | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, raw bytes) of a file's chunks in offset order, one chunk in memory."""
    if decompressor is None:
        import zstandard  # here, not at the top: most commands never read the archive

        decompressor = zstandard.ZstdDecompressor()
    dctx = decompressor
    ids = [
        r[0]
        for r in conn.execute("SELECT id FROM chunks WHERE file_id = ? ORDER BY offset", (file_id,))
    ]
    for chunk_id in ids:
        offset, length, codec, data = conn.execute(
            "SELECT offset, length, codec, data FROM chunks WHERE id = ?", (chunk_id,)
        ).fetchone()
        raw = dctx.decompress(data, max_output_size=length) if codec == "zstd" else bytes(data)
        if len(raw) != length:
            raise StoreError(f"archive chunk {chunk_id} is damaged (length {len(raw)} != {length})")
        yield offset, raw


def iter_archived_lines(
    chunks: Iterable[tuple[int, bytes]], max_line: int
) -> Iterator[tuple[int, bytes | None]]:
    """Split archived chunks back into (offset, line) pairs, joining lines split across chunks.

    A line longer than `max_line` is yielded as (offset, None) without being held in memory;
    the final unterminated line (if any) is yielded too.
    """
    carry = b""
    carry_start = 0
    skipping = False
    for offset, data in chunks:
        if skipping:
            newline = data.find(b"\n")
            if newline < 0:
                continue
            yield carry_start, None
            skipping = False
            data, offset = data[newline + 1 :], offset + newline + 1
        elif carry:
            data, offset = carry + data, carry_start
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            if newline - start > max_line:
                yield offset + start, None
            else:
                yield offset + start, data[start:newline]
            start = newline + 1
        carry = data[start:]
        carry_start = offset + start
        if len(carry) > max_line:
            skipping, carry = True, b""
    if skipping:
        yield carry_start, None
    elif carry:
        yield carry_start, carry


def iter_archived_objects(
    chunks: Iterable[tuple[int, bytes]], max_line: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """The archived lines that are JSON objects, as (offset, object); the rest are skipped
    (they were counted as bad lines when they were archived)."""
    for offset, line in iter_archived_lines(chunks, max_line):
        if line is None or not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield offset, obj
