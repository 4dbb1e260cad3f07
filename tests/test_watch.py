"""The watcher (watchdog) on a real directory: which changes wake the daemon."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from jobvault.ingest.watch import Watcher


async def test_reading_a_file_wakes_nothing_and_writing_it_does(tmp_path: Path) -> None:
    """Opening and reading a transcript (as the daemon itself does) is no change: the kernel
    is not even asked for those events. An append, a new file, a rename and a deletion are."""
    project = tmp_path / "-p"
    project.mkdir()
    path = project / "s.jsonl"
    path.write_bytes(b'{"a": 1}\n')
    seen: list[str] = []
    watcher = Watcher(asyncio.get_running_loop(), seen.append)
    watcher.refresh([tmp_path])

    async def hints(action: Callable[[], object], *want: str) -> set[str]:
        """The hints `action` causes: within 0.5 s, or until every path in `want` came (up
        to 10 s: watchdog holds a rename back to pair its two halves, longer under load)."""
        await asyncio.sleep(0.3)  # (the watches are in place; earlier events are in)
        seen.clear()
        action()
        await asyncio.sleep(0.5)
        deadline = time.monotonic() + 10
        while not set(want) <= set(seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return set(seen)

    def read() -> None:
        for _ in range(20):
            with path.open("rb") as fh:
                fh.read()

    def append() -> None:
        with path.open("ab") as fh:
            fh.write(b'{"a": 2}\n')

    new, moved = project / "t.jsonl", project / "u.jsonl"
    try:
        assert await hints(read) == set()
        assert await hints(append, str(path)) == {str(path)}
        assert str(new) in await hints(lambda: new.write_bytes(b"{}\n"), str(new))
        assert {str(new), str(moved)} <= await hints(
            lambda: new.rename(moved), str(new), str(moved)
        )
        assert str(moved) in await hints(moved.unlink, str(moved))
        # A new directory (a session's subagents/) is rescanned whole: a sentinel hint.
        sentinel = str(project / "s") + "/"
        assert sentinel in await hints(lambda: (project / "s").mkdir(), sentinel)
    finally:
        watcher.stop()
