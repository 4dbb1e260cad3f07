"""Running as a service: sd_notify, socket activation, units, signals, reload, backup."""

from __future__ import annotations

import asyncio
import json
import os
import plistlib
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from jobvault.cli import main
from jobvault.config import Config
from jobvault.service import install
from jobvault.service.daemon import run_daemon
from tests.helpers import SESSION, archived, archived_total, session_lines
from tests.test_crash import _check, _corpus
from tests.test_daemon import eventually

ROOT = Path(__file__).resolve().parents[1]
DAEMON_PATH = str(ROOT / "daemon")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NOTIFY_", "LISTEN_", "WATCHDOG_"))}  # fmt: skip
    env["PYTHONPATH"] = DAEMON_PATH
    env.update(extra)
    return env


def _run_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobvault", "run", "--db", str(tmp_path / "v" / "j.db"), *extra]


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_messages_in_order(tmp_path: Path, abstract: bool) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"jobvault-test-{uuid.uuid4().hex[:12]}"
        listener.bind("\0" + name)
        address = "@" + name
    else:
        address = os.path.join(os.environ["XDG_RUNTIME_DIR"], "notify")
        listener.bind(address)
    listener.settimeout(20)
    proc = subprocess.Popen(
        _run_cmd(tmp_path, "--watch", str(tmp_path / "projects")),
        env=_env(NOTIFY_SOCKET=address, WATCHDOG_USEC="300000"),
        stderr=subprocess.DEVNULL,
    )
    messages: list[str] = []
    try:
        while sum(m == "WATCHDOG=1" for m in messages) < 3:
            messages.append(listener.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while not any(m.startswith("STOPPING=1") for m in messages):
            messages.append(listener.recv(4096).decode())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m.split("\n"))
    assert "STATUS=" in messages[ready]  # READY=1 comes with a status line
    first_watchdog = messages.index("WATCHDOG=1")
    stopping = next(i for i, m in enumerate(messages) if m.startswith("STOPPING=1"))
    assert ready < first_watchdog < stopping
    assert any(m.startswith("STATUS=") and "files tracked" in m for m in messages[ready + 1 :])
    assert stopping == len(messages) - 1 or all(m == "WATCHDOG=1" for m in messages[stopping + 1 :])


def test_socket_activation(tmp_path: Path) -> None:
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    (project / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(3)))
    path = Path(os.environ["XDG_RUNTIME_DIR"]) / "activated.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    listening.listen(8)
    fd = listening.fileno()
    # The way systemd does it: the socket as fd 3, LISTEN_PID naming the daemon's own pid
    # (this wrapper moves the descriptor, sets the variables and execs the daemon in place).
    wrapper = (
        "import os, sys\n"
        f"os.dup2({fd}, 3); os.close({fd})\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper,
         *_run_cmd(tmp_path, "--watch", str(tmp_path / "projects"), "--socket",
                   str(Path(os.environ["XDG_RUNTIME_DIR"]) / "other" / "jv.sock"))[1:]],
        env=_env(), pass_fds=(fd,), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    listening.close()  # only the daemon holds it now
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as client:
                    client.settimeout(10)
                    client.connect(str(path))
                    client.sendall(b'{"jsonrpc":"2.0","id":1,"method":"jobs.get",'
                                   b'"params":{"id":"' + SESSION.encode() + b'"}}\n')  # fmt: skip
                    answer = json.loads(client.makefile("rb").readline())
                if "result" in answer:
                    break
            except (ConnectionError, OSError, json.JSONDecodeError):
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        assert answer["result"]["tool_call_count"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert path.exists()  # systemd owns a passed socket: the daemon never unlinks it


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for name in ("jobvault.service", "jobvault.socket"):
        shutil.copy(ROOT / "systemd" / name, tmp_path / name)
    done = subprocess.run(
        ["systemd-analyze", "verify", "jobvault.socket", "jobvault.service"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    service = (ROOT / "systemd" / "jobvault.service").read_text()
    assert "Type=notify" in service and "RestartPreventExitStatus=78 75" in service


def test_launchd_plist_names_the_program(tmp_path: Path) -> None:
    template = plistlib.loads((ROOT / "systemd" / "com.jobvault.daemon.plist").read_bytes())
    assert template["ProgramArguments"][1:] == ["run"]
    assert template["RunAtLoad"] is True and template["KeepAlive"] == {"SuccessfulExit": False}
    binary = tmp_path / "bin" / "jobvault"
    plan = install.install_plan("darwin", binary)
    [(path, content)] = plan.files.items()
    assert path.name == "com.jobvault.daemon.plist" and "LaunchAgents" in str(path)
    plist = plistlib.loads(content.encode())
    assert plist["ProgramArguments"] == [str(binary), "run"]
    assert plist["StandardErrorPath"].startswith(str(Path(os.environ["HOME"])))


def test_service_install_and_uninstall(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    log = tmp_path / "systemctl.log"
    (fake_bin / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (fake_bin / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sys, "platform", "linux")

    assert main(["service", "install", "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out
    unit = Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user" / "jobvault.service"
    assert not unit.exists() and not log.exists()

    assert main(["service", "install"]) == 0
    text = unit.read_text()
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    binary = exec_line.removeprefix("ExecStart=").removesuffix(" run")
    assert os.path.isabs(binary) and binary.endswith("jobvault")
    assert (unit.parent / "jobvault.socket").exists()
    assert log.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now jobvault.socket",
        "--user enable --now jobvault.service",
    ]
    assert main(["service", "status"]) == 0
    assert main(["service", "uninstall"]) == 0
    assert not unit.exists()
    assert "--user disable --now jobvault.service jobvault.socket" in log.read_text()


@pytest.mark.slow
def test_sigterm_during_a_large_backlog(tmp_path: Path) -> None:
    import random

    sizes = _corpus(tmp_path / "projects", 400, random.Random(5))
    total = sum(p.stat().st_size for p in sizes)
    db = tmp_path / "v" / "j.db"
    cmd = _run_cmd(tmp_path, "--watch", str(tmp_path / "projects"), "--idle-timeout", "0.5")
    proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while archived_total(db) == 0:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert proc.wait(60) == 0
    assert time.monotonic() - started < 30  # well within the 90 s stop bound
    partial = archived_total(db)
    assert 0 < partial < total  # it stopped mid-backlog, keeping what it had read
    proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while archived_total(db) < total or _unfinished(db):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    _check(db, sizes)


def _unfinished(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM jobs WHERE finalized_at IS NULL").fetchone()[0]
        )
    finally:
        conn.close()


def test_sighup_adds_a_watch_root(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "-p").mkdir(parents=True)
    (second / "-q").mkdir(parents=True)
    (first / "-p" / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(2)))
    other = "33333333-2222-4333-8444-555555555555"
    (second / "-q" / f"{other}.jsonl").write_bytes(b"".join(session_lines(2, session=other)))
    config = tmp_path / "jobvault.toml"
    config.write_text(f'watch = ["{first}"]\nrescan_interval = 0.2\n')
    db = tmp_path / "v" / "j.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobvault", "run", "--config", str(config), "--db", str(db)],
        env=_env(), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while archived_total(db) == 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)
        assert archived_total(db) == (first / "-p" / f"{SESSION}.jsonl").stat().st_size
        config.write_text(f'watch = ["{first}", "{second}"]\nrescan_interval = 0.2\n')
        proc.send_signal(signal.SIGHUP)
        while archived_total(db) < sum(p.stat().st_size for p in tmp_path.rglob("*.jsonl")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        # A bad configuration on reload is refused; the daemon keeps running.
        config.write_text("idle_timeout = -1\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert (
        archived(db, second / "-q" / f"{other}.jsonl")
        == (second / "-q" / f"{other}.jsonl").read_bytes()
    )


async def test_backup_is_consistent_while_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    config = Config(watch=(tmp_path / "projects",), db=tmp_path / "v" / "j.db",
                    rescan_interval=0.2, batch_interval=0.0)  # fmt: skip
    async with run_daemon(config):
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                sid = f"{n:08d}-2222-4333-8444-555555555555"
                with (project / f"{sid}.jsonl").open("ab") as fh:
                    fh.write(b"".join(session_lines(20, session=sid)))
                n += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(writer())
        await eventually(lambda: archived_total(config.db) > 200_000)
        copies = []
        for i in range(3):
            target = tmp_path / f"backup{i}.db"
            code = await asyncio.to_thread(main, ["backup", str(target), "--db", str(config.db)])
            assert code == 0
            copies.append(target)
            await asyncio.sleep(0.1)
        stop.set()
        await task
    for target in copies:
        assert os.stat(target).st_mode & 0o777 == 0o600
        conn = sqlite3.connect(target)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            # Exactly once in any committed state: each file's offset equals its archived bytes.
            mismatched = conn.execute(
                "SELECT COUNT(*) FROM files f WHERE f.offset != "
                "(SELECT COALESCE(SUM(length), 0) FROM chunks c WHERE c.file_id = f.id)"
            ).fetchone()[0]
            assert mismatched == 0
            assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] > 0
        finally:
            conn.close()
    assert main(["backup", str(copies[0]), "--db", str(config.db)]) == 64  # refuses to overwrite
