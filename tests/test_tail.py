"""The tailer reads complete lines only, streams long lines, and splits nowhere else."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from jobvault.ingest.reader import PlainSource, read_lines, read_tail
from jobvault.store.archive import iter_archived_lines


def _fd(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def _src(fd: int) -> PlainSource:
    return PlainSource(fd)


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    fd = _fd(tmp_path / "f", b'{"a":1}\n{"b":')
    result = read_lines(_src(fd), 0, False, 1 << 20, 1 << 20)
    assert [s.data for s in result.segments] == [b'{"a":1}\n']
    assert result.offset == 8 and result.pending == 5 and result.eof
    tail = read_tail(_src(fd), result.offset, 1 << 20)
    assert tail is not None and tail.data == b'{"b":' and tail.kind == "tail"
    os.close(fd)


def test_multibyte_character_split_across_read_blocks(tmp_path: Path) -> None:
    line = ('{"t":"' + "é" * 40 + '"}\n').encode()
    data = line * 3
    fd = _fd(tmp_path / "f", data)
    # Blocks of 7 bytes cut inside the two-byte characters again and again.
    result = read_lines(_src(fd), 0, False, 1 << 20, 1 << 20, block=7)
    assert b"".join(s.data for s in result.segments) == data
    for segment in result.segments:
        segment.data.decode()  # every segment ends on a line boundary: valid UTF-8
    os.close(fd)


def test_long_line_is_streamed_in_parts(tmp_path: Path) -> None:
    data = b"x" * 5000 + b"\n" + b'{"ok":1}\n'
    fd = _fd(tmp_path / "f", data)
    result = read_lines(_src(fd), 0, False, 1 << 20, 1024, block=512)
    kinds = [(s.kind, s.line_start) for s in result.segments]
    assert kinds[0] == ("long", True)
    assert all(k == "long" for k, _ in kinds[:-1])
    assert result.segments[-1].data.endswith(b'{"ok":1}\n')
    assert b"".join(s.data for s in result.segments) == data
    assert not result.in_long_line
    os.close(fd)


def test_budget_bounds_one_read(tmp_path: Path) -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(10_000))
    fd = _fd(tmp_path / "f", data)
    first = read_lines(_src(fd), 0, False, 4096, 1 << 20, block=1024)
    assert not first.eof and 0 < first.offset <= 4096 + 1024
    rest = read_lines(_src(fd), first.offset, False, 1 << 30, 1 << 20)
    assert b"".join(s.data for s in first.segments + rest.segments) == data
    os.close(fd)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=20),
    trailing=st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")),
)
def test_archive_splits_back_into_the_same_lines(
    lines: list[bytes], cuts: list[int], trailing: bytes
) -> None:
    data = b"".join(line + b"\n" for line in lines) + trailing
    chunks, pos = [], 0
    for cut in cuts:  # arbitrary chunk boundaries, as partial tails and long lines produce
        if pos >= len(data):
            break
        chunks.append((pos, data[pos : pos + cut]))
        pos += cut
    if pos < len(data):
        chunks.append((pos, data[pos:]))
    got = list(iter_archived_lines(chunks, max_line=1 << 20))
    expected, offset = [], 0
    for line in lines:
        expected.append((offset, line))
        offset += len(line) + 1
    if trailing:
        expected.append((offset, trailing))
    assert got == expected


def test_archive_skips_lines_over_the_limit() -> None:
    data = b"a\n" + b"y" * 100 + b"\nb\n"
    chunks = [(0, data[:10]), (10, data[10:60]), (60, data[60:])]
    assert list(iter_archived_lines(chunks, max_line=50)) == [(0, b"a"), (2, None), (103, b"b")]


def test_line_longer_than_the_budget_but_within_max_line(tmp_path: Path) -> None:
    """A 10 MB line with an 8 MB read budget is read whole, not retried for ever."""
    data = b'{"a":"' + b"z" * (10 * 1024 * 1024) + b'"}\n{"b":1}\n'
    fd = _fd(tmp_path / "f", data)
    result = read_lines(_src(fd), 0, False, 8 * 1024 * 1024, 16 * 1024 * 1024)
    assert result.segments and result.segments[0].kind == "lines"
    assert result.offset >= 10 * 1024 * 1024
    rest = read_lines(_src(fd), result.offset, False, 8 * 1024 * 1024, 16 * 1024 * 1024)
    assert b"".join(s.data for s in result.segments + rest.segments) == data
    os.close(fd)


def test_the_budget_still_bounds_reads_of_ordinary_lines(tmp_path: Path) -> None:
    data = b"".join(b'{"n":%d,"pad":"%s"}\n' % (i, b"p" * (i % 300)) for i in range(50_000))
    fd = _fd(tmp_path / "f", data)
    result = read_lines(_src(fd), 0, False, 1 << 20, 16 << 20, block=64 * 1024)
    assert not result.eof and result.offset <= (1 << 20) + 64 * 1024
    os.close(fd)
