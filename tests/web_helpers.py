"""Shared by the dashboard tests: a corpus on disk, the real daemon serving it, an HTTP client
that keeps the dashboard's cookie, and the figures of a rendered overview."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from jobvault.config import Config
from jobvault.serve.client import Client
from jobvault.service.daemon import Daemon, run_daemon
from tests.helpers import assistant, dumps, session_lines, user

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LIVE = "33333333-2222-4333-8444-555555555555"  # a session still being written
PLANTED = "zanzibarquokka"  # a word only the live session's prompt holds


@dataclass
class Vault:
    """A corpus (Claude Code and Codex fixtures plus a live session) and where it lives."""

    root: Path
    claude: Path
    codex: Path
    db: Path
    socket: Path

    @property
    def live_file(self) -> Path:
        return self.claude / "-work-live" / f"{LIVE}.jsonl"

    def config(self, **extra: Any) -> Config:
        values: dict[str, Any] = {
            "watch": (self.claude, self.codex / "sessions", self.codex / "archived_sessions"),
            "db": self.db, "socket": self.socket, "idle_timeout": 300.0,
            "rescan_interval": 0.3, "batch_interval": 0.02, "dashboard_port": 0,
        }  # fmt: skip
        values.update(extra)
        return Config(**values)


def make_vault(root: Path) -> Vault:
    """Copy the committed fixtures and write a live session with a planted word."""
    claude = root / "claude"
    codex = root / "codex"
    shutil.copytree(FIXTURES / "claude" / "projects", claude)
    shutil.copytree(FIXTURES / "codex" / "home", codex)
    # Old sessions, as on a real machine: a fresh clone's files are minutes old, and the
    # daemon would hold those sessions active until they had been idle for idle_timeout.
    old = time.time() - 2 * 86400
    for path in (*claude.rglob("*"), *codex.rglob("*")):
        if path.is_file():
            os.utime(path, (old, old))
    # Unix socket paths are short: keep the socket in /tmp, not under pytest's deep tmp_path.
    socket_dir = Path(tempfile.mkdtemp(prefix="jvw-", dir="/tmp"))
    vault = Vault(root, claude, codex, root / "vault" / "jobvault.db", socket_dir / "jv.sock")
    vault.live_file.parent.mkdir(parents=True)
    lines = session_lines(12, session=LIVE)
    lines[0] = dumps(user(f"find the {PLANTED} in the logs", 0, session=LIVE))
    vault.live_file.write_bytes(b"".join(lines))
    return vault


def append_answer(vault: Vault, text: str, second: int) -> None:
    """Append one assistant message to the live session, as Claude Code would."""
    with vault.live_file.open("ab") as fh:
        fh.write(dumps(assistant(f"msg_live_{second}", second, session=LIVE, text=text)))


def jobs_written(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


EXPECTED_JOBS = 9  # four Claude Code fixtures, four Codex rollouts, the live session


async def wait_for_jobs(db: Path, count: int = EXPECTED_JOBS, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while jobs_written(db) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"only {jobs_written(db)} of {count} jobs written")
        await asyncio.sleep(0.05)


def dashboard_url(socket: Path) -> dict[str, Any]:
    with Client(socket, timeout=5.0) as client:
        answer: dict[str, Any] = client.call("dashboard.url")
        return answer


@asynccontextmanager
async def serving(vault: Vault, **extra: Any) -> AsyncIterator[tuple[Daemon, dict[str, Any]]]:
    """The real daemon on the vault, once every job is written; yields it and its URL."""
    async with run_daemon(vault.config(**extra)) as daemon:
        await wait_for_jobs(vault.db)
        url = await asyncio.to_thread(dashboard_url, vault.socket)
        yield daemon, url


def session(cookies: bool = True) -> aiohttp.ClientSession:
    # aiohttp keeps no cookie of a bare IP address unless told to (browsers do keep them).
    jar = aiohttp.CookieJar(unsafe=True) if cookies else aiohttp.DummyCookieJar()
    return aiohttp.ClientSession(cookie_jar=jar)


_METRIC = re.compile(r'data-metric="([a-z_]+)" data-value="([^"]*)"')


def metrics(html: str) -> dict[str, float]:
    """The overview's headline figures, from their data-metric / data-value hooks."""
    return {name: float(value) for name, value in _METRIC.findall(html) if value}
