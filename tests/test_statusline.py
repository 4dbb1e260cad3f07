"""`jobvault statusline` as Claude Code runs it: a process, JSON on stdin, one line out, exit 0."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobvault import paths
from jobvault.cli import statusline
from tests.helpers import assistant, dumps, user
from tests.test_daemon import eventually
from tests.web_helpers import LIVE, Vault, make_vault, serving

NOW_SESSION = "44444444-2222-4333-8444-555555555555"


def _status(**extra: Any) -> dict[str, Any]:
    return {
        "session_id": LIVE,
        "transcript_path": "/nowhere.jsonl",
        "cwd": "/work/live",
        "model": {"id": "claude-sonnet-4-20250514", "display_name": "Sonnet 4"},
        "cost": {"total_cost_usd": 1.2345, "total_duration_ms": 60000},
        "context_window": {"context_window_size": 200000, "used_percentage": 41.6},
        "rate_limits": {
            "five_hour": {"used_percentage": 37.2, "resets_at": 1_893_456_000},
            "seven_day": {"used_percentage": 12, "resets_at": 1_894_000_000},
        },
        **extra,
    }


def _run(stdin: bytes, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "jobvault", "statusline", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _recent_session(vault: Vault) -> None:
    """A session with messages in the last hour and today: today's cost and an active block.

    Just after midnight the last hour is mostly yesterday, so the messages are put between
    the later of an hour ago and today's start (on the machine's clock) and now.
    """
    now = datetime.now(UTC)
    midnight = datetime.fromisoformat(statusline._local_midnight_utc().replace("Z", "+00:00"))
    first = max(now - timedelta(minutes=50), midnight + timedelta(seconds=1))
    step = (now - first) / 4
    moments = [(first + k * step).replace(microsecond=0) for k in range(3)]
    stamp = [m.strftime("%Y-%m-%dT%H:%M:%S.000Z") for m in moments]
    lines = [user("what is left to do", 0, session=NOW_SESSION)]
    for n in (1, 2):
        lines.append(assistant(f"msg_now_{n}", n, session=NOW_SESSION, inp=2000, out=4000,
                               read=50_000))  # fmt: skip
    for line, moment in zip(lines, stamp, strict=True):
        line["timestamp"] = moment
    folder = vault.claude / "-work-now"
    folder.mkdir()
    (folder / f"{NOW_SESSION}.jsonl").write_bytes(b"".join(dumps(line) for line in lines))


async def test_statusline_with_the_daemon_running(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    _recent_session(vault)
    async with serving(vault) as (_, _url):
        code, out, err = await asyncio.to_thread(
            _run, json.dumps(_status()).encode(), "--socket", str(vault.socket)
        )
        assert code == 0, err
        line = out.rstrip("\n")
        assert "\n" not in line and err == ""
        parts = line.split(" · ")
        assert parts[0] == "$1.23 session" and parts[1] == "ctx 42%"
        assert parts[2].endswith(" today") and parts[2] != "$0.00 today"
        assert parts[3].startswith("block ") and " left, $" in parts[3] and parts[3].endswith("/h")
        assert parts[4:] == ["5h 37%", "7d 12%"]
        # The rate limits reach the vault through the daemon (its one writer).
        rows = await eventually(lambda: _samples(vault.db))
        assert [(r[0], r[1]) for r in rows] == [("five_hour", 37.2), ("seven_day", 12.0)]
        assert {r[2] for r in rows} == {LIVE}
        # Claude Code's JSON without cost or context: the vault's own record stands in.
        bare = {"session_id": "claude:" + LIVE}
        code, out, _ = await asyncio.to_thread(
            _run, json.dumps(bare).encode(), "--socket", str(vault.socket)
        )
        assert code == 0 and out.startswith("$0.") and " session · ctx " in out
        assert "today" in out


def _samples(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT window, used_percent, session_id FROM rate_limit_samples ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "stdin",
    [b"", b"not json", b"[1, 2]", b"null", b"\xff\xfe\x00", b"[" * 100_000,
     json.dumps({"cost": "lots", "context_window": [], "rate_limits": {"five_hour": 5}}).encode(),
     json.dumps({"rate_limits": {"five_hour": {"used_percentage": float("nan")}}}).encode(),
     json.dumps({"session_id": 7, "cost": {"total_cost_usd": 1e300}}).encode()],
)  # fmt: skip
def test_bad_or_missing_input_still_prints_a_line_and_exits_zero(
    stdin: bytes, tmp_path: Path
) -> None:
    code, out, err = _run(stdin, "--socket", str(tmp_path / "none.sock"))
    assert code == 0, err
    assert out.endswith("\n") and out.count("\n") == 1
    assert "jobvault: daemon not running" in out
    assert "Traceback" not in err


def test_without_the_daemon_it_shows_what_claude_code_sent(tmp_path: Path) -> None:
    code, out, _ = _run(json.dumps(_status()).encode(), "--socket", str(tmp_path / "x.sock"))
    assert code == 0
    assert out == "$1.23 session · ctx 42% · 5h 37% · 7d 12% · jobvault: daemon not running\n"
    code, out, _ = _run(b"{}", "--help")
    assert code == 0 and out.startswith("usage: jobvault statusline")


def test_the_fast_path_imports_almost_nothing(tmp_path: Path) -> None:
    script = (
        "import sys, io\n"
        "sys.stdin = io.TextIOWrapper(io.BytesIO(b'{}'))\n"
        "from jobvault.cli import main\n"
        f"main(['statusline', '--socket', {str(tmp_path / 'x.sock')!r}])\n"
        "heavy = ('asyncio', 'structlog', 'rich', 'aiohttp', 'jinja2', 'orjson', 'sqlite3',"
        " 'argparse', 'tempfile', 'jobvault.config', 'jobvault.cli.app', 'jobvault.paths')\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy[:5]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[-1] == "[]"


def test_the_socket_is_found_as_the_cli_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert statusline.socket_path({}) == str(paths.default_socket_path())
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    for variable in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(variable, raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # forget the cached choice
    assert statusline.socket_path({}) == str(paths.default_socket_path())
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert statusline.socket_path({}) == str(paths.default_socket_path())
    config = tmp_path / "xdg-config" / "jobvault" / "jobvault.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[jobvault]\nsocket = "~/elsewhere.sock"\n')
    assert statusline.socket_path({}) == str(Path("~/elsewhere.sock").expanduser())
    monkeypatch.setenv("JOBVAULT_SOCKET", "/run/x.sock")
    assert statusline.socket_path({}) == "/run/x.sock"
    assert statusline.socket_path({"socket": "/run/y.sock"}) == "/run/y.sock"
    from jobvault import config as config_mod

    monkeypatch.delenv("JOBVAULT_SOCKET")
    assert statusline.socket_path({}) == str(config_mod.load().socket)


def test_compose_rounds_and_skips_what_is_missing() -> None:
    answers: dict[int, Any] = {
        1: {"totals": {"cost_usd": 12.3456}},
        2: {"blocks": [{"is_active": False}, {"is_active": True,
            "projection": {"remaining_minutes": 125}, "burn_rate": {"cost_per_hour": 4.2}}]},
    }  # fmt: skip
    status = {"cost": {"total_cost_usd": 0.5}}
    assert statusline.compose(status, answers) == (
        "$0.50 session · $12.35 today · block 2h05m left, $4.20/h"
    )
    assert statusline.compose({}, {}) == "jobvault: no answer"
    assert statusline.compose({}, None) == "jobvault: daemon not running"
    limits = {"rate_limits": {"five_hour": {"used_percentage": 101.4}}}
    assert statusline.compose(limits, {1: None}) == "5h 101%"
