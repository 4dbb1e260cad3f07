"""The adversarial cases of issue 12, each on the real daemon process (`jobvault run`).

Each test starts the daemon as a subprocess over a temporary root, database and socket
(`tests/daemon_proc.py`), does to its files what the independent adversarial run did, and
checks the daemon's answer: state over the socket (`status`), the database read-only, and the
CLI (`rebuild`, `export`) as separate processes. Waits are bounded polls of that state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobvault.config import Config
from jobvault.ingest import book
from jobvault.ingest.engine import Engine
from jobvault.store.db import open_writer
from jobvault.store.writer import Store
from tests.daemon_proc import DaemonProc, env, poll, rewrite_on_same_inode, take_inode
from tests.helpers import SESSION, assistant, dumps, expected_tokens, session_lines, user

OTHER = "33333333-2222-4333-8444-555555555555"
THIRD = "44444444-2222-4333-8444-555555555555"
FOURTH = "88888888-2222-4333-8444-555555555555"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    proc = DaemonProc(tmp_path)
    try:
        yield proc
    finally:
        proc.close()


def cli(daemon: DaemonProc, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`jobvault ARGS --db DB` as a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "jobvault", *args, "--db", str(daemon.db)],
        env=env(), capture_output=True, timeout=120,
    )  # fmt: skip


def project(daemon: DaemonProc) -> Path:
    path = daemon.root / "-work-app"
    path.mkdir(parents=True, exist_ok=True)
    return path


def bad_line_rows(daemon: DaemonProc) -> list[tuple[str, int, str]]:
    return [
        (Path(path).name, offset, reason)
        for path, offset, reason in daemon.query(
            "SELECT f.path, b.offset, b.reason FROM bad_lines b JOIN files f ON f.id = b.file_id "
            "ORDER BY f.path, b.offset"
        )
    ]


def assert_alive_over_rescans(daemon: DaemonProc, rescans: int = 3) -> dict[str, Any]:
    """The daemon keeps running over several rescans (no crash, no crash loop)."""
    start = daemon.status()["uptime_seconds"]
    status: dict[str, Any] = poll(
        lambda: (s := daemon.status())["uptime_seconds"] >= start + rescans * 0.5 and s,
        f"{rescans} rescans",
    )
    assert daemon.running, daemon.stderr()
    return status


# -- 1. a huge integer ---------------------------------------------------------------------


def test_huge_integers_are_bad_values_not_a_crash_loop(daemon: DaemonProc) -> None:
    """`"input_tokens": 18446744073709551615` (2^64 - 1, past SQLite's INTEGER) and two
    messages of 2^62 each (summing to 2^63) are counted bad values on their lines: the daemon
    keeps running, restarts cleanly on the archived bytes, and `jobvault rebuild` works, also
    after the file is removed. (Every count must lie in 0..10^12, so no sum of counts can
    reach 2^63 short of 9 million lines: the per-value check is what makes sums safe.)"""
    lines = [
        dumps(user("hello", 0)),
        dumps(assistant("msg_huge", 1, inp=18446744073709551615, out=7)),
        dumps(assistant("msg_half1", 2, inp=2**62, out=5)),
        dumps(assistant("msg_half2", 3, inp=2**62, out=5)),
        dumps(assistant("msg_cache", 4, inp=1, out=1, read=2**63)),
        dumps(assistant("msg_ok", 5, inp=11, out=13)),
    ]
    path = project(daemon) / f"{SESSION}.jsonl"
    path.write_bytes(b"".join(lines))
    neighbour = project(daemon) / f"{OTHER}.jsonl"
    neighbour.write_bytes(b"".join(session_lines(3, session=OTHER)))

    daemon.start()
    daemon.wait_archived(path, neighbour)
    poll(lambda: daemon.job(SESSION), "the job's record")
    status = assert_alive_over_rescans(daemon)
    assert status["bad_lines_since_start"] == 4
    assert status["faults_since_start"] == 0 and status["sessions_quarantined"] == 0
    reasons = [reason for _name, _offset, reason in bad_line_rows(daemon)]
    assert len(reasons) == 4 and all(r.startswith("bad value: ") for r in reasons), reasons
    expected = {"input_tokens": 1 + 11, "output_tokens": 7 + 5 + 5 + 1 + 13,
                "cache_read_tokens": 0}  # fmt: skip
    job = daemon.job(SESSION)
    assert job is not None and {k: job[k] for k in expected} == expected
    assert daemon.job(OTHER) is not None  # the other file flowed
    daemon.kill()  # the session is open: the next start rebuilds it from the archive

    # The archived bytes do not bring it down at the next start (no crash loop)...
    daemon.start()
    assert_alive_over_rescans(daemon)
    assert daemon.stop() == 0
    job = daemon.job(SESSION)
    assert job is not None and {k: job[k] for k in expected} == expected
    assert job["status"] != "active"
    # ... nor `rebuild`, which reads them back from the archive.
    done = cli(daemon, "rebuild", "--json", "--no-progress")
    assert done.returncode == 0, done.stderr.decode()
    job = daemon.job(SESSION)
    assert job is not None and {k: job[k] for k in expected} == expected

    path.unlink()  # the file is gone; its bytes are only in the archive now
    daemon.start()
    assert_alive_over_rescans(daemon)
    poll(lambda: daemon.query("SELECT state FROM files WHERE path = ?", (str(path),))
         == [("deleted",)], "the file noted deleted")  # fmt: skip
    assert daemon.stop() == 0
    done = cli(daemon, "rebuild", "--json", "--no-progress")
    assert done.returncode == 0, done.stderr.decode()
    job = daemon.job(SESSION)
    assert job is not None and {k: job[k] for k in expected} == expected
    assert len(bad_line_rows(daemon)) == 4  # counted once, across restarts and rebuilds
    assert "Traceback" not in daemon.stderr() and "OverflowError" not in daemon.stderr()


# -- 2. inode reuse after a deletion while jobvault was stopped -------------------------------


def new_session_on_freed_inode(daemon: DaemonProc, old: Path, how: str) -> tuple[Path, bytes]:
    """Delete `old` (the daemon is stopped) and create a new session's file on its inode,
    start the daemon and wait until the new file is archived.

    "freed": the filesystem's allocator hands the freed inode to the new file (ext4 does at
    once; skipped if it does not, or if another process took it first); "linked": the same
    situation made deterministic (`rewrite_on_same_inode`)."""
    new = project(daemon) / f"{OTHER}.jsonl"
    new_bytes = b"".join(session_lines(3, session=OTHER, base=500))
    inode = old.stat().st_ino
    if how == "linked":
        rewrite_on_same_inode(old, new, new_bytes)
    else:
        old.unlink()
        if not take_inode(new, new_bytes, inode):
            pytest.skip("the freed inode did not go to the new file (taken by another process?)")
    assert new.stat().st_ino == inode
    daemon.start()
    daemon.wait_archived(new)
    return new, new_bytes


def export(daemon: DaemonProc, session: str) -> subprocess.CompletedProcess[bytes]:
    return cli(daemon, "export", session)


@pytest.mark.parametrize("how", ["freed", "linked"])
def test_inode_reuse_after_an_archived_session_was_deleted(daemon: DaemonProc, how: str) -> None:
    """Claude Code's cleanup, then a new session, while jobvault was stopped: the freed inode
    goes to the new file. The deleted session's job keeps its exact tokens and its file is
    `deleted` (never `truncated`); the new session is a file and a job of its own, exact."""
    old = project(daemon) / f"{SESSION}.jsonl"
    old_bytes = b"".join(session_lines(4))
    old.write_bytes(old_bytes)
    daemon.start()
    daemon.wait_archived(old)
    assert daemon.stop() == 0
    before = daemon.job(SESSION)
    assert before is not None and before["input_tokens"] == expected_tokens(4)["input_tokens"]

    new, new_bytes = new_session_on_freed_inode(daemon, old, how)
    poll(lambda: daemon.query("SELECT state FROM files WHERE path = ?", (str(old),))
         == [("deleted",)], "the old file noted deleted")  # fmt: skip
    assert daemon.stop() == 0
    assert daemon.job(SESSION) == before  # untouched by the new file on its inode
    assert_job_exact(daemon, SESSION, 4)
    assert_job_exact(daemon, OTHER, 3)
    states = daemon.query("SELECT path, state, job_key FROM files ORDER BY id")
    assert states == [(str(old), "deleted", SESSION), (str(new), "active", OTHER)]
    assert export(daemon, SESSION).stdout == old_bytes
    assert export(daemon, OTHER).stdout == new_bytes


@pytest.mark.parametrize(("stop", "how"), [("sigterm", "freed"), ("kill-9", "linked")])
def test_inode_reuse_of_a_file_with_nothing_archived(
    daemon: DaemonProc, stop: str, how: str
) -> None:
    """A tracked file with nothing archived yet (empty; or only half a line when the daemon
    was killed) is deleted while jobvault is stopped and its inode goes to a new session's
    file: that is no rename, the new lines are filed under the new session and `export`
    gives them back."""
    old = project(daemon) / f"{SESSION}.jsonl"
    old.write_bytes(b"" if stop == "sigterm" else dumps(user("half", 0))[:40])
    keeper = project(daemon) / f"{THIRD}.jsonl"
    keeper.write_bytes(b"".join(session_lines(1, session=THIRD)))
    daemon.start()
    daemon.wait_archived(keeper)
    poll(lambda: daemon.query("SELECT offset FROM files WHERE path = ?", (str(old),))
         == [(0,)], "the first file tracked with nothing archived")  # fmt: skip
    if stop == "sigterm":
        assert daemon.stop() == 0
    else:
        daemon.kill()

    new, new_bytes = new_session_on_freed_inode(daemon, old, how)
    poll(lambda: daemon.job(OTHER), "the new session's record")
    assert daemon.stop() == 0
    rows = dict(daemon.query("SELECT path, job_key FROM files WHERE path = ?", (str(new),)))
    assert rows == {str(new): OTHER}
    assert daemon.query("SELECT state FROM files WHERE path = ?", (str(old),)) == [("deleted",)]
    assert_job_exact(daemon, OTHER, 3)
    assert daemon.job(SESSION) is None  # nothing of it was ever archived
    done = export(daemon, OTHER)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == new_bytes


def assert_job_exact(daemon: DaemonProc, session: str, *parts: int) -> None:
    """The job of `session_lines(n)` for each n in `parts`, written one after the other,
    counts exactly their tokens and tool calls, and is final."""
    job = daemon.job(session)
    assert job is not None, session
    want = {k: sum(expected_tokens(n)[k] for n in parts) for k in expected_tokens(0)}
    got = {k: job[k] for k in want}
    assert got == want and job["tool_call_count"] == sum(parts), (session, job)
    assert job["status"] != "active", (session, job)


# -- 3. a FIFO, and a symlink to /dev/zero --------------------------------------------------


def test_a_fifo_never_blocks_the_daemon(daemon: DaemonProc) -> None:
    """A FIFO named like a transcript is skipped and counted, never opened for a blocking
    read: the other files keep being archived, removing it after a writer opened it harms
    nothing, and SIGTERM stops the daemon promptly."""
    fifo = project(daemon) / f"{THIRD}.jsonl"
    os.mkfifo(fifo)
    first = project(daemon) / f"{SESSION}.jsonl"
    first.write_bytes(b"".join(session_lines(2)))
    daemon.start()
    daemon.wait_archived(first)
    status = daemon.wait_skipped()
    assert status["files_skipped"] == {"a FIFO": 1}
    assert re.search(r"^skipped\s+1 path \(a FIFO 1\)$", daemon.cli("status"), re.M)
    # A writer opens it (O_RDWR does not wait for a reader) and fills part of the pipe.
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(writer, dumps(user("into the pipe", 1, session=THIRD)) * 50)
        later = project(daemon) / f"{OTHER}.jsonl"
        later.write_bytes(b"".join(session_lines(2, session=OTHER)))
        daemon.wait_archived(later)  # other files flow while the FIFO has a writer
        assert_alive_over_rescans(daemon, rescans=2)
        fifo.unlink()  # removed while the writer holds it open
        with first.open("ab") as fh:
            fh.write(b"".join(session_lines(1, base=300)))
        daemon.wait_archived(first)
        status = assert_alive_over_rescans(daemon, rescans=2)
        assert status["files_skipped"] == {}  # it is gone: nothing to report any more
        assert status["snapshot_fresh"] and status["faults_since_start"] == 0
    finally:
        os.close(writer)
    assert daemon.stop(timeout=15) == 0  # the issue saw SIGTERM ignored for 70 s
    assert daemon.query("SELECT COUNT(*) FROM files WHERE path = ?", (str(fifo),)) == [(0,)]
    assert "Traceback" not in daemon.stderr()


def test_special_files_are_skipped_and_do_not_delay_shutdown(
    daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO, a Unix socket, and a FIFO put in place of a tracked file (whose bytes its
    descriptor still holds) are skipped and counted; SIGTERM is not delayed by them."""
    os.mkfifo(project(daemon) / f"{THIRD}.jsonl")
    listening = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(project(daemon))  # (a socket's path must be short: bind it relative)
    listening.bind("55555555-2222-4333-8444-555555555555.jsonl")
    tracked = project(daemon) / f"{SESSION}.jsonl"
    tracked.write_bytes(b"".join(session_lines(2)))
    try:
        daemon.start()
        daemon.wait_archived(tracked)
        with tracked.open("ab") as fh:
            fh.write(b"".join(session_lines(1, base=300)))
        size = tracked.stat().st_size
        fifo = tracked.with_suffix(".fifo")
        os.mkfifo(fifo)
        os.replace(fifo, tracked)  # the transcript's name now holds a FIFO
        poll(lambda: daemon.fresh_status()["files_skipped"] == {"a FIFO": 2, "a socket": 1},
             "the special files skipped")  # fmt: skip
        assert daemon.stop(timeout=15) == 0
    finally:
        listening.close()
    assert daemon.query("SELECT state, offset FROM files") == [("deleted", size)]
    assert_job_exact(daemon, SESSION, 2, 1)


@pytest.mark.parametrize("follow", [False, True], ids=["default", "follow_symlinks"])
def test_a_symlink_to_dev_zero_is_not_drained(tmp_path: Path, follow: bool) -> None:
    """`x.jsonl -> /dev/zero` is never read, whether symlinks are followed or not (followed,
    it is a character device): no byte of it is archived and the other files flow."""
    daemon = DaemonProc(tmp_path, follow_symlinks=follow)
    try:
        zero = project(daemon) / f"{THIRD}.jsonl"
        zero.symlink_to("/dev/zero")
        first = project(daemon) / f"{SESSION}.jsonl"
        first.write_bytes(b"".join(session_lines(2)))
        daemon.start()
        daemon.wait_archived(first)
        later = project(daemon) / f"{OTHER}.jsonl"
        later.write_bytes(b"".join(session_lines(3, session=OTHER)))
        daemon.wait_archived(later)
        status = assert_alive_over_rescans(daemon, rescans=2)
        label = "a character device" if follow else "a symlink (not followed)"
        assert status["files_skipped"] == {label: 1}
        total = first.stat().st_size + later.stat().st_size
        assert status["bytes_archived"] == total  # nothing of /dev/zero
        assert daemon.stop(timeout=15) == 0
        assert daemon.query("SELECT COUNT(*) FROM files WHERE path = ?", (str(zero),)) == [(0,)]
    finally:
        daemon.close()


# -- 4. symlinks out of the tree ------------------------------------------------------------


def test_symlinks_out_of_the_tree_are_not_followed_unless_asked(tmp_path: Path) -> None:
    """`x.jsonl -> /etc/passwd`, a link to a secret file outside the roots, and a linked
    directory are never archived by default; each file link is counted in `files_skipped`.
    With `follow_symlinks = true` a linked file is read (the user asked for it); a root that
    is itself a symlink is always fine."""
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = "SECRET-7f3a9c"
    secret = outside / "notes.jsonl"
    secret.write_bytes(b"".join(session_lines(2, session=OTHER)).replace(b"ok", marker.encode()))
    (outside / "dir").mkdir()
    (outside / "dir" / f"{THIRD}.jsonl").write_bytes(b"".join(session_lines(1, session=THIRD)))
    real_root = tmp_path / "real-projects"
    (real_root / "-work-app").mkdir(parents=True)
    daemon = DaemonProc(tmp_path)
    daemon.root.rmdir()
    daemon.root.symlink_to(real_root)  # the watched root is itself a link: fine
    try:
        here = project(daemon)
        (here / f"{OTHER}.jsonl").symlink_to(secret)
        (here / "55555555-2222-4333-8444-555555555555.jsonl").symlink_to("/etc/passwd")
        (here / "linked").symlink_to(outside / "dir", target_is_directory=True)
        own = here / f"{SESSION}.jsonl"
        own.write_bytes(b"".join(session_lines(2)))
        swapped = here / f"{FOURTH}.jsonl"
        swapped.write_bytes(b"".join(session_lines(1, session=FOURTH)))
        daemon.start()
        daemon.wait_archived(own, swapped)
        link = swapped.with_suffix(".link")
        link.symlink_to(secret)
        os.replace(link, swapped)  # a tracked transcript's name now links to the secret
        status = poll(
            lambda: (s := daemon.fresh_status())["files_skipped"].get("a symlink (not followed)")
            == 3 and s, "the links skipped")  # fmt: skip
        assert status["bytes_archived"] == own.stat().st_size + len(b"".join(session_lines(1)))
        assert daemon.stop() == 0
        paths = dict(daemon.query("SELECT path, state FROM files"))
        assert paths == {str(own): "active", str(swapped): "deleted"}
        swapped.unlink()
        assert daemon.job(OTHER) is None and daemon.job(THIRD) is None
        dumped = cli(daemon, "export", SESSION).stdout
        assert marker.encode() not in dumped and b"root:" not in dumped

        # The user opts in: the linked file is read (/etc/passwd is left out of this part).
        (here / "55555555-2222-4333-8444-555555555555.jsonl").unlink()
        daemon.config.write_text(daemon.config.read_text() + "follow_symlinks = true\n")
        daemon.start()
        poll(lambda: daemon.job(OTHER), "the linked session read once followed")
        assert daemon.fresh_status()["files_skipped"] == {}
        assert daemon.stop() == 0
        assert marker.encode() in cli(daemon, "export", OTHER).stdout
        assert daemon.job(THIRD) is None  # linked directories are never walked
    finally:
        daemon.close()


# -- 5. a file the daemon cannot read -------------------------------------------------------


def without_read_override() -> list[str]:
    """What to run the daemon under so that file permissions stop it.

    As root, permissions do not stop reads (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): the daemon
    runs as root without those two capabilities (`setpriv --bounding-set`), so a mode-000 file
    really is unreadable to it while its own (root-owned) directories are not.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): permissions cannot stop reads")
    wrap = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run([*wrap, sys.executable, "-c", "open('/proc/self/mem').read(1)"],
                           capture_output=True, timeout=30)  # fmt: skip
    if b"not permitted" in probe.stderr and b"Operation" in probe.stderr:
        pytest.skip("setpriv cannot drop capabilities here (no CAP_SETPCAP)")
    return wrap


def start_beside_a_readable_file(daemon: DaemonProc, wrap: list[str]) -> dict[str, Any]:
    """Start the daemon (under `wrap`) with a readable session beside the unreadable path:
    that one is archived, the other is counted; return the status that counts it."""
    readable = project(daemon) / f"{OTHER}.jsonl"
    readable.write_bytes(b"".join(session_lines(1, session=OTHER)))
    daemon.start(wrap)
    daemon.wait_archived(readable)
    status = daemon.wait_skipped()
    assert status["files_skipped"] == {"unreadable": 1}
    return status


def test_an_unreadable_file_is_a_counted_error_retried_later(daemon: DaemonProc) -> None:
    """A transcript the daemon cannot open is a counted error in `status` (never a file
    tracked at offset 0 in silence), and is read once it is readable."""
    wrap = without_read_override()
    locked = project(daemon) / f"{SESSION}.jsonl"
    locked.write_bytes(b"".join(session_lines(2)))
    locked.chmod(0)
    status = start_beside_a_readable_file(daemon, wrap)
    assert str(locked) in (status["last_error"] or "") and "ermission" in status["last_error"]
    assert daemon.query("SELECT COUNT(*) FROM files WHERE path = ?", (str(locked),)) == [(0,)]

    locked.chmod(0o600)  # retried at the next look: read whole
    daemon.wait_archived(locked)
    poll(lambda: daemon.fresh_status()["files_skipped"] == {}, "the skip cleared")
    assert daemon.stop() == 0
    assert_job_exact(daemon, SESSION, 2)

    # Tracked, then grown and made unreadable while jobvault was stopped.
    with locked.open("ab") as fh:
        fh.write(b"".join(session_lines(2, base=400)))
    locked.chmod(0)
    daemon.start(wrap)
    status = daemon.wait_skipped()
    assert status["files_skipped"] == {"unreadable": 1}
    locked.chmod(0o600)
    daemon.wait_archived(locked)
    assert daemon.stop() == 0
    assert daemon.query("SELECT COUNT(*), MAX(state) FROM files WHERE path = ?",
                        (str(locked),)) == [(1, "active")]  # fmt: skip
    assert_job_exact(daemon, SESSION, 2, 2)


def test_an_unreadable_directory_is_a_counted_error(daemon: DaemonProc) -> None:
    """A project directory the daemon cannot list is reported, not silently left out."""
    wrap = without_read_override()
    hidden = daemon.root / "-hidden"
    hidden.mkdir()
    inside = hidden / f"{SESSION}.jsonl"
    inside.write_bytes(b"".join(session_lines(1)))
    hidden.chmod(0)
    start_beside_a_readable_file(daemon, wrap)
    hidden.chmod(0o700)
    daemon.wait_archived(inside)
    poll(lambda: daemon.fresh_status()["files_skipped"] == {}, "the skip cleared")
    assert daemon.stop() == 0


def test_a_file_left_with_unread_bytes_then_locked_is_a_counted_error(daemon: DaemonProc) -> None:
    """A file whose last line was still half-written when the daemon was killed holds bytes
    past its offset; if it is unreadable at the next start (and otherwise unchanged), that
    start reports it, and reads on once it is readable."""
    wrap = without_read_override()
    path = project(daemon) / f"{SESSION}.jsonl"
    whole = b"".join(session_lines(2))
    last = dumps(user("the last prompt", 100))
    path.write_bytes(whole + last[:30])
    daemon.start(wrap)
    poll(lambda: daemon.archived_bytes(path) == len(whole), "the complete lines archived")
    daemon.kill()  # (a clean stop would archive the half line as the file's tail)
    path.chmod(0)  # the size and time are unchanged
    daemon.start(wrap)
    status = daemon.wait_skipped()
    assert status["files_skipped"] == {"unreadable": 1}
    assert str(path) in (status["last_error"] or "")
    path.chmod(0o600)  # readable again, still unchanged
    poll(lambda: daemon.fresh_status()["files_skipped"] == {}, "the skip cleared")
    with path.open("ab") as fh:
        fh.write(last[30:])
    daemon.wait_archived(path)
    assert daemon.stop() == 0
    assert bad_line_rows(daemon) == []
    assert_job_exact(daemon, SESSION, 2)


# -- 6. jobs whose files are all superseded -------------------------------------------------


def codex_lines(session: str, prompt: str) -> bytes:
    ts = "2025-11-03T09:00:0{}.000Z"
    meta = {"id": session, "timestamp": ts.format(0), "cwd": "/w", "cli_version": "0.60.0"}
    lines = [
        {"timestamp": ts.format(0), "type": "session_meta", "payload": meta},
        {"timestamp": ts.format(1), "type": "turn_context",
         "payload": {"model": "gpt-5", "cwd": "/w"}},
        {"timestamp": ts.format(2), "type": "event_msg",
         "payload": {"type": "user_message", "message": prompt}},
        {"timestamp": ts.format(3), "type": "event_msg",
         "payload": {"type": "token_count", "info": {
             "total_token_usage": {"input_tokens": 100, "cached_input_tokens": 0,
                                   "output_tokens": 10, "reasoning_output_tokens": 0,
                                   "total_tokens": 110},
             "last_token_usage": {"input_tokens": 100, "cached_input_tokens": 0,
                                  "output_tokens": 10, "reasoning_output_tokens": 0,
                                  "total_tokens": 110},
             "model_context_window": 1000}}},
        {"timestamp": ts.format(4), "type": "event_msg",
         "payload": {"type": "agent_message", "message": "done"}},
    ]  # fmt: skip
    return b"".join(dumps(line) for line in lines)


CODEX_A = "0199a1b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b"
CODEX_B = "0199a1b2-3c4d-7e5f-8a9b-0c1d2e3f4a5c"
AGENT_OF = "66666666-2222-4333-8444-555555555555"
AGENT_NEW = "77777777-2222-4333-8444-555555555555"


@pytest.mark.parametrize("stop", ["sigterm", "kill-9"])
def test_jobs_whose_files_are_all_superseded_reach_a_final_status(
    daemon: DaemonProc, stop: str
) -> None:
    """Sessions whose every file is superseded while they are open (a transcript truncated to
    nothing; a flat subagent file and a Codex rollout, both named for their session by their
    lines, rewritten with another session's lines) are no active jobs any more; after a clean
    SIGTERM (straight away, or after a kill -9 and a restart) no job is left `active`."""
    here = project(daemon)
    truncated = here / f"{SESSION}.jsonl"
    truncated.write_bytes(b"".join(session_lines(2)))
    agent = here / "agent-a1b2c3.jsonl"  # flat layout: its session is named in its lines
    agent.write_bytes(b"".join(session_lines(2, session=AGENT_OF)))
    rollout = daemon.root / "sessions" / "2025" / "11" / "03" / "rollout-odd.jsonl"
    rollout.parent.mkdir(parents=True)
    rollout.write_bytes(codex_lines(CODEX_A, "first"))
    keeper = here / f"{OTHER}.jsonl"
    keeper.write_bytes(b"".join(session_lines(1, session=OTHER)))
    daemon.start()
    daemon.wait_archived(truncated, agent, rollout, keeper)
    for key in (SESSION, AGENT_OF, CODEX_A, OTHER):
        poll(lambda k=key: daemon.job(k), f"the record of {key}")  # type: ignore[misc]
    assert {s for (s,) in daemon.query("SELECT status FROM jobs")} == {"active"}

    os.truncate(truncated, 0)  # same inode, nothing left: a new, empty generation
    tmp = agent.with_suffix(".tmp")
    tmp.write_bytes(b"".join(session_lines(1, session=AGENT_NEW, base=900)))
    os.replace(tmp, agent)  # another inode, another session's lines
    with rollout.open("r+b") as fh:  # rewritten in place with another session
        fh.truncate(0)
        fh.write(codex_lines(CODEX_B, "second"))
    daemon.wait_archived(agent, rollout)
    poll(lambda: daemon.job(CODEX_B) and daemon.job(AGENT_NEW), "the new sessions' records")
    poll(lambda: daemon.query("SELECT COUNT(*) FROM files WHERE state IN ('truncated', "
                              "'replaced')") == [(3,)], "three generations superseded")  # fmt: skip
    if stop == "kill-9":
        daemon.kill()
        daemon.start()
        assert_alive_over_rescans(daemon, rescans=1)
    assert daemon.stop() == 0

    jobs = dict(daemon.query("SELECT session_id, status FROM jobs"))
    assert "active" not in jobs.values(), jobs
    assert daemon.query("SELECT COUNT(*) FROM jobs WHERE finalized_at IS NULL") == [(0,)]
    # What they are now is what their current files hold: nothing, for the superseded ones.
    assert set(jobs) == {OTHER, AGENT_NEW, CODEX_B}, jobs
    assert_job_exact(daemon, OTHER, 1)
    done = cli(daemon, "status", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["sessions_active"] == 0


def test_a_superseded_codex_session_whose_record_was_held_back_is_not_left_active(
    tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kill -9 variant above, made deterministic on the engine the daemon runs: a Codex
    rollout is rewritten with another session, so the first session has no current file; its
    (now empty) record is held back by the write interval when the process dies. The next
    start must finalize that session with its own adapter (Codex), which removes the record,
    not leave it active for good."""
    monkeypatch.setattr(book, "MIN_WRITE_INTERVAL", 3600.0)  # hold back every rewrite
    root = tmp_path / "codex"
    rollout = root / "sessions" / "2025" / "11" / "03" / "rollout-odd.jsonl"
    rollout.parent.mkdir(parents=True)
    rollout.write_bytes(codex_lines(CODEX_A, "first"))
    config = Config(watch=(root,), db=db)
    store = Store(open_writer(db))
    engine = Engine(config, store)
    engine.rescan([root])  # the first record of a session is written at once
    with rollout.open("r+b") as fh:
        fh.truncate(0)
        fh.write(codex_lines(CODEX_B, "second"))
    engine.rescan([root])  # the first session's generation retired; its record held back
    for tracked in engine.by_id.values():  # kill -9: only committed transactions survive
        if tracked.fd is not None:
            os.close(tracked.fd)
            tracked.fd = None
    store.conn.close()
    assert_statuses(db, {CODEX_A: "active", CODEX_B: "active"})

    store = Store(open_writer(db))
    engine = Engine(config, store)
    try:
        engine.recover()
        engine.rescan([root])
        engine.finalize_all()
    finally:
        engine.close()
        store.close()
    assert_statuses(db, {CODEX_B: "completed"})


def assert_statuses(db: Path, want: dict[str, str]) -> None:
    conn = sqlite3.connect(db)
    try:
        assert dict(conn.execute("SELECT session_id, status FROM jobs")) == want
    finally:
        conn.close()


# -- 7. a rename seen as delete-then-reappear while a line is half-written ------------------


def half_written_session(daemon: DaemonProc) -> tuple[Path, bytes, bytes]:
    """A transcript of two exchanges and the first 45 bytes of a third: (its path, the
    complete lines, the whole third exchange, to be finished from byte 45)."""
    path = project(daemon) / f"{SESSION}.jsonl"
    whole = b"".join(session_lines(2))
    last = b"".join(session_lines(1, base=300))
    path.write_bytes(whole + last[:45])
    return path, whole, last


@pytest.mark.parametrize(
    ("finish", "back", "restart"),
    [
        ("while-away", "same-name", "none"),
        ("after-return", "other-dir", "none"),
        ("after-return", "same-name", "sigterm"),
        ("while-away", "other-dir", "sigterm"),
        ("after-return", "other-dir", "kill-9"),
    ],
)
def test_a_move_seen_as_delete_then_reappear_mid_line_records_no_bad_line(
    tmp_path: Path, finish: str, back: str, restart: str
) -> None:
    """A transcript with half a line at its end leaves the tree (the daemon notes it deleted
    and archives what its descriptor holds, the half line included) and comes back (the same
    inode and bytes: it continues) under its name or in another directory; the line is
    finished while it is away or after it is back; the daemon may be stopped or killed while
    it is away. No bad line is recorded, nothing is archived twice, and the job is exact."""
    daemon = DaemonProc(tmp_path)
    try:
        path, whole, last = half_written_session(daemon)
        daemon.start()
        poll(lambda: daemon.archived_bytes(path) == len(whole), "the complete lines archived")
        away = tmp_path / "away.jsonl"  # outside the watched root
        path.rename(away)
        poll(lambda: daemon.query("SELECT state FROM files") == [("deleted",)], "seen deleted")
        if restart == "sigterm":
            assert daemon.stop() == 0
        elif restart == "kill-9":
            daemon.kill()
        if finish == "while-away":
            with away.open("ab") as fh:
                fh.write(last[45:])
        target = path if back == "same-name" else daemon.root / "-elsewhere" / path.name
        target.parent.mkdir(exist_ok=True)
        away.rename(target)
        if not daemon.running:
            daemon.start()
        poll(lambda: daemon.query("SELECT state FROM files") == [("active",)], "seen again")
        if finish == "after-return":
            with target.open("ab") as fh:
                fh.write(last[45:])
        daemon.wait_archived(target)
        status = assert_alive_over_rescans(daemon, rescans=2)
        assert status["bad_lines"] == 0 and status["bad_lines_since_start"] == 0
        assert daemon.stop() == 0
        assert bad_line_rows(daemon) == []
        assert daemon.query("SELECT path, state, offset, bad_lines FROM files") == [
            (str(target), "active", len(whole + last), 0)
        ]
        assert cli(daemon, "export", SESSION).stdout == whole + last
        assert_job_exact(daemon, SESSION, 2, 1)
    finally:
        daemon.close()


# -- a session the adapter fails on ---------------------------------------------------------


def test_a_quarantined_session_is_contained_and_its_job_does_not_stay_active(
    daemon: DaemonProc,
) -> None:
    """A line the adapter fails on (a fault injected by tests/fault_wrapper.py, standing for
    an adapter bug) quarantines its session with a counted fault: the other sessions flow,
    restarts do not bring it down, its job reaches a final status at shutdown like every
    other, and `rebuild` with the adapter fixed (run without the fault) reads it whole."""
    wrap = [sys.executable, str(Path(__file__).with_name("fault_wrapper.py"))]
    bad = project(daemon) / f"{SESSION}.jsonl"
    bad.write_bytes(b"".join(session_lines(2)))
    good = project(daemon) / f"{OTHER}.jsonl"
    good.write_bytes(b"".join(session_lines(1, session=OTHER)))
    daemon.start(wrap)
    daemon.wait_archived(bad, good)
    poll(lambda: daemon.job(SESSION) and daemon.job(OTHER), "both records")
    with bad.open("ab") as fh:
        fh.write(dumps(user("poison", 50, jobvault_test_fault=True)))
        fh.write(b"".join(session_lines(1, base=300)))
    with good.open("ab") as fh:
        fh.write(b"".join(session_lines(1, session=OTHER, base=300)))
    daemon.wait_archived(bad, good)
    status = poll(lambda: (s := daemon.fresh_status())["sessions_quarantined"] and s, "quarantine")
    assert status["sessions_quarantined"] == 1 and status["faults_since_start"] == 1
    assert f"session {SESSION} quarantined" in status["last_error"]
    human = daemon.cli("status")
    assert re.search(r"^quarantined\s+1 session, 0 files ", human, re.M), human
    poll(lambda: (daemon.job(OTHER) or {}).get("tool_call_count") == 2, "the other session flows")
    assert daemon.stop() == 0
    assert daemon.query("SELECT kind, key FROM faults") == [("session", SESSION)]
    jobs = dict(daemon.query("SELECT session_id, status FROM jobs WHERE finalized_at IS NOT NULL"))
    assert jobs == {SESSION: "error", OTHER: "completed"}, jobs  # final, both
    assert_job_exact(daemon, OTHER, 1, 1)

    daemon.start(wrap)  # the archived line fails again: contained again
    assert_alive_over_rescans(daemon, rescans=2)
    assert daemon.stop() == 0
    assert daemon.query("SELECT COUNT(*) FROM jobs WHERE status = 'active'") == [(0,)]

    done = cli(daemon, "rebuild", "--json", "--no-progress")  # the adapter, fixed
    assert done.returncode == 0, done.stderr.decode()
    assert daemon.query("SELECT COUNT(*) FROM faults") == [(0,)]
    assert_job_exact(daemon, SESSION, 2, 1)


def test_a_half_line_reported_when_idle_then_finished_is_no_bad_line_any_more(
    tmp_path: Path,
) -> None:
    """A session that goes idle with half a line at its end is finalized with that tail
    archived and reported (an unterminated line); when the writer finishes the line, the
    report is withdrawn: `status` counts no bad line, the table holds none, the job is exact."""
    daemon = DaemonProc(tmp_path, idle_timeout=0.5)
    try:
        path, whole, last = half_written_session(daemon)
        daemon.start()
        poll(lambda: daemon.fresh_status()["bad_lines"] == 1, "the tail reported when idle")
        [(_name, offset, reason)] = bad_line_rows(daemon)
        assert offset == len(whole) and reason.startswith("unterminated final line")
        with path.open("ab") as fh:
            fh.write(last[45:])
        daemon.wait_archived(path)
        poll(lambda: bad_line_rows(daemon) == [], "the report withdrawn")
        status = daemon.fresh_status()
        assert status["bad_lines"] == 0 and status["bad_lines_since_start"] == 0
        assert daemon.stop() == 0
        assert_job_exact(daemon, SESSION, 2, 1)
    finally:
        daemon.close()
