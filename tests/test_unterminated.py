"""A file without a final newline (issue 14, finding 6), and a last line finished later.

A transcript whose last line is a complete JSON object but has no newline (an agent killed
before it wrote the newline, a file copied by hand) is parsed and counted at import, and is
not a bad line; an unterminated last line that is not valid JSON still is. When such a file
grows later, the joined line is read once: its earlier report (if any) is withdrawn and its
message is counted once, whether the engine or a worker process reads the continuation.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobvault.config import Config
from jobvault.ingest import workers
from jobvault.service.daemon import run_daemon
from tests.helpers import SESSION, archived, assistant, dumps, run_json, user
from tests.test_daemon import eventually

ROLLOUT_ID = "0199c0de-0000-7000-8000-00000000000f"


def _claude(project: Path) -> tuple[Path, list[bytes]]:
    """A Claude Code session: a prompt and two answers; returns the path and its lines."""
    lines = [
        dumps(user("count the tests", 0)),
        dumps(assistant("msg_a", 1, inp=10, out=200)),
        dumps(assistant("msg_b", 2, inp=20, out=300)),
    ]
    project.mkdir(parents=True, exist_ok=True)
    return project / f"{SESSION}.jsonl", lines


def _codex(sessions: Path) -> tuple[Path, list[bytes]]:
    """A Codex rollout whose last line is its only token count."""

    def line(ts: str, kind: str, payload: dict[str, Any]) -> bytes:
        obj = {"timestamp": ts, "type": kind, "payload": payload}
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    total = {"input_tokens": 5000, "cached_input_tokens": 1024, "output_tokens": 300,
             "reasoning_output_tokens": 64, "total_tokens": 5300}  # fmt: skip
    lines = [
        line("2025-12-01T08:00:00.000Z", "session_meta", {"id": ROLLOUT_ID, "cwd": "/w"}),
        line("2025-12-01T08:00:01.000Z", "turn_context", {"model": "gpt-5-codex", "cwd": "/w"}),
        line("2025-12-01T08:00:01.000Z", "event_msg",
             {"type": "user_message", "message": "list the flags"}),
        line("2025-12-01T08:00:09.000Z", "event_msg", {"type": "token_count", "info": {
            "total_token_usage": total, "last_token_usage": total}}),
    ]  # fmt: skip
    folder = sessions / "2025" / "12" / "01"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"rollout-2025-12-01T08-00-00-{ROLLOUT_ID}.jsonl", lines


def _bad_lines(db: Path) -> list[tuple[int, int, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT file_id, offset, reason FROM bad_lines ORDER BY id").fetchall()
    finally:
        conn.close()


def _job(db: Path) -> tuple[Any, ...]:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT input_tokens, output_tokens, cache_read_tokens, message_count FROM jobs"
        ).fetchone()
        assert row is not None
        return tuple(row)
    finally:
        conn.close()


def _import(capsys: pytest.CaptureFixture[str], root: Path, db: Path) -> Any:
    return run_json(capsys, "import", str(root), "--db", str(db), "--no-progress")


@pytest.mark.parametrize("source", ["claude", "codex"])
def test_complete_last_line_without_newline_is_counted_not_reported(
    source: str, tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / source
    path, lines = _claude(root / "-p") if source == "claude" else _codex(root)
    path.write_bytes(b"".join(lines).rstrip(b"\n"))
    summary = _import(capsys, root, db)
    assert summary["bad_lines"] == 0 and summary["lines"] == len(lines)
    assert _bad_lines(db) == []
    assert archived(db, path) == path.read_bytes()
    if source == "claude":
        assert _job(db) == (30, 500, 0, 3)  # the last answer's tokens are counted
    else:
        assert _job(db)[:3] == (5000 - 1024, 300, 1024)  # its only token count is counted


def test_unterminated_invalid_last_line_is_still_a_bad_line(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, lines = _claude(tmp_path / "claude" / "-p")
    cut = lines[2][: len(lines[2]) // 2]  # half of the last answer: not valid JSON
    path.write_bytes(lines[0] + lines[1] + cut)
    summary = _import(capsys, tmp_path / "claude", db)
    assert summary["bad_lines"] == 1
    [(_file, offset, reason)] = _bad_lines(db)
    assert offset == len(lines[0] + lines[1])
    assert reason.startswith("unterminated final line (invalid JSON")
    assert _job(db) == (10, 200, 0, 2)
    assert archived(db, path) == path.read_bytes()


async def test_daemon_counts_a_complete_last_line_without_newline(tmp_path: Path) -> None:
    """The daemon waits for the newline, then takes the line as it is when the session goes
    idle; no bad line either."""
    root = tmp_path / "claude"
    path, lines = _claude(root / "-p")
    db = tmp_path / "vault" / "j.db"
    config = Config(watch=(root,), db=db, idle_timeout=0.5, rescan_interval=0.2,
                    batch_interval=0.01, dashboard=False)  # fmt: skip
    async with run_daemon(config):
        path.write_bytes(b"".join(lines).rstrip(b"\n"))

        def final() -> bool:
            if not db.exists():
                return False
            conn = sqlite3.connect(db)
            try:
                done = conn.execute("SELECT COUNT(*) FROM jobs WHERE finalized_at IS NOT NULL")
                return bool(done.fetchone() == (1,))
            finally:
                conn.close()

        await eventually(final)
    assert _job(db) == (30, 500, 0, 3) and _bad_lines(db) == []


@pytest.mark.parametrize("reader", ["engine", "workers"])
@pytest.mark.parametrize("tail", ["complete", "cut"])
def test_a_last_line_finished_later_is_read_once(
    reader: str,
    tail: str,
    tmp_path: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Imported while its last line had no newline (`complete`: a whole JSON object; `cut`:
    half a line), then the file grows: the joined line counts once and no report is left."""
    monkeypatch.setattr(workers, "MIN_COLD_BYTES", 0 if reader == "workers" else 1 << 60)
    root = tmp_path / "claude"
    path, lines = _claude(root / "-p")
    more = dumps(assistant("msg_c", 3, inp=30, out=400))
    split = len(lines[2]) - 1 if tail == "complete" else len(lines[2]) // 2
    path.write_bytes(lines[0] + lines[1] + lines[2][:split])
    first = _import(capsys, root, db)
    assert first["bad_lines"] == (0 if tail == "complete" else 1)
    with path.open("ab") as fh:
        fh.write(lines[2][split:] + more)
    _import(capsys, root, db)
    assert _bad_lines(db) == []
    assert _job(db) == (60, 900, 0, 4)
    assert archived(db, path) == path.read_bytes()
