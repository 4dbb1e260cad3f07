"""Reading appended bytes from a file: complete lines only, streaming, bounded memory.

The tailer knows nothing of JSON or of the database. It reads from a committed offset with
`os.pread` on a descriptor it keeps open (so a file deleted mid-read is still drained to its
end), returns `Segment`s of whole lines, and holds back a trailing partial line until its
newline arrives (or until the file is finalized, see `read_tail`). A line longer than
`max_line` is passed through as "long" segments, never held in memory whole.

Identity is device + inode plus a fingerprint (hash of the first bytes), so a replaced file or
a reused inode is told apart from the file we were reading.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

FINGERPRINT_BYTES = 1024
READ_BLOCK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of bytes read from a file, starting at `start`.

    kind: "lines" holds complete lines (ends with a newline); "long" holds part of an
    over-long line (`line_start` marks its first part); "tail" holds the final unterminated
    bytes of a finalized file.
    """

    start: int
    data: bytes
    kind: str = "lines"
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


def fingerprint(fd: int, length: int) -> bytes:
    """Hash the first `length` bytes of the file."""
    data = os.pread(fd, length, 0) if length else b""
    return hashlib.blake2b(data, digest_size=16).digest()


def fingerprint_len(size: int) -> int:
    return min(size, FINGERPRINT_BYTES)


def read_lines(
    fd: int,
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
        chunk = os.pread(fd, block, pos + carried)
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


def read_tail(fd: int, offset: int, max_line: int) -> Segment | None:
    """Read the unterminated bytes after `offset` (the file is being finalized)."""
    data = os.pread(fd, max_line + 1, offset)
    if not data:
        return None
    newline = data.rfind(b"\n")
    if newline >= 0:  # complete lines arrived meanwhile: leave them to read_lines
        return None
    return Segment(offset, data[:max_line], "tail")
