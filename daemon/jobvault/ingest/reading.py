"""One file's new bytes → archive chunks and parsed lines, handed to a `Sink`.

Shared by the engine (whose sink feeds the session book and the round's batch) and the worker
processes (whose sink feeds their own accumulators), so a file is read, cut into chunks,
parsed and judged the same way wherever it is read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from jobvault.ingest.reader import Segment, Source, fingerprint_len, read_lines, read_tail
from jobvault.store.archive import FileRow
from jobvault.store.writer import Chunk

CHUNK_MAX = 4 * 1024 * 1024
TAIL_CHECK = 64  # archived bytes kept in memory to check the file still continues them
TOO_LONG = "line longer than max_line_bytes"
UNTERMINATED = "unterminated final line"


class Sink(Protocol):
    """Where a file's reading goes."""

    def chunk(self, chunk: Chunk) -> None:
        """An archive chunk (its compression may already be under way)."""

    def bad(self, row: FileRow, offset: int, length: int, reason: str, tail: bool) -> None:
        """A line that cannot be used (`tail`: the file's unterminated last bytes)."""

    def line(self, row: FileRow, offset: int, obj: dict[str, Any]) -> str | None:
        """A parsed line (its session may bind `row.job_key`); return its bad values."""


@dataclass(slots=True)
class ReadOutcome:
    read: int  # bytes read
    more: bool  # bytes remain past the budget
    pending: int  # an incomplete last line waiting for its newline
    tail: bytes | None  # the last archived bytes, when known
    lines: int


def iter_segment_lines(segment: Segment) -> Iterator[tuple[int, memoryview]]:
    """The lines of a segment, as views of its bytes (a long line is not copied)."""
    data = segment.data
    view = memoryview(data)
    start = 0
    while True:
        newline = data.find(b"\n", start)
        if newline < 0:
            break
        yield segment.start + start, view[start:newline]
        start = newline + 1
    if start < len(data):
        yield segment.start + start, view[start:]


def read_file(
    row: FileRow,
    src: Source,
    fd: int | None,
    *,
    final: bool,
    budget: int,
    max_line: int,
    sink: Sink,
    pack: Callable[[Chunk], None],
    old_tail: bytes | None = None,
) -> ReadOutcome:
    """Read `row`'s file from its offset (up to about `budget` bytes), updating `row`."""
    result = read_lines(src, row.offset, row.in_long_line, budget, max_line)
    segments = result.segments
    more = not result.eof
    if final and not more and not result.in_long_line:
        tail = read_tail(src, result.offset, max_line)
        if tail is not None:
            segments.append(tail)
    st = os.fstat(fd) if fd is not None else None
    if st is not None:
        if row.codec == "zstd":
            if result.eof:  # read to its end: unchanged until its size or time changes
                row.disk_size, row.mtime_ns = st.st_size, st.st_mtime_ns
        else:
            row.mtime_ns = st.st_mtime_ns
    disk = st.st_size if st is not None and row.codec == "plain" else 0
    if not segments:
        row.size = max(row.size, result.offset + result.pending, disk)
        return ReadOutcome(0, more, result.pending, None, 0)
    # An unterminated tail archived before is continued by these bytes: the fragment that
    # ends it is no line of its own (the joined line is read whole from the archive).
    skip_first = row.partial_tail
    row.partial_tail = False
    read = lines = 0
    for chunk, members in _chunks(row.id, segments, pack):
        for segment in members:
            read += len(segment.data)
            if segment.kind == "long":
                if segment.line_start:
                    sink.bad(row, segment.start, len(segment.data), TOO_LONG, False)
                    chunk.line_count += 1
            else:
                count = _parse(row, segment, max_line, sink, skip_first)
                chunk.line_count += count
                lines += count
            skip_first = False
            if segment.kind == "tail":
                row.partial_tail = True
        sink.chunk(chunk)
    first = segments[0]
    row.offset = segments[-1].end
    row.in_long_line = result.in_long_line
    row.line_count += sum(1 for s in segments if s.kind == "long" and s.line_start)
    row.line_count += lines
    row.size = max(row.size, row.offset, disk)
    want = fingerprint_len(row.offset)
    if row.fp_len < want:
        head = (
            first.data[:want]
            if first.start == 0 and len(first.data) >= want
            else src.pread(want, 0)
        )
        row.fp_len = want
        row.fp_hash = hashlib.blake2b(head, digest_size=16).digest()
    last = segments[-1].data
    kept = None
    if len(last) >= TAIL_CHECK or old_tail is not None or first.start == 0:
        kept = ((old_tail or b"") + last)[-TAIL_CHECK:]
    return ReadOutcome(read, more, result.pending if not final else 0, kept, lines)


def _chunks(
    file_id: int, segments: list[Segment], pack: Callable[[Chunk], None]
) -> Iterator[tuple[Chunk, list[Segment]]]:
    """Cut segments into chunks of about CHUNK_MAX and start compressing each before its
    lines are parsed, so compression runs on another core meanwhile."""
    groups: list[tuple[Chunk, list[Segment]]] = []
    run: list[Segment] = []
    size = 0
    for segment in segments:
        run.append(segment)
        size += len(segment.data)
        if size >= CHUNK_MAX:
            groups.append(_chunk(file_id, run, pack))
            run, size = [], 0
    if run:
        groups.append(_chunk(file_id, run, pack))
    return iter(groups)


def _chunk(
    file_id: int, run: list[Segment], pack: Callable[[Chunk], None]
) -> tuple[Chunk, list[Segment]]:
    data = run[0].data if len(run) == 1 else b"".join(seg.data for seg in run)
    chunk = Chunk(file_id, run[0].start, data, 0)
    pack(chunk)
    return chunk, run


def _parse(row: FileRow, segment: Segment, max_line: int, sink: Sink, skip_first: bool) -> int:
    """Parse a segment's lines; hand problems and objects to the sink; count the lines."""
    is_tail = segment.kind == "tail"
    loads = orjson.loads
    count = 0
    for offset, line in iter_segment_lines(segment):
        if skip_first:
            skip_first = False
            continue
        count += 1
        problem = None
        obj: Any = None
        if len(line) > max_line:
            problem = TOO_LONG
        elif line:
            try:
                obj = loads(line)
            except orjson.JSONDecodeError as exc:
                if not line.tobytes().isspace():  # a blank line is no error
                    problem = f"invalid JSON: {exc}"
            else:
                if obj.__class__ is not dict:
                    problem = "not a JSON object"
        if is_tail and (problem is not None or obj.__class__ is not dict):
            # The unterminated last line of a finalized file: archived, reported when it
            # cannot be read (a complete JSON object without its newline is no error).
            problem = UNTERMINATED + (f" ({problem})" if problem else "")
        if problem is not None:
            sink.bad(row, offset, len(line), problem, is_tail)
        if obj.__class__ is dict:
            bad_value = sink.line(row, offset, obj)
            if bad_value is not None and problem is None:
                sink.bad(row, offset, len(line), bad_value, False)
    return count
