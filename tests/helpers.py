"""Helpers for tests: build Claude Code lines, run the CLI in-process, read the archive."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobvault.cli import main

SESSION = "11111111-2222-4333-8444-555555555555"


def ts(second: int) -> str:
    minutes, secs = divmod(second, 60)
    hours, minutes = divmod(minutes, 60)
    return f"2025-10-01T{10 + hours:02d}:{minutes:02d}:{secs:02d}.000Z"


def dumps(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def user(
    text: str, second: int, *, session: str = SESSION, uuid: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "parentUuid": None,
        "isSidechain": False,
        "userType": "external",
        "cwd": "/work/app",
        "sessionId": session,
        "version": "2.0.37",
        "gitBranch": "main",
        "type": "user",
        "message": {"role": "user", "content": text},
        "uuid": uuid or f"u{second}",
        "timestamp": ts(second),
        **extra,
    }


def assistant(
    msg_id: str,
    second: int,
    *,
    session: str = SESSION,
    text: str = "ok",
    inp: int = 10,
    out: int = 100,
    write: int = 0,
    read: int = 0,
    model: str = "claude-sonnet-4-20250514",
    request: str | None = None,
    content: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "parentUuid": None,
        "isSidechain": False,
        "userType": "external",
        "cwd": "/work/app",
        "sessionId": session,
        "version": "2.0.37",
        "gitBranch": "main",
        "type": "assistant",
        "message": {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content if content is not None else [{"type": "text", "text": text}],
            "usage": {
                "input_tokens": inp,
                "output_tokens": out,
                "cache_creation_input_tokens": write,
                "cache_read_input_tokens": read,
            },
        },
        "requestId": request or f"req_{msg_id}",
        "uuid": f"a{msg_id}{second}",
        "timestamp": ts(second),
        **extra,
    }


def session_lines(n: int, *, session: str = SESSION, base: int = 0) -> list[bytes]:
    """A plausible session of `n` exchanges: prompt, streamed answer, tool call and result."""
    lines = [dumps(user(f"prompt number {base} in {session[:8]}", base, session=session))]
    for i in range(n):
        mid = f"msg_{session[:8]}_{base}_{i}"
        tool_id = f"toolu_{session[:8]}_{base}_{i}"
        sec = base + 2 * i + 1
        lines.append(dumps(assistant(mid, sec, session=session, out=1, text=f"thinking {i}")))
        lines.append(
            dumps(
                assistant(
                    mid,
                    sec,
                    session=session,
                    out=50 + i,
                    content=[
                        {
                            "type": "tool_use",
                            "id": tool_id,
                            "name": "Bash",
                            "input": {"command": f"ls {i}"},
                        }
                    ],
                )
            )
        )
        lines.append(
            dumps(
                {
                    **user("", sec + 1, session=session, uuid=f"r{base}_{i}"),
                    "message": {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": tool_id,
                                "content": f"out {i}",
                                "is_error": i % 5 == 4,
                            }
                        ],
                    },
                }
            )
        )
    return lines


def expected_tokens(n: int) -> dict[str, int]:
    """Token totals of `session_lines(n)` (streamed duplicates counted once)."""
    return {"input_tokens": 10 * n, "output_tokens": sum(50 + i for i in range(n))}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out = run(capsys, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def archived(db: Path, path: Path) -> bytes:
    """Concatenate the archived chunks of the current generation of `path`."""
    import zstandard

    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT id FROM files WHERE path = ? AND state IN ('active','deleted') "
            "ORDER BY id DESC LIMIT 1",
            (str(path),),
        ).fetchone()
        assert row, f"{path} not tracked"
        out = b""
        dctx = zstandard.ZstdDecompressor()
        for codec, data, length in conn.execute(
            "SELECT codec, data, length FROM chunks WHERE file_id = ? ORDER BY offset", (row[0],)
        ):
            out += dctx.decompress(data, max_output_size=length) if codec == "zstd" else data
        return out
    finally:
        conn.close()


def archived_total(db: Path) -> int:
    """Bytes archived so far (0 while the database does not exist yet); read-only."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT COALESCE(SUM(length), 0) FROM chunks").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def assert_matches_oracle(
    job_id: str, job: dict[str, Any], expected: dict[str, Any], skip: set[str] | frozenset[str]
) -> None:
    """Every key of a hand-derived oracle (but notes, `_…`, and `skip`) equals the job's;
    costs within a millionth of a dollar. All mismatches are reported at once."""
    mismatches = []
    for key, want in sorted(expected.items()):
        if key.startswith("_") or key in skip:
            continue
        got = job.get(key, "<missing>")
        if key == "cost_usd":
            ok = isinstance(got, int | float) and got == pytest.approx(want, abs=1e-6)
        else:
            ok = got == want
        if not ok:
            mismatches.append(f"  {key}: expected {want!r}, jobvault gave {got!r}")
    assert not mismatches, f"{job_id} disagrees with the oracle:\n" + "\n".join(mismatches)
