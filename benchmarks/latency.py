"""Append → visible latency through the running daemon, and its idle CPU."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from benchmarks.measure import cpu_seconds, percentile, rss_mb
from benchmarks.rpc import Client

SESSION = "0b5e7a1c-4d2f-4e8a-9b6c-3f1e2d4c5b6a"
POLL = 0.01  # seconds between polls: finer than the figures reported, light on 2 cores


def _line(kind: str, i: int) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"
    obj: dict[str, Any] = {
        "parentUuid": None,
        "isSidechain": False,
        "userType": "external",
        "cwd": "/home/dev/live",
        "sessionId": SESSION,
        "version": "2.0.37",
        "type": kind,
        "uuid": f"live-{kind}-{i}",
        "timestamp": stamp,
    }
    if kind == "user":
        obj["message"] = {"role": "user", "content": f"live prompt {i}"}
    else:
        obj["message"] = {
            "id": f"msg_live_{i}",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": f"answer {i}"}],
            "usage": {
                "input_tokens": 10,
                "output_tokens": 100,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1000,
            },
        }
        obj["requestId"] = f"req_live_{i}"
    return orjson.dumps(obj) + b"\n"


def _archived_offset(client: Client, path: Path) -> int:
    rows = client.call(
        "sql", {"query": "SELECT MAX(offset) FROM files WHERE path = ?", "params": [str(path)]}
    )["rows"]
    return int(rows[0][0] or 0) if rows else 0


def _messages(client: Client) -> int:
    try:
        return int(client.call("jobs.get", {"id": SESSION})["message_count"])
    except Exception:
        return -1


def _append(out: BinaryIO, i: int) -> tuple[int, float]:
    out.write(_line("assistant", i))
    out.flush()
    return out.tell(), time.perf_counter()


def append_visible(
    socket: Path, live: Path, samples: int, tail_cap: float, seed: int = 3
) -> dict[str, Any]:
    """Append lines to a watched file at an agent's pace; time until each is visible.

    Archive-visible: the file's committed offset (the `sql` method) covers the line.
    Record-visible: `jobs.get` counts the line's message. Appends go on every 0.3–1.5 s
    whether or not the record caught up, as an agent's would. Then the end of a burst: one
    last append shortly after a record write, timed until its record shows it (≤ tail_cap s).
    """
    rng = random.Random(seed)
    folder = live / "projects" / "-home-dev-live"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{SESSION}.jsonl"
    archive: list[float] = []
    record: list[float] = []
    with Client(socket) as client, path.open("ab") as out:
        out.write(_line("user", 0))
        out.flush()
        _wait(lambda: _messages(client) >= 1, 30.0)
        base = _messages(client)
        pending: list[tuple[int, float]] = []  # (message count that shows it, appended at)
        for i in range(1, samples + 1):
            size, start = _append(out, i)
            pending.append((base + i, start))
            next_at = start + rng.uniform(0.3, 1.5)
            archived = False
            while time.perf_counter() < next_at or not archived:
                now = time.perf_counter()
                if not archived and _archived_offset(client, path) >= size:
                    archive.append(time.perf_counter() - start)
                    archived = True
                elif not archived and now - start > 10:
                    raise TimeoutError(f"append {i} not archived after 10 s")
                count = _messages(client)
                while pending and pending[0][0] <= count:
                    record.append(time.perf_counter() - pending.pop(0)[1])
                time.sleep(POLL)
        # Let the held-back lines show (bounded), then the end of a burst.
        _wait(lambda: _messages(client) >= base + samples, tail_cap, strict=False)
        now = time.perf_counter()
        record.extend(now - t for _, t in pending)  # censored at the cap
        time.sleep(0.5)
        _append(out, samples + 1)
        start = time.perf_counter()
        shown = _wait(lambda: _messages(client) >= base + samples + 1, tail_cap, strict=False)
        burst_end = time.perf_counter() - start if shown else None
    return {
        "samples": samples,
        "archive_p50": percentile(archive, 50),
        "archive_p99": percentile(archive, 99),
        "archive_max": max(archive),
        "record_p50": percentile(record, 50),
        "record_p99": percentile(record, 99),
        "record_max": max(record),
        "burst_end": burst_end,
        "tail_cap": tail_cap,
    }


def _wait(done: Callable[[], bool], timeout: float, strict: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            if strict:
                raise TimeoutError("the daemon never showed the live session")
            return False
        time.sleep(POLL)
    return True


def idle_cpu(pid: int, seconds: float) -> dict[str, float]:
    """CPU the daemon uses over `seconds` with nothing happening, in % of one core."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    used = cpu_seconds(pid) - before
    return {"seconds": seconds, "cpu_pct": 100 * used / seconds, "rss_mb": rss_mb(pid)}
