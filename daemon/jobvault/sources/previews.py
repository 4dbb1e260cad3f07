"""Tool-call previews of a session, kept out of memory once they add up.

A session holds two 500-character previews per tool call until its record is built; a long
session has tens of thousands of tool calls, so its previews alone would grow memory by
about 70 MB per GB of transcript. `Previews` keeps them as UTF-8 bytes up to a budget and
appends the rest to an unlinked scratch file next to the database (private like it, and not
on a RAM-backed /tmp), holding only an integer reference in memory. `ToolCallList` resolves
the references while the store writes the rows, so a record's tool calls are never all in
memory with their previews at once.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Generic, NamedTuple, TypeVar, overload

from jobvault.records import ToolCall
from jobvault.sources.spill import spill_dir, spill_prefix

MEMORY_BUDGET = 2 * 1024 * 1024  # preview bytes held in memory per session
WRITE_BUFFER = 256 * 1024  # spilled previews written to the scratch file at a time
PreviewRef = bytes | int | None  # the text itself, or (offset << 32 | length) in the file


class Previews:
    """A session's previews: bytes in memory up to `budget`, then in a scratch file.

    Spilled previews are appended to the file a WRITE_BUFFER at a time, not one write per
    tool call.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = MEMORY_BUDGET if budget is None else budget
        self.held = 0
        self.spilled = 0  # bytes spilled: those in the file, then those in `_pending`
        self._written = 0
        self._pending = bytearray()
        self._file: IO[bytes] | None = None
        self._closer: Callable[[], object] | None = None

    def put(self, text: str | None) -> PreviewRef:
        if text is None:
            return None
        data = text.encode("utf-8", "surrogatepass")
        if self.held + len(data) <= self.budget or not data:
            self.held += len(data)
            return data
        if self._file is None:
            try:
                # Lives as long as this object (the session's accumulator): closed with it.
                self._file = tempfile.TemporaryFile(prefix=spill_prefix(), dir=spill_dir())  # noqa: SIM115
            except OSError:  # no room for the scratch file: keep it in memory, not lose it
                self.held += len(data)
                return data
            self._closer = weakref.finalize(self, self._file.close)
        ref = self.spilled << 32 | len(data)
        self.spilled += len(data)
        self._pending += data
        if len(self._pending) >= WRITE_BUFFER:
            self._write()
        return ref

    def _write(self) -> None:
        assert self._file is not None
        try:
            while self._pending:
                done = os.pwrite(self._file.fileno(), self._pending, self._written)
                self._written += done
                del self._pending[:done]
        except OSError:  # (disk full): the rest stays in memory, written with the next ones
            pass

    def get(self, ref: PreviewRef) -> str | None:
        if ref is None:
            return None
        if isinstance(ref, bytes):
            return ref.decode("utf-8", "surrogatepass")
        assert self._file is not None
        offset, length = ref >> 32, ref & 0xFFFFFFFF
        data = b""
        if offset < self._written:
            data = os.pread(self._file.fileno(), min(length, self._written - offset), offset)
        if len(data) < length:  # (the rest is still in the buffer)
            start = offset + len(data) - self._written
            data += self._pending[start : start + length - len(data)]
        return data.decode("utf-8", "surrogatepass")

    def close(self) -> None:
        if self._file is not None:
            if self._closer is not None:
                self._closer()
            self._file = None


class RawCall(NamedTuple):
    """A tool call of a record with its previews still as references, in seq order."""

    tool_use_id: str | None
    name: str
    agent_id: str | None
    is_error: bool
    timestamp: str | None
    input_ref: PreviewRef
    output_ref: PreviewRef


U = TypeVar("U")
R = TypeVar("R")


class ToolCallList(Sequence[ToolCall]):
    """A record's tool calls, their previews read back from `Previews` one at a time.

    `calls` is a list, or (for a session spilled to disk) a function that reads them again
    in order, so that even the list of a huge session is never all in memory.
    """

    def __init__(
        self,
        calls: list[RawCall] | Callable[[], Iterator[RawCall]],
        previews: Previews,
        length: int | None = None,
    ) -> None:
        self._calls = calls
        self._previews = previews
        self._length = len(calls) if isinstance(calls, list) else length
        assert self._length is not None, "a lazy list needs its length"

    def __len__(self) -> int:
        assert self._length is not None
        return self._length

    def _raw(self) -> Iterator[RawCall]:
        return iter(self._calls) if isinstance(self._calls, list) else self._calls()

    @overload
    def __getitem__(self, index: int) -> ToolCall: ...

    @overload
    def __getitem__(self, index: slice) -> list[ToolCall]: ...

    def __getitem__(self, index: int | slice) -> ToolCall | list[ToolCall]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if isinstance(self._calls, list):
            raw = self._calls[index]
        else:
            raw = next(itertools.islice(self._calls(), index, None))
        tid, name, agent, is_error, ts, in_ref, out_ref = raw
        get = self._previews.get
        return ToolCall(index, tid, name, agent, is_error, ts, get(in_ref), get(out_ref))

    def __iter__(self) -> Iterator[ToolCall]:
        get = self._previews.get
        for seq, (tid, name, agent, is_error, ts, in_ref, out_ref) in enumerate(self._raw()):
            yield ToolCall(seq, tid, name, agent, is_error, ts, get(in_ref), get(out_ref))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics, like a list


class ToolCallCollector(Generic[U, R]):
    """One pass over an accumulator's tool calls, for its statistics, giving the record's list.

    `rows()` yields (raw call, the adapter's call, its result) in order. Iterating the
    collector yields (call, result) and keeps the raw calls when `keep`; otherwise the list
    reads them again from `rows()` when it is written (a spilled session).
    Iterating yields (raw call, call, result).
    """

    def __init__(
        self,
        rows: Callable[[], Iterator[tuple[RawCall, U, R]]],
        previews: Previews,
        keep: bool,
    ) -> None:
        self._rows = rows
        self._previews = previews
        self._calls: list[RawCall] | None = [] if keep else None
        self._count = 0

    def __iter__(self) -> Iterator[tuple[RawCall, U, R]]:
        for row in self._rows():
            self._count += 1
            if self._calls is not None:
                self._calls.append(row[0])
            yield row

    def listing(self) -> ToolCallList:
        if self._calls is not None:
            return ToolCallList(self._calls, self._previews)
        rows = self._rows
        return ToolCallList(lambda: (raw for raw, _, _ in rows()), self._previews, self._count)
