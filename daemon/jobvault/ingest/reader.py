"""Reading appended bytes from a file: complete lines only, streaming, bounded memory.

The reader knows nothing of JSON or of the database. It reads from a committed offset through
a `Source` (a descriptor kept open, so a file deleted mid-read is still drained to its end; or
the streaming decompression of a `.jsonl.zst` rollout, whose offsets count decompressed bytes),
returns `Segment`s of whole lines, and holds back a trailing partial line until its newline
arrives (or until the file is finalized, see `read_tail`). A line longer than `max_line` is
passed through as "long" segments, never held in memory whole.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import zstandard

FINGERPRINT_BYTES = 1024
READ_BLOCK = 1024 * 1024
SKIP_BLOCK = 4 * 1024 * 1024  # decompressed bytes discarded at a time to reach an offset
# Decompressed bytes a zstd source keeps behind its position: a read ends at its last
# complete line and the next one starts there again, before the stream's position; without
# them every read of a large rollout would decompress it again from its start.
LOOK_BEHIND = 4 * 1024 * 1024

SegmentKind = Literal["lines", "long", "tail"]


class Source(Protocol):
    """Random-access reads of a file's content (decompressed content for a `.zst`)."""

    def pread(self, size: int, offset: int) -> bytes: ...

    def close(self) -> None: ...


class PlainSource:
    """A plain file through a descriptor the tracker owns (it is not closed here)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        """The descriptor belongs to the tracker."""


class ZstdSource:
    """The decompressed content of a zstd file, read forward by streaming decompression.

    Reads are expected in increasing order (as a tailer makes them); the last LOOK_BEHIND
    bytes read are kept to serve a read that steps back into them (the partial line a read
    ended on), and a read before those starts the stream again. Memory stays at the
    decompressor's window and that look-behind (a few MB, dropped at the end of the stream),
    whatever the file's size. It reads through the descriptor's own position, which nothing
    else uses (the tracker owns and closes the descriptor).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._file = os.fdopen(fd, "rb", buffering=0, closefd=False)
        self._reader: Any = None  # a zstandard.ZstdDecompressionReader
        self._pos = 0
        self._behind: deque[bytes] = deque()  # the bytes just before `_pos`
        self._behind_len = 0

    def _restart(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._file.seek(0)
        dctx = zstandard.ZstdDecompressor()
        self._reader = dctx.stream_reader(self._file, read_across_frames=True, closefd=False)
        self._pos = 0
        self._forget()

    def _forget(self) -> None:
        self._behind.clear()
        self._behind_len = 0

    def _keep(self, data: bytes) -> None:
        if len(data) >= LOOK_BEHIND:
            self._behind.clear()
            data = data[-LOOK_BEHIND:]
            self._behind_len = 0
        self._behind.append(data)
        self._behind_len += len(data)
        while self._behind_len - len(self._behind[0]) >= LOOK_BEHIND:
            self._behind_len -= len(self._behind.popleft())

    def pread(self, size: int, offset: int) -> bytes:
        if self._reader is None or offset < self._pos - self._behind_len:
            self._restart()
        assert self._reader is not None
        out: list[bytes] = []
        got = 0
        if offset < self._pos:  # a step back into the bytes just read
            kept = b"".join(self._behind)
            start = len(kept) - (self._pos - offset)
            out.append(kept[start : start + size])
            got = len(out[0])
            if got == size:
                return out[0]
        else:
            if self._pos < offset:
                self._forget()  # (the bytes skipped are not kept)
            while self._pos < offset:  # skip forward to the offset
                skipped = self._reader.read(min(SKIP_BLOCK, offset - self._pos))
                if not skipped:
                    return b""
                self._pos += len(skipped)
        while got < size:  # a stream read may return less than asked before its end
            data = self._reader.read(size - got)
            if not data:
                self._forget()  # the end: a file read to its end keeps no memory
                break
            out.append(data)
            got += len(data)
            self._pos += len(data)
            self._keep(data)
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._forget()
        self._file.close()  # (not the descriptor)


def open_source(fd: int, codec: str) -> Source:
    """The reader of a file's content: plain bytes, or a zstd file's decompressed bytes."""
    return ZstdSource(fd) if codec == "zstd" else PlainSource(fd)


def codec_of(path: str) -> str:
    return "zstd" if path.endswith(".zst") else "plain"


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of bytes read from a file, starting at `start`.

    kind: "lines" holds complete lines (ends with a newline); "long" holds part of an
    over-long line (`line_start` marks its first part); "tail" holds the final unterminated
    bytes of a finalized file.
    """

    start: int
    data: bytes
    kind: SegmentKind = "lines"
    line_start: bool = False

    @property
    def end(self) -> int:
        return self.start + len(self.data)


@dataclass(slots=True)
class ReadResult:
    segments: list[Segment]
    offset: int
    in_long_line: bool
    pending: int  # bytes of an incomplete last line left unread after `offset`
    eof: bool  # the read stopped at the end of the file, not at the budget


def fingerprint(source: Source, length: int) -> bytes:
    """Hash the first `length` bytes of the file's content."""
    data = source.pread(length, 0) if length else b""
    return hashlib.blake2b(data, digest_size=16).digest()


def holds(source: Source, fp_len: int, fp_hash: bytes | None, offset: int, tail: bytes) -> bool:
    """Does the content still begin with what was archived of it: the hash of its first
    `fp_len` bytes, and `tail` (the last archived bytes) just before `offset`? (Nothing
    archived yet: nothing to tell.)"""
    if fp_len == 0:
        return True
    if fingerprint(source, fp_len) != fp_hash:
        return False
    return not tail or source.pread(len(tail), offset - len(tail)) == tail


def fingerprint_len(size: int) -> int:
    return min(size, FINGERPRINT_BYTES)


def read_lines(
    source: Source,
    offset: int,
    in_long_line: bool,
    budget: int,
    max_line: int,
    block: int = READ_BLOCK,
) -> ReadResult:
    """Read complete lines from `offset` until EOF or about `budget` bytes."""
    segments: list[Segment] = []
    pos = offset
    carry: list[bytes] = []  # the pieces of an incomplete line (no newline in them)
    carried = 0
    consumed = 0
    eof = False
    # Past the budget, keep reading while the first line is still incomplete: stopping there
    # would leave it to be read again from its start next time, for ever (a line longer than
    # the budget but within max_line). `carry` stays bounded by max_line, and is joined once
    # (a line of many blocks is not copied again for every block).
    while consumed < budget or (carried and not segments):
        chunk = source.pread(block, pos + carried)
        if not chunk:
            eof = True
            break
        consumed += len(chunk)
        if in_long_line:
            newline = chunk.find(b"\n")
            end = len(chunk) if newline < 0 else newline + 1
            segments.append(Segment(pos, chunk[:end], "long"))
            pos += end
            if newline >= 0:
                in_long_line = False  # the rest of the chunk is re-read as normal data
            continue
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            head = chunk if newline + 1 == len(chunk) else chunk[: newline + 1]
            data = b"".join((*carry, head)) if carry else head
            segments.append(Segment(pos, data))
            pos += len(data)
            rest = chunk[newline + 1 :]
            carry, carried = ([rest], len(rest)) if rest else ([], 0)
        else:
            carry.append(chunk)
            carried += len(chunk)
        if carried > max_line:
            data = b"".join(carry)
            segments.append(Segment(pos, data, "long", line_start=True))
            pos += len(data)
            carry, carried = [], 0
            in_long_line = True
    return ReadResult(segments, pos, in_long_line, carried, eof)


def read_tail(source: Source, offset: int, max_line: int) -> Segment | None:
    """Read the unterminated bytes after `offset` (the file is being finalized)."""
    data = source.pread(max_line + 1, offset)
    if not data:
        return None
    newline = data.rfind(b"\n")
    if newline >= 0:  # complete lines arrived meanwhile: leave them to read_lines
        return None
    return Segment(offset, data[:max_line], "tail")
