"""The JSON-RPC socket against the real daemon: correctness, limits, abuse, security."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobvault.config import Config
from jobvault.service.daemon import Daemon, run_daemon
from tests.helpers import SESSION, run, run_json, session_lines
from tests.test_daemon import eventually

OTHER = "22222222-2222-4333-8444-555555555555"


def _config(tmp_path: Path, **extra: Any) -> Config:
    root = tmp_path / "projects"
    if "socket" not in extra:
        extra["socket"] = Path(os.environ["XDG_RUNTIME_DIR"]) / "jv.sock"
    values: dict[str, Any] = {
        "watch": (root,), "db": tmp_path / "vault" / "jobvault.db",
        "idle_timeout": 30.0, "rescan_interval": 0.3, "batch_interval": 0.02,
        "connection_idle_timeout": 2.0, "request_timeout": 5.0, "sql_time_limit": 0.5,
    }  # fmt: skip
    values.update(extra)
    return Config(**values)


def _seed(tmp_path: Path) -> None:
    project = tmp_path / "projects" / "-work-app"
    project.mkdir(parents=True, exist_ok=True)
    (project / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(5)))
    (project / f"{OTHER}.jsonl").write_bytes(b"".join(session_lines(2, session=OTHER, base=900)))


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    _seed(tmp_path)
    config = _config(tmp_path)
    async with run_daemon(config) as d:
        await eventually(lambda: _jobs_written(config) == 2)
        yield d


def _jobs_written(config: Config) -> int:
    import sqlite3

    if not config.db.exists():
        return 0
    conn = sqlite3.connect(config.db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


class Conn:
    """A raw line-oriented client for the tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Conn:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=64 * 1024 * 1024)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        assert line, "connection closed"
        result: dict[str, Any] = json.loads(line)
        return result

    async def call(self, method: str, params: Any = None, ident: Any = 1) -> dict[str, Any]:
        request = {"jsonrpc": "2.0", "id": ident, "method": method}
        if params is not None:
            request["params"] = params
        await self.send(json.dumps(request).encode() + b"\n")
        return await self.recv()

    async def closed(self, timeout: float = 10.0) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout) == b""

    def close(self) -> None:
        self.writer.close()


async def test_socket_and_directory_are_private(daemon: Daemon) -> None:
    path = daemon.config.socket
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700


async def test_methods_answer(daemon: Daemon) -> None:
    conn = await Conn.open(daemon.config.socket)
    status = (await conn.call("status"))["result"]
    assert status["jobs"] == 2 and status["files_tracked"] == 2
    assert status["bytes_archived"] > 0 and status["bad_lines"] == 0
    assert {"version", "uptime_seconds", "watch", "ingest_lag_seconds", "db_size_bytes",
            "sessions_active", "last_error", "lines_archived"} <= set(status)  # fmt: skip
    page = (await conn.call("jobs.list", {"limit": 1}))["result"]
    assert len(page["jobs"]) == 1 and page["next_cursor"]
    rest = (await conn.call("jobs.list", {"limit": 1, "cursor": page["next_cursor"]}))["result"]
    assert rest["next_cursor"] is None
    assert {page["jobs"][0]["session_id"], rest["jobs"][0]["session_id"]} == {SESSION, OTHER}
    by_tool = (await conn.call("jobs.list", {"tool": "Bash", "min_cost": 0.0}))["result"]
    assert len(by_tool["jobs"]) == 2
    none = (await conn.call("jobs.list", {"cwd": "/elsewhere"}))["result"]
    assert none["jobs"] == []
    cwd = (await conn.call("jobs.list", {"cwd": "/work"}))["result"]
    assert len(cwd["jobs"]) == 2
    job = (await conn.call("jobs.get", {"id": SESSION}))["result"]
    assert job["tool_call_count"] == 5 and len(job["tool_calls"]) == 5
    lines = (await conn.call("jobs.transcript", {"id": SESSION, "limit": 7}))["result"]
    assert len(lines["lines"]) == 7 and lines["lines"][0]["line"]["type"] == "user"
    more = await conn.call("jobs.transcript", {"id": SESSION, "cursor": lines["next_cursor"]})
    assert len(more["result"]["lines"]) == 16 - 7
    missing = await conn.call("jobs.get", {"id": "nope"})
    assert missing["error"]["data"]["kind"] == "not_found"
    conn.close()


async def test_transcript_replays_after_the_original_is_gone(
    daemon: Daemon, tmp_path: Path
) -> None:
    path = tmp_path / "projects" / "-work-app" / f"{SESSION}.jsonl"
    original = [json.loads(line) for line in path.read_bytes().splitlines()]
    path.unlink()
    conn = await Conn.open(daemon.config.socket)
    page = (await conn.call("jobs.transcript", {"id": SESSION, "limit": 1000}))["result"]
    assert [entry["line"] for entry in page["lines"]] == original
    conn.close()


async def test_fifty_concurrent_clients(daemon: Daemon) -> None:
    async def one(i: int) -> None:
        conn = await Conn.open(daemon.config.socket)
        for j in range(5):
            answer = await conn.call("jobs.get", {"id": SESSION if (i + j) % 2 else OTHER}, j)
            assert answer["id"] == j
            assert answer["result"]["session_id"] == (SESSION if (i + j) % 2 else OTHER)
        conn.close()

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 60)


async def test_stalled_and_flooding_clients_do_not_delay_others(daemon: Daemon) -> None:
    stalled = await Conn.open(daemon.config.socket)
    await stalled.send(b'{"jsonrpc": "2.0", "id": 1, "meth')  # half a line, then nothing
    flood = await Conn.open(daemon.config.socket)
    flood_task = asyncio.create_task(_flood(flood))
    started = time.monotonic()
    conn = await Conn.open(daemon.config.socket)
    for i in range(20):
        assert (await conn.call("status", ident=i))["id"] == i
    assert time.monotonic() - started < 5  # not held up behind the others
    error = await flood_task
    assert error["error"]["data"]["kind"] == "request_too_large"
    assert await flood.closed()
    assert await stalled.closed(timeout=10)  # cut off after the idle time
    for c in (conn, flood, stalled):
        c.close()


async def _flood(conn: Conn) -> dict[str, Any]:
    try:
        for _ in range(10):
            await conn.send(b"x" * (1024 * 1024))  # 10 MB without a newline
    except (ConnectionError, OSError):
        pass
    return await conn.recv()


@pytest.mark.parametrize(
    ("payload", "kind", "code"),
    [
        (b"{not json\n", "parse_error", -32700),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "status"}]\n', "batch_unsupported", -32600),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "status"}\n', "invalid_request", -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "nope"}\n', "method_not_found", -32601),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "jobs.get", "params": {"id": 5}}\n',
         "invalid_params", -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "jobs.list", "params": {"limit": "x"}}\n',
         "invalid_params", -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "jobs.list", "params": {"bogus": 1}}\n',
         "invalid_params", -32602),
        (b'{"jsonrpc": "2.0", "id": {}, "method": "status"}\n', "invalid_request", -32600),
        (b'"just a string"\n', "invalid_request", -32600),
    ],
)  # fmt: skip
async def test_bad_requests_get_the_right_error(
    daemon: Daemon, payload: bytes, kind: str, code: int
) -> None:
    conn = await Conn.open(daemon.config.socket)
    await conn.send(payload)
    answer = await conn.recv()
    assert answer["error"]["code"] == code and answer["error"]["data"]["kind"] == kind
    assert (await conn.call("status", ident=7))["id"] == 7  # and the connection still serves
    conn.close()


async def test_notifications_get_no_reply(daemon: Daemon) -> None:
    conn = await Conn.open(daemon.config.socket)
    await conn.send(b'{"jsonrpc": "2.0", "method": "status"}\n')
    await conn.send(b'{"jsonrpc": "2.0", "method": "nope"}\n')
    answer = await conn.call("jobs.get", {"id": OTHER}, ident="after")
    assert answer["id"] == "after"  # the first answer on the wire is this one
    conn.close()


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO meta (key, value) VALUES ('a', 'b')",
        "UPDATE jobs SET cost_usd = 0",
        "DELETE FROM jobs",
        "DROP TABLE jobs",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA query_only = OFF",
        "PRAGMA journal_mode = DELETE",
        "SELECT 1; DELETE FROM jobs",
        "CREATE TABLE t (x)",
        "WITH x AS (SELECT 1) DELETE FROM jobs",
    ],
)
async def test_sql_refuses_anything_but_reading(daemon: Daemon, query: str) -> None:
    conn = await Conn.open(daemon.config.socket)
    answer = await conn.call("sql", {"query": query})
    assert answer["error"]["data"]["kind"] == "sql_refused", answer
    assert (await conn.call("jobs.list"))["result"]["jobs"]  # nothing was harmed
    conn.close()


async def test_sql_reads_with_a_row_cap_and_a_time_limit(daemon: Daemon) -> None:
    conn = await Conn.open(daemon.config.socket)
    ok = (await conn.call("sql", {"query": "SELECT id, cost_usd FROM jobs ORDER BY id"}))["result"]
    assert ok["columns"] == ["id", "cost_usd"] and len(ok["rows"]) == 2 and not ok["truncated"]
    capped = await conn.call("sql", {"query": "SELECT * FROM chunks", "max_rows": 1})
    assert len(capped["result"]["rows"]) == 1 and capped["result"]["truncated"]
    assert capped["result"]["rows"][0][6] == {
        "blob_bytes": capped["result"]["rows"][0][6]["blob_bytes"]
    }
    bound = await conn.call("sql", {"query": "SELECT ? + ?", "params": [2, 3]})
    assert bound["result"]["rows"] == [[5]]
    started = time.monotonic()
    runaway = await conn.call("sql", {"query": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    )})  # fmt: skip
    assert runaway["error"]["data"]["kind"] == "timeout"
    assert time.monotonic() - started < 4
    assert (await conn.call("status"))["result"]["jobs"] == 2  # still responsive
    conn.close()


async def test_subscriber_sees_updates_and_finalization(tmp_path: Path) -> None:
    _seed(tmp_path)
    config = _config(tmp_path, idle_timeout=1.0)
    path = tmp_path / "projects" / "-work-app" / "33333333-2222-4333-8444-555555555555.jsonl"
    async with run_daemon(config):
        conn = await Conn.open(config.socket)
        assert (await conn.call("subscribe"))["result"]["subscribed"] == [
            "job.finalized",
            "job.updated",
        ]
        lines = session_lines(3, session=path.stem)
        with path.open("ab") as fh:
            fh.write(b"".join(lines[:4]))
        seen: list[tuple[str, str]] = []
        while ("job.finalized", path.stem) not in seen:
            message = await conn.recv(timeout=15)
            seen.append((message["method"], message["params"]["session_id"]))
        assert ("job.updated", path.stem) in seen
        assert seen.index(("job.updated", path.stem)) < seen.index(("job.finalized", path.stem))
        conn.close()


async def test_slow_subscriber_is_told_and_dropped(tmp_path: Path) -> None:
    from jobvault.serve.server import Hub, Subscription

    hub = Hub()
    sub = Subscription(asyncio.Queue(3), frozenset({"job.updated"}))
    hub.subscribers.add(sub)
    for i in range(10):  # the publisher never blocks
        hub.publish("job.updated", {"n": i})
    assert sub.dropped and sub not in hub.subscribers and hub.dropped_total == 1
    assert sub.queue.qsize() == 3


def test_cli_uses_the_socket_and_falls_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(tmp_path)
    config = _config(tmp_path)
    db, sock = str(config.db), str(config.socket)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobvault", "run", "--watch", str(tmp_path / "projects"),
         "--db", db, "--socket", sock],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock) or _jobs_written(config) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        status = run_json(capsys, "status", "--socket", sock, "--db", db)
        assert status["pid"] == proc.pid
        assert len(run_json(capsys, "jobs", "--socket", sock, "--db", db, "--limit", "0")) == 2
        code, out = run(capsys, "query", "sql", '{"query": "SELECT COUNT(*) FROM jobs"}',
                        "--socket", sock)  # fmt: skip
        assert code == 0 and json.loads(out)["rows"] == [[2]]
        # A second daemon on the same socket refuses to start.
        second = subprocess.run(
            [sys.executable, "-m", "jobvault", "run", "--watch", str(tmp_path / "projects"),
             "--db", str(tmp_path / "other.db"), "--socket", sock],
            capture_output=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 75, second.stderr
        assert b"already running" in second.stderr
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # kill -9 left a stale socket file behind: the CLI falls back to the database...
    assert os.path.exists(sock)
    status = run_json(capsys, "status", "--db", db)
    assert status["daemon"] == "not running" and status["jobs"] == 2
    assert run_json(capsys, "show", SESSION, "--db", db)["tool_call_count"] == 5
    # ...and the next start replaces the stale socket.
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobvault", "run", "--watch", str(tmp_path / "projects"),
         "--db", db, "--socket", sock],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert run_json(capsys, "status", "--socket", sock, "--db", db)["pid"] == proc.pid
                break
            except (AssertionError, json.JSONDecodeError):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not os.path.exists(sock)  # removed on a clean stop


def test_two_daemons_started_at_once(tmp_path: Path) -> None:
    _seed(tmp_path)
    config = _config(tmp_path)
    cmd = [sys.executable, "-m", "jobvault", "run", "--watch", str(tmp_path / "projects"),
           "--db", str(config.db), "--socket", str(config.socket)]  # fmt: skip
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while all(p.poll() is None for p in procs):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        assert loser.returncode == 75
        assert winner.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
            assert p.stderr is not None
            p.stderr.close()
    assert winner.returncode == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
async def test_foreign_uid_is_refused(daemon: Daemon) -> None:
    # The test runs as root; a child drops to uid 65534 (nobody) and connects. The socket's
    # 0700 directory would stop it first, so open the directory to others for this test only.
    path = daemon.config.socket
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o666)
    code = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "print(s.makefile().readline(), end='')  # refused at once, before any request\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    answer = json.loads(out)
    assert answer["error"]["data"]["kind"] == "forbidden"
    assert "result" not in answer
    assert daemon.server is not None and daemon.server.refused_peers == 1


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    line=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda m, p, i: json.dumps(
                {"jsonrpc": "2.0", "method": m, "params": p, "id": i}
            ).encode(),
            st.sampled_from(["status", "jobs.list", "jobs.get", "jobs.transcript", "sql", "x"]),
            st.one_of(st.none(), st.dictionaries(
                st.sampled_from(["id", "limit", "cursor", "query", "order", "since", "tool",
                                 "min_cost", "params", "max_rows", "events"]),
                st.one_of(st.integers(-5, 5000), st.text(max_size=20), st.none(), st.floats(),
                          st.lists(st.integers(), max_size=3)),
            ), st.lists(st.integers(), max_size=2)),
            st.one_of(st.integers(), st.text(max_size=5), st.none()),
        ),
    )
)  # fmt: skip
def test_fuzzed_requests_never_crash_the_handler(line: bytes, fuzz_server: Any) -> None:
    reply = fuzz_server(line.replace(b"\n", b" ") + b"\n")
    if reply is not None:
        message = json.loads(reply)
        assert message["jsonrpc"] == "2.0"
        assert ("result" in message) != ("error" in message)
        if "error" in message:
            assert isinstance(message["error"]["code"], int) and message["error"]["data"]["kind"]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real server (daemon in a background thread) and a blocking one-line client."""
    import threading

    tmp = tmp_path_factory.mktemp("fuzz")
    patch = pytest.MonkeyPatch()
    for var in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        patch.setenv(var, str(tmp / var.lower()))  # never the machine's own home
    _seed(tmp)
    runtime = Path(__import__("tempfile").mkdtemp(prefix="jvf-", dir="/tmp"))
    config = _config(tmp, socket=runtime / "f.sock", connection_idle_timeout=30.0)
    ready = threading.Event()
    stop: list[Daemon] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        async with run_daemon(config) as d:
            stop.append(d)
            ready.set()
            await d.stopping.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(config.socket))
    sock.settimeout(10)
    reader = sock.makefile("rb")

    def ask(line: bytes) -> bytes | None:
        sock.sendall(line)
        # A notification gets no reply: follow with a marker request to tell.
        sock.sendall(b'{"jsonrpc":"2.0","id":"marker","method":"status"}\n')
        first = reader.readline()
        if json.loads(first).get("id") == "marker" and b'"id":"marker"' in first:
            return None
        reader.readline()  # the marker's answer
        return first

    yield ask
    reader.close()
    sock.close()
    loop.call_soon_threadsafe(stop[0].stop)
    thread.join(30)
    loop.close()
    shutil.rmtree(runtime, ignore_errors=True)
    patch.undo()
