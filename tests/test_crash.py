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
from jobvault.serve.client import Client, DaemonUnavailable
from tests.daemon_proc import DaemonProc, poll, take_inode
from tests.helpers import archived, archived_total, assistant, dumps, expected_tokens, session_lines
from tests.recount import mismatches, recorded

FILES = 300
EXCHANGES = 40


def _corpus(
    root: Path, files: int, rng: random.Random, exchanges: tuple[int, int] = (1, EXCHANGES)
) -> dict[Path, int]:
    project = root / "-work-app"
    project.mkdir(parents=True)
    sizes: dict[Path, int] = {}
    for _ in range(files):
        session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        path = project / f"{session}.jsonl"
        n = rng.randint(*exchanges)
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


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in out]
        out.update(children)
        todo.extend(children)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # (a zombie has exited: only its parent has not reaped it yet)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_kill_9_of_an_import_leaves_no_worker_behind(tmp_path: Path, db: Path) -> None:
    """The worker processes (and the fork server) end with the process that started them:
    before, they held each other's pipes open and lived on after a kill -9."""
    _corpus(tmp_path / "projects", FILES, random.Random(9))
    cmd = [sys.executable, "-m", "jobvault", "import", str(tmp_path / "projects"),
           "--db", str(db), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        family: set[int] = set()
        while len(family) < 3 and proc.poll() is None:  # fork server, resource tracker, ...
            assert time.monotonic() < deadline, "no worker process started"
            family = _descendants(proc.pid)
            time.sleep(0.01)
        assert proc.poll() is None, "the import finished before its workers were seen"
        workers = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in workers):
            assert time.monotonic() < deadline, [p for p in workers if _alive(p)]
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _workers_of(pid: int) -> list[int]:
    """The worker processes of `pid`: the children of its fork server (its own child)."""
    children = [p for p in _descendants(pid) if _parent(p) == pid]
    return sorted(p for c in children for p in _descendants(c) if _parent(p) == c)


def _kill(pid: int) -> bool:
    """kill -9 `pid`; False if it had ended already (a pool shut down meanwhile)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_worker_killed_during_an_import_loses_nothing(tmp_path: Path, db: Path) -> None:
    """A worker process that dies (the OOM killer, kill -9) takes none of its files with it:
    what it held is read by the engine itself and the workers are started again, so the
    import finishes with every line archived once and every record exact."""
    sizes = _corpus(tmp_path / "projects", 2 * FILES, random.Random(41))
    cmd = [sys.executable, "-m", "jobvault", "import", str(tmp_path / "projects"),
           "--db", str(db), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stderr=subprocess.PIPE)
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(killed) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "no worker process started"
            for pid in _workers_of(proc.pid):
                if pid not in killed and proc.poll() is None and _kill(pid):
                    killed.append(pid)
                    break
            time.sleep(0.002)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert killed, "the import finished before a worker was seen: grow the corpus"
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert b"worker_failed" in stderr
    _check(db, sizes)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_the_daemon_outlives_its_workers(tmp_path: Path) -> None:
    """kill -9 of the daemon's worker processes during its start-up backfill: the daemon
    keeps running, says so in `status`, and archives every line once."""
    daemon = DaemonProc(tmp_path, idle_timeout=5.0)
    # (sessions large enough that a slice of the backfill is worth sending to the workers)
    sizes = _corpus(daemon.root, FILES, random.Random(43), (100, 200))
    old = time.time() - 3600  # idle for an hour: cold, read by the workers
    for path in sizes:
        os.utime(path, (old, old))
    daemon.start(wait=False)
    try:
        assert daemon.proc is not None
        killed: list[int] = []
        deadline = time.monotonic() + 60
        while len(killed) < 3 and time.monotonic() < deadline and daemon.running:
            for pid in _workers_of(daemon.proc.pid):
                if pid not in killed and _kill(pid):
                    killed.append(pid)
                    break
            time.sleep(0.002)
        assert killed, "no worker process seen"
        total = sum(p.stat().st_size for p in sizes)
        try:
            poll(lambda: (daemon.running and archived_total(daemon.db) >= total) or None,
                 "every file archived", timeout=120)  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the daemon said:\n{daemon.stderr()[-6000:]}") from None
        status = poll(lambda: (s := daemon.status())["state"] == "running" and s, "running")
        assert "worker process died" in (status["last_error"] or ""), status
        assert daemon.stop() == 0
        _check(daemon.db, sizes)
    finally:
        daemon.close()


# `make test` runs a short version; `make soak` sets these for the long one.
SOAK_CYCLES = int(os.environ.get("JOBVAULT_SOAK_CYCLES", "5"))
SOAK_SESSIONS = int(os.environ.get("JOBVAULT_SOAK_SESSIONS", "40"))
SOAK_SEED = int(os.environ.get("JOBVAULT_SOAK_SEED", "1212"))


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
            # (and it has started: it answers on its socket, so SIGTERM is its own clean stop;
            # the socket file alone may be a killed daemon's)
            if total == sum(p.stat().st_size for p in plans) and _answering():
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


def _answering() -> bool:
    """The daemon on the default socket answers `status` and its engine is up."""
    try:
        with Client(default_socket_path(), timeout=2) as client:
            return bool(client.call("status", {}).get("state") == "running")
    except (DaemonUnavailable, OSError):
        return False


class _Soak:
    """Sessions appended to, copied from, renamed, truncated, deleted and replaced by new
    sessions (on the freed inode while the daemon is down), across kill -9 cycles."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.rng = rng
        self.dirs = [root / "-work-a", root / "-work-b"]
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.live: dict[str, Path] = {}  # session -> its file now
        self.counter = 0
        self.counts = dict.fromkeys(
            ("appends", "copies", "renames", "truncations", "deletions", "inode reuses"), 0
        )

    def new_session(self, inode: int | None = None) -> None:
        session = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        path = self.rng.choice(self.dirs) / f"{session}.jsonl"
        first = self._line(session)
        if inode is not None and take_inode(path, first, inode):
            self.counts["inode reuses"] += 1
        else:
            path.write_bytes(first)
        self.live[session] = path

    def _line(self, session: str) -> bytes:
        self.counter += 1
        n = self.counter
        tool = [{"type": "tool_use", "id": f"toolu_{n}", "name": "Bash", "input": {"c": n}}]
        return dumps(assistant(f"msg_{n}", n % 3000, session=session, inp=n % 7 + 1,
                               out=n, read=n % 5, content=tool))  # fmt: skip

    def _copy(self, session: str) -> bytes:
        """A copy of an earlier message (streamed, or history copied into a resumed session)."""
        self.counter += 1
        of = self.rng.randint(1, self.counter - 1)
        return dumps(assistant(f"msg_{of}", self.counter % 3000, session=session, inp=of % 7 + 1,
                               out=self.rng.randint(0, 2 * of), read=of % 5,
                               isSidechain=self.rng.random() < 0.2))  # fmt: skip

    def append(self, split: bool) -> None:
        session = self.rng.choice(list(self.live))
        copy = self.rng.random() < 0.25
        line = self._copy(session) if copy else self._line(session)
        self.counts["copies" if copy else "appends"] += 1
        with self.live[session].open("ab") as fh:
            if split:  # a line arriving in two writes
                cut = self.rng.randint(1, len(line) - 1)
                fh.write(line[:cut])
                fh.flush()
                line = line[cut:]
            fh.write(line)

    def rename(self) -> None:
        session = self.rng.choice(list(self.live))
        path = self.live[session]
        target = next(d for d in self.dirs if d != path.parent) / path.name
        path.rename(target)
        self.live[session] = target
        self.counts["renames"] += 1

    def truncate(self) -> None:
        session = self.rng.choice(list(self.live))
        path = self.live[session]
        lines = path.read_bytes().splitlines(keepends=True)
        keep = self.rng.randint(0, max(0, len(lines) - 1))
        os.truncate(path, sum(len(line) for line in lines[:keep]))
        self.counts["truncations"] += 1

    def delete(self, reuse: bool) -> None:
        """Delete a session's file; a new session follows (on its inode, if `reuse`)."""
        session = self.rng.choice(list(self.live))
        path = self.live.pop(session)
        inode = path.stat().st_ino
        path.unlink()
        self.counts["deletions"] += 1
        self.new_session(inode if reuse else None)

    def step(self, running: bool) -> None:
        roll = self.rng.random()
        if roll < 0.80:
            self.append(split=running and self.rng.random() < 0.3)
        elif roll < 0.87:
            self.rename()
        elif roll < 0.93:
            self.truncate()
        else:
            self.delete(reuse=not running)


@pytest.mark.slow
def test_kill_9_soak_with_deletions_truncations_renames_and_inode_reuse(tmp_path: Path) -> None:
    """The real daemon killed with SIGKILL at random moments while its sessions are appended
    to (lines in two writes, copies of earlier messages), renamed, truncated, deleted and
    replaced by new sessions, and while it is down deleted and replaced on the freed inode.
    After a last start and a clean SIGTERM: every present file is archived byte for byte, no
    chunk overlaps or leaves a gap, no bad line, every job's tokens equal an independent
    recount of its archive (ccusage's rule for copies), and no job is left active."""
    rng = random.Random(SOAK_SEED)
    daemon = DaemonProc(tmp_path, rescan_interval=0.3, idle_timeout=1.0)
    soak = _Soak(daemon.root, rng)
    for _ in range(SOAK_SESSIONS):
        soak.new_session()
    try:
        for _cycle in range(SOAK_CYCLES):
            daemon.start()
            deadline = time.monotonic() + rng.uniform(0.3, 1.3)
            while time.monotonic() < deadline:
                soak.step(running=True)
                time.sleep(0.002)
            daemon.kill()
            for _ in range(rng.randint(0, 3)):  # while it is down: Claude Code's cleanup
                soak.step(running=False)
                soak.delete(reuse=True)
        daemon.start()
        poll(lambda: all(daemon.archived_bytes(p) == p.stat().st_size
                         for p in soak.live.values()), "every file archived", 120)  # fmt: skip
        assert daemon.stop() == 0
    finally:
        daemon.close()
    for path in soak.live.values():
        assert archived(daemon.db, path) == path.read_bytes(), path
    overlaps = daemon.query(
        "SELECT COUNT(*) FROM (SELECT file_id, offset, LAG(offset + length) OVER (PARTITION BY "
        "file_id ORDER BY offset) AS prev_end FROM chunks) WHERE prev_end != offset"
    )
    assert overlaps == [(0,)]
    assert daemon.query("SELECT COUNT(*) FROM bad_lines") == [(0,)]
    assert mismatches(daemon.db) == []
    records = recorded(daemon.db)
    assert [job for job, (status, _) in records.items() if status == "active"] == []
    assert daemon.query("SELECT COUNT(*) FROM jobs WHERE finalized_at IS NULL") == [(0,)]
    states = dict(daemon.query("SELECT state, COUNT(*) FROM files GROUP BY state"))
    summary = {"seed": SOAK_SEED, "cycles": SOAK_CYCLES, **soak.counts, "jobs": len(records),
               **{f"files {state}": n for state, n in sorted(states.items())}}  # fmt: skip
    width = max(len(k) for k in summary)
    print("\nkill -9 soak with deletions, truncations, renames and inode reuse\n"
          + "\n".join(f"  {k.ljust(width)}  {v:>8}" for k, v in summary.items()))  # fmt: skip
    assert soak.counts["deletions"] and soak.counts["truncations"] and soak.counts["renames"]
