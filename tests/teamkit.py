"""Helpers for the team-vault tests: machines' vaults built with `jobvault import` from
synthetic transcripts, pushes through the CLI, and a look at what the team database holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import assistant, dumps, run, session_lines, user

PROJECT = "-home-dev-app"
TABLES = ("machines", "jobs", "job_usage", "tool_calls", "subagents", "files_modified",
          "usage_keys", "shared_keys", "shared_jobs", "usage_hourly", "archive_files",
          "archive_chunks")  # fmt: skip
# Columns that say when a row was written, not what it holds.
VOLATILE = {"pushed_at", "first_push_at", "last_push_at", "full_since"}


def sid(n: int) -> str:
    """A session id (distinct per n)."""
    return f"{n:08x}-aaaa-4bbb-8ccc-{n:012x}"


def write_session(root: Path, session: str, lines: list[bytes], project: str = PROJECT) -> Path:
    path = root / "projects" / project / f"{session}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def append(path: Path, lines: list[bytes]) -> None:
    with path.open("ab") as fh:
        fh.write(b"".join(lines))


def machine(
    capsys: pytest.CaptureFixture[str], base: Path, name: str, sessions: dict[str, list[bytes]]
) -> tuple[Path, Path]:
    """A machine's transcripts under base/name and its vault; returns (projects root, db)."""
    root = base / name / "claude"
    for session, lines in sessions.items():
        write_session(root, session, lines)
    db = base / name / "vault" / "jobvault.db"
    import_into(capsys, db, root)
    return root, db


def import_into(capsys: pytest.CaptureFixture[str], db: Path, *roots: Path) -> None:
    code, out = run(capsys, "import", *map(str, roots), "--db", str(db), "--no-progress")
    assert code == 0, out


def sync(capsys: pytest.CaptureFixture[str], db: Path, url: str, *extra: str) -> dict[str, Any]:
    capsys.readouterr()
    from jobvault.cli import main

    code = main(["sync", "--to", url, "--db", str(db), "--json", "--no-progress", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result: dict[str, Any] = json.loads(captured.out)
    return result


def init(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, out = run(capsys, "team", "init", "--url", url)
    assert code == 0, out


def rows(url: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of a team table, sorted, without the columns that are times of writing."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(f"SELECT * FROM jobvault.{table}")
        names = [d.name for d in cur.description or ()]
        keep = [i for i, n in enumerate(names) if n not in VOLATILE]
        return sorted(
            (tuple(_plain(r[i]) for i in keep) for r in cur.fetchall()), key=lambda r: repr(r)
        )


def _plain(value: Any) -> Any:
    # Sums of costs depend on the order they were added in: compare them to 1e-9 dollars.
    return round(value, 9) if isinstance(value, float) else value


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {table: rows(url, table) for table in TABLES}


def check_consistent(url: str) -> None:
    """The rollup equals every machine's hourly rows summed; no child row lacks its job."""
    with psycopg.connect(url) as conn:
        diff = conn.execute(
            """
            SELECT * FROM (
                SELECT u.hour, j.source, u.model, SUM(u.messages) m, SUM(u.input_tokens) i,
                       SUM(u.output_tokens) o, SUM(u.cache_creation_tokens) w,
                       SUM(u.cache_read_tokens) r, ROUND(SUM(u.cost_usd)::numeric, 6) c
                FROM jobvault.job_usage u JOIN jobvault.jobs j USING (machine_id, job_id)
                WHERE u.hour IS NOT NULL GROUP BY 1, 2, 3
            ) a FULL JOIN (
                SELECT hour, source, model, messages m, input_tokens i, output_tokens o,
                       cache_creation_tokens w, cache_read_tokens r,
                       ROUND(cost_usd::numeric, 6) c
                FROM jobvault.usage_hourly
            ) b USING (hour, source, model)
            WHERE (a.m, a.i, a.o, a.w, a.r, a.c) IS DISTINCT FROM (b.m, b.i, b.o, b.w, b.r, b.c)
            """
        ).fetchall()
        assert diff == [], f"usage_hourly disagrees with job_usage: {diff[:5]}"


def claude_lines(session: str, n: int, base: int = 0) -> list[bytes]:
    return session_lines(n, session=session, base=base)


__all__ = ["assistant", "dumps", "user"]
