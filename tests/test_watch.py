"""The watchers on a real directory: which changes wake the daemon.

Both implementations run here on Linux: inotify read on the event loop (the default) and
watchdog's observer (macOS's, and the fallback), through the same interface.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from jobvault.ingest.watch import InotifyWatcher, Watching, open_watcher

KINDS = ["inotify", "watchdog"] if sys.platform.startswith("linux") else ["watchdog"]


class Hints:
    """What a watcher of `root` tells the loop."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.seen: list[str] = []
        self.watcher: Watching = open_watcher(asyncio.get_running_loop(), self.seen.append, kind)
        self.root = root
        self.watcher.refresh([root])

    async def __aenter__(self) -> Hints:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.watcher.stop()

    async def of(self, action: Callable[[], object], *want: str) -> set[str]:
        """The hints `action` causes: within 0.5 s, or until every path in `want` came (up
        to 10 s: watchdog holds a rename back to pair its two halves, longer under load)."""
        await asyncio.sleep(0.3)  # (the watches are in place; earlier events are in)
        self.seen.clear()
        action()
        await asyncio.sleep(0.5)
        deadline = time.monotonic() + 10
        while not set(want) <= set(self.seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return set(self.seen)


@pytest.fixture(params=KINDS)
async def hints(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Hints]:
    root = tmp_path / "w"
    root.mkdir()
    async with Hints(request.param, root) as watched:
        yield watched


def _append(path: Path, data: bytes = b'{"a": 2}\n') -> Callable[[], None]:
    def append() -> None:
        with path.open("ab") as fh:
            fh.write(data)

    return append


async def test_reading_a_file_wakes_nothing_and_writing_it_does(hints: Hints) -> None:
    """Opening and reading a transcript (as the daemon itself does) is no change: the kernel
    is not even asked for those events. An append, a new file, a rename and a deletion are."""
    project = hints.root / "-p"
    project.mkdir()
    path = project / "s.jsonl"
    path.write_bytes(b'{"a": 1}\n')

    def read() -> None:
        for _ in range(20):
            with path.open("rb") as fh:
                fh.read()

    new, moved = project / "t.jsonl", project / "u.jsonl"
    assert await hints.of(read) == set()
    assert await hints.of(_append(path), str(path)) == {str(path)}
    assert str(new) in await hints.of(lambda: new.write_bytes(b"{}\n"), str(new))
    assert {str(new), str(moved)} <= await hints.of(lambda: new.rename(moved), str(new), str(moved))
    assert str(moved) in await hints.of(moved.unlink, str(moved))
    # A new directory (a session's subagents/) is rescanned whole: a sentinel hint.
    sentinel = str(project / "s") + "/"
    assert sentinel in await hints.of(lambda: (project / "s").mkdir(), sentinel)
    # A chmod (a file made readable, say) is a hint too; on Linux, where the kernel is asked.
    if hints.kind == "inotify":
        assert str(path) in await hints.of(lambda: path.chmod(0o600), str(path))
    # Other files are no hint: only transcripts (plain or compressed) are read.
    assert await hints.of(_append(project / "notes.txt")) == set()
    assert await hints.of(_append(project / "r.jsonl.zst", b"x"), str(project / "r.jsonl.zst"))


@pytest.mark.skipif("inotify" not in KINDS, reason="inotify is Linux's")
async def test_directories_made_or_moved_in_are_watched_at_once(tmp_path: Path) -> None:
    """A tree created or moved under a root is watched as soon as it appears: appends deep
    in it wake the daemon without waiting for a rescan. (Not asked of watchdog on Linux: a
    nested `mkdir -p` can end its inotify thread with "Callback ... already exists", 7.1.0,
    after which it sees nothing; the rescans found those files.)"""
    (tmp_path / "w").mkdir()
    async with Hints("inotify", tmp_path / "w") as hints:
        await _made_or_moved_in(hints)


async def _made_or_moved_in(hints: Hints) -> None:
    deep = hints.root / "-p" / "s" / "subagents"
    sentinel = str(hints.root / "-p") + "/"
    assert sentinel in await hints.of(lambda: deep.mkdir(parents=True), sentinel)
    await asyncio.sleep(0.3)
    agent = deep / "agent-1.jsonl"
    assert str(agent) in await hints.of(_append(agent), str(agent))
    outside = hints.root.parent / "elsewhere"
    (outside / "x").mkdir(parents=True)
    moved = hints.root / "-q"
    assert str(moved) + "/" in await hints.of(lambda: outside.rename(moved), str(moved) + "/")
    await asyncio.sleep(0.3)
    inner = moved / "x" / "t.jsonl"
    assert str(inner) in await hints.of(_append(inner), str(inner))


async def test_a_link_to_a_directory_is_not_followed(tmp_path: Path) -> None:
    """A symbolic link to a directory inside a root is not watched (the scan does not walk
    it either), while a root that is itself a link is watched."""
    real = tmp_path / "real"
    (real / "-p").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (real / "-p" / "linked").symlink_to(outside)
    root = tmp_path / "root-link"
    root.symlink_to(real)
    async with Hints("inotify" if "inotify" in KINDS else "watchdog", root) as watched:
        beyond = outside / "s.jsonl"
        assert await watched.of(_append(beyond)) == set()
        inside = root / "-p" / "s.jsonl"
        assert str(inside) in await watched.of(_append(inside), str(inside))


@pytest.mark.skipif("inotify" not in KINDS, reason="inotify is Linux's")
async def test_a_root_removed_and_made_again_is_watched_again(tmp_path: Path) -> None:
    """A root deleted (or moved away) under the watcher is forgotten; the next `refresh`
    (every rescan) watches the new directory of that name."""
    root = tmp_path / "w"
    (root / "-p").mkdir(parents=True)
    async with Hints("inotify", root) as watched:
        assert isinstance(watched.watcher, InotifyWatcher)
        await watched.of(lambda: shutil.rmtree(root))
        (root / "-p").mkdir(parents=True)
        watched.watcher.refresh([root])
        path = root / "-p" / "s.jsonl"
        assert str(path) in await watched.of(_append(path), str(path))
        moved = tmp_path / "w-old"
        await watched.of(lambda: root.rename(moved))
        (root / "-p").mkdir(parents=True)
        watched.watcher.refresh([root])
        assert await watched.of(_append(moved / "-p" / "s.jsonl")) == set()
        assert str(path) in await watched.of(_append(path), str(path))


@pytest.mark.skipif("inotify" not in KINDS, reason="inotify is Linux's")
async def test_retain_stops_watching_a_root_no_longer_configured(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        (root / "-p").mkdir(parents=True)
    async with Hints("inotify", one) as watched:
        watched.watcher.retain([two])
        assert await watched.of(_append(one / "-p" / "s.jsonl")) == set()
        path = two / "-p" / "s.jsonl"
        assert str(path) in await watched.of(_append(path), str(path))


@pytest.mark.skipif("inotify" not in KINDS, reason="inotify is Linux's")
async def test_lost_events_rescan_every_root_and_keep_rescans_frequent(tmp_path: Path) -> None:
    """While every directory is watched, full rescans are `HEALTHY_RESCAN_FACTOR` times
    rarer; once the kernel's queue overflows (events lost), every root is hinted for a rescan
    and rescans go back to `rescan_interval`."""
    from jobvault.config import Config
    from jobvault.service.daemon import HEALTHY_RESCAN_FACTOR, rescan_every

    root = tmp_path / "w"
    (root / "-p").mkdir(parents=True)
    config = Config(watch=(root,), db=tmp_path / "v" / "j.db", rescan_interval=30.0)
    async with Hints("inotify", root) as hints:
        assert hints.watcher.healthy
        assert rescan_every(config, hints.watcher) == 30.0 * HEALTHY_RESCAN_FACTOR
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        one, two = root / "-p" / "a.jsonl", root / "-p" / "b.jsonl"
        with one.open("ab") as a, two.open("ab") as b:
            for _ in range(limit // 2 + 100):  # (alternating: the kernel merges repeats)
                a.write(b"x")
                a.flush()
                b.write(b"x")
                b.flush()
        await asyncio.sleep(0.5)  # the loop reads the queue now
        assert str(root) + os.sep in hints.seen
        assert not hints.watcher.healthy
        assert rescan_every(config, hints.watcher) == 30.0
        assert rescan_every(config, None) == 30.0


@pytest.mark.skipif("inotify" not in KINDS, reason="inotify is Linux's")
async def test_a_file_given_as_a_root_keeps_rescans_as_configured(tmp_path: Path) -> None:
    """Only directories are watched: a transcript given itself as a root is seen by the
    rescans, which then stay at `rescan_interval`."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"{}\n")
    async with Hints("inotify", tmp_path / "missing") as hints:  # (not there yet: nothing)
        assert hints.watcher.healthy
        assert not hints.watcher.refresh([path])
        assert not hints.watcher.healthy
