"""kill -9 in the middle of ingestion, then a restart: no line lost, none doubled."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from jobvault.paths import default_socket_path
from tests.helpers import archived, archived_total, expected_tokens, session_lines

FILES = 300
EXCHANGES = 40


def _corpus(root: Path, files: int, rng: random.Random) -> dict[Path, int]:
    project = root / "-work-app"
    project.mkdir(parents=True)
    sizes: dict[Path, int] = {}
    for _ in range(files):
        session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        path = project / f"{session}.jsonl"
        n = rng.randint(1, EXCHANGES)
        path.write_bytes(b"".join(session_lines(n, session=session)))
        sizes[path] = n
    return sizes


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "daemon")
    return env


def _check(db: Path, sizes: dict[Path, int]) -> None:
    for path in sizes:
        assert archived(db, path) == path.read_bytes(), path.name
    conn = sqlite3.connect(db)
    try:
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT session_id, tool_call_count, output_tokens, input_tokens, status FROM jobs"
            )
        }
        # Chunks never overlap: each starts where the previous one ended.
        gaps = conn.execute(
            "SELECT COUNT(*) FROM (SELECT file_id, offset, length, LAG(offset + length) OVER "
            "(PARTITION BY file_id ORDER BY offset) AS prev_end FROM chunks) "
            "WHERE prev_end IS NOT NULL AND prev_end != offset"
        ).fetchone()[0]
        bad = conn.execute("SELECT COUNT(*) FROM bad_lines").fetchone()[0]
    finally:
        conn.close()
    assert gaps == 0
    assert bad == 0
    assert len(rows) == len(sizes)
    for path, n in sizes.items():
        tools, out, inp, status = rows[path.stem]
        assert (tools, out, inp) == (
            n,
            expected_tokens(n)["output_tokens"],
            expected_tokens(n)["input_tokens"],
        ), path.name
        assert status == "completed"


@pytest.mark.slow
def test_kill_9_during_import(tmp_path: Path, db: Path) -> None:
    rng = random.Random(20261123)
    sizes = _corpus(tmp_path / "projects", FILES, rng)
    cmd = [
        sys.executable,
        "-m",
        "jobvault",
        "import",
        str(tmp_path / "projects"),
        "--db",
        str(db),
        "--no-progress",
    ]
    killed = 0
    total = sum(p.stat().st_size for p in sizes)
    for _ in range(6):
        before = archived_total(db)
        proc = subprocess.Popen(cmd, env=_env(tmp_path), stderr=subprocess.DEVNULL)
        # Kill once this run has archived something, at a random moment after that.
        deadline = time.monotonic() + 30
        while proc.poll() is None and archived_total(db) <= before < total:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(30)
    assert killed >= 3, "the import finished before most kills: grow the corpus"
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    _check(db, sizes)


# `make test` runs a short version; `make soak` sets these for the long one.
SOAK_CYCLES = int(os.environ.get("JOBVAULT_SOAK_CYCLES", "5"))
SOAK_SESSIONS = int(os.environ.get("JOBVAULT_SOAK_SESSIONS", "40"))


def _line_counts(db: Path, plans: dict[Path, list[bytes]]) -> dict[str, int]:
    """Lines written to the files, and how the archive holds them: lost 0, doubled 0."""
    written = sum(len(lines) for lines in plans.values())
    archived_lines = 0
    unique: set[bytes] = set()
    expected: set[bytes] = set()
    for path, lines in plans.items():
        expected.update(lines)
        for line in archived(db, path).splitlines(keepends=True):
            archived_lines += 1
            unique.add(line)
    return {
        "lines written": written,
        "lines archived": archived_lines,
        "lost": len(expected - unique),
        "doubled": archived_lines - len(unique),
    }


@pytest.mark.slow
def test_kill_9_of_daemon_while_appending(tmp_path: Path, db: Path) -> None:
    rng = random.Random(7)
    root = tmp_path / "projects"
    project = root / "-work-app"
    project.mkdir(parents=True)
    sessions = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(SOAK_SESSIONS)]
    plans = {project / f"{s}.jsonl": session_lines(10, session=s) for s in sessions}
    cursor = dict.fromkeys(plans, 0)
    cmd = [
        sys.executable,
        "-m",
        "jobvault",
        "run",
        "--watch",
        str(root),
        "--db",
        str(db),
        "--idle-timeout",
        "0.5",
    ]
    for _cycle in range(SOAK_CYCLES):
        proc = subprocess.Popen(cmd, env=_env(tmp_path), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + rng.uniform(0.3, 1.3)
        while time.monotonic() < deadline:
            path = rng.choice(list(plans))
            line_no = cursor[path]
            if line_no < len(plans[path]):
                line = plans[path][line_no]
                cut = rng.randint(1, len(line) - 1)
                with path.open("ab") as fh:  # sometimes a line arrives in two writes
                    fh.write(line[:cut])
                    fh.flush()
                    fh.write(line[cut:])
                cursor[path] += 1
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    for path, lines in plans.items():  # finish every session
        with path.open("ab") as fh:
            fh.write(b"".join(lines[cursor[path] :]))
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                conn = sqlite3.connect(db)
                total = conn.execute("SELECT COALESCE(SUM(length),0) FROM chunks").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                continue
            # (and it has started: its socket is up, so SIGTERM is its own clean stop)
            if total == sum(p.stat().st_size for p in plans) and default_socket_path().exists():
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    counts = _line_counts(db, plans)
    summary = {"cycles": SOAK_CYCLES, "sessions": SOAK_SESSIONS, **counts}
    width = max(len(k) for k in summary)
    print("\nkill -9 soak\n" + "\n".join(f"  {k.ljust(width)}  {v:>8}" for k, v in summary.items()))
    assert counts["lost"] == 0 and counts["doubled"] == 0
    assert counts["lines archived"] == counts["lines written"]
    _check(db, dict.fromkeys(plans, 10))
