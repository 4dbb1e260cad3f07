"""The CLI a user expects: paths from anywhere, the database asked for, filters, CSV, tables
that fit, words in the right number, unknown costs marked; and start-up that imports only
what a command uses (issue 13, findings 7 to 9 and the usability gaps)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobvault.cli import main
from jobvault.cli.output import flatten
from jobvault.errors import ExitCode
from tests.helpers import SESSION, assistant, dumps, run, run_json, session_lines, user
from tests.procs import DaemonProcess

B = "bbbbbbbb-0000-4000-8000-000000000000"
C = "cccccccc-0000-4000-8000-000000000000"
RECORD_KEYS = {
    "id", "source", "session_id", "project", "cwd", "git_branch", "version", "model", "models",
    "status", "started_at", "ended_at", "duration_ms", "prompt", "summary", "input_tokens",
    "output_tokens", "cache_creation_tokens", "cache_read_tokens", "reasoning_tokens",
    "cost_usd", "pricing_version", "tool_call_count", "failed_tool_calls", "primary_tool",
    "files_modified", "message_count", "user_message_count", "subagent_count",
    "context_window", "context_used_pct", "source_path", "machine_id", "title",
    "unpriced_models",
}  # fmt: skip


def _vault(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """Three sessions in two projects: a long Bash one, an Edit one, one of an unknown model."""
    root = tmp_path / "projects"
    (root / "-work-app").mkdir(parents=True)
    (root / "-work-api").mkdir(parents=True)
    (root / "-work-app" / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(6)))
    edit = [
        {"type": "tool_use", "id": "toolu_e1", "name": "Edit",
         "input": {"file_path": "/work/api/src/main.py", "old_string": "a", "new_string": "b"}},
    ]  # fmt: skip
    lines = [
        dumps(user("fix the api", 0, session=B, cwd="/work/api")),
        dumps(assistant("m_b1", 30, session=B, content=edit, model="claude-opus-4-1-20250805",
                        inp=100, out=2000, cwd="/work/api")),
        dumps({**user("", 31, session=B, cwd="/work/api"), "message": {"role": "user",
               "content": [{"type": "tool_result", "tool_use_id": "toolu_e1", "content": "ok"}]}}),
    ]  # fmt: skip
    (root / "-work-api" / f"{B}.jsonl").write_bytes(b"".join(lines))
    (root / "-work-api" / f"{C}.jsonl").write_bytes(
        dumps(user("try the new model", 0, session=C, cwd="/work/api"))
        + dumps(assistant("m_c1", 5, session=C, model="claude-mystery-9", cwd="/work/api"))
    )
    db = tmp_path / "vault" / "jobvault.db"
    assert run(capsys, "import", str(root), "--db", str(db), "--no-progress")[0] == 0
    return root, db


def test_relative_paths_work_from_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _vault(tmp_path, capsys)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf.toml").write_text('log_level = "warning"\n')
    jobs = run_json(capsys, "jobs", "--db", "vault/jobvault.db", "--config", "conf.toml")
    assert len(jobs) == 3
    assert run_json(capsys, "status", "--db", "vault/jobvault.db")["jobs"] == 3
    assert run_json(capsys, "stats", "daily", "--db", "./vault/../vault/jobvault.db")["rows"]
    # Global options before the command, as well as after it.
    assert len(run_json(capsys, "--db", "vault/jobvault.db", "jobs", "--limit", "2")) == 2
    code = main(["--socket", "nowhere.sock", "--db", "vault/jobvault.db", "status", "--json"])
    assert code == ExitCode.UNAVAILABLE  # --socket was asked for explicitly, and is not there
    assert "nowhere.sock" in capsys.readouterr().err


def test_an_explicit_database_is_the_one_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, other_db = _vault(tmp_path, capsys)
    live = tmp_path / "live"
    (live / "-p").mkdir(parents=True)
    (live / "-p" / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(1)))
    db = tmp_path / "daemon" / "jobvault.db"
    sock = Path(os.environ["XDG_RUNTIME_DIR"]) / "jobvault" / "jobvault.sock"  # the default
    with DaemonProcess(live, db, sock) as daemon:
        deadline = time.monotonic() + 30
        while daemon.status()["jobs"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # No database named: the running daemon answers.
        assert run_json(capsys, "status")["pid"] == daemon.pid
        # A database that does not exist is an error, never the daemon's jobs.
        monkeypatch.setenv("JOBVAULT_DB", str(tmp_path / "nonexistent" / "x.db"))
        assert main(["jobs"]) == ExitCode.NOT_FOUND
        assert "no database at" in capsys.readouterr().err
        # The daemon's own database, named: through the daemon.
        monkeypatch.setenv("JOBVAULT_DB", str(db))
        assert run_json(capsys, "status")["pid"] == daemon.pid
        # Another one: read directly, whatever runs.
        monkeypatch.setenv("JOBVAULT_DB", str(other_db))
        assert len(run_json(capsys, "jobs")) == 3
        assert run_json(capsys, "status")["daemon"] == "not running"
        monkeypatch.delenv("JOBVAULT_DB")
        assert len(run_json(capsys, "jobs", "--db", str(other_db))) == 3
        # ...and an explicit --socket with a database that daemon does not serve is refused.
        assert main(["jobs", "--db", str(other_db), "--socket", str(sock)]) == ExitCode.USAGE
        assert "serves" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["jobs", "--json", "--limit", "50"],
        ["stats", "daily", "--json"],
        ["stats", "models", "--csv"],
        ["status", "--json"],
        ["jobs", "--csv"],
    ],
)
def test_read_commands_import_only_what_they_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    _, db = _vault(tmp_path, capsys)
    csv = "" if "--csv" in argv else ", 'csv'"
    code = (
        "import sys\n"
        "from jobvault.cli import main\n"
        f"assert main({[*argv, '--db', str(db)]!r}) == 0\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'asyncio', 'structlog', 'rich', 'zstandard', 'watchdog', 'tomllib', 'zoneinfo', "
        f"'orjson', 'dataclasses', 'inspect', 'uuid', 'typing', 'socket'{csv}}})\n"
        "print(heavy, file=sys.stderr)\n"
    )
    # (in UTC, reports need no time zone database: zoneinfo alone costs 3 ms; orjson, with the
    # dataclasses, inspect and uuid it imports, costs 10 ms: small answers use `json`; typing
    # is 3 ms and only the type checker reads it; with no daemon running (no socket file)
    # the socket client is not imported; csv only for --csv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          env={**os.environ, "TZ": "UTC"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().strip().splitlines()[-1] == "[]"


def test_jobs_takes_the_jobs_list_filters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, db = _vault(tmp_path, capsys)

    def ids(*args: str) -> list[str]:
        return [j["session_id"][0] for j in run_json(capsys, "jobs", "--db", str(db), *args)]

    assert sorted(ids("--project", "-work-api")) == ["b", "c"]
    assert ids("--tool", "Bash") == ["1"]
    assert ids("--tool", "Edit") == ["b"]
    assert ids("--model", "claude-mystery-9") == ["c"]
    assert sorted(ids("--source", "claude")) == ["1", "b", "c"]
    assert ids("--source", "codex") == []
    assert sorted(ids("--status", "completed")) == ["1", "b", "c"]
    assert ids("--cwd", "/work/api/") == ids("--cwd", "/work/api") != []
    assert ids("--file", "/work/api/src/main.py") == ["b"]
    assert ids("--file", "/work/api/") == ["b"]
    assert ids("--file", "*.py") == ["b"]
    assert ids("--min-cost", "0.01") == ["b"]
    assert sorted(ids("--max-cost", "0.01")) == ["1", "c"]
    assert ids("--min-duration", "20s") == ["b"]
    assert sorted(ids("--max-duration", "15s")) == ["1", "c"]
    assert ids("--order", "cost")[0] == "b"
    assert ids("--order", "+cost")[-1] == "b"
    assert ids("--order=-duration_ms")[0] == "b"
    assert main(["jobs", "--db", str(db), "--order", "size"]) == ExitCode.USAGE
    assert main(["jobs", "--db", str(db), "--min-duration", "soon"]) == ExitCode.USAGE
    help_text = subprocess.run([sys.executable, "-m", "jobvault", "jobs", "--help"],
                               capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    for flag in ("--project", "--tool", "--model", "--source", "--status", "--file",
                 "--min-cost", "--max-cost", "--min-duration", "--max-duration", "--order",
                 "--csv", "--cwd"):  # fmt: skip
        assert flag in help_text


def _csv(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str]]:
    code, out = run(capsys, *args, "--csv")
    assert code == 0, out
    return list(csv.DictReader(io.StringIO(out)))


@pytest.mark.parametrize(
    "report", ["daily", "weekly", "monthly", "models", "projects", "sources", "tools", "blocks"]
)
def test_csv_has_the_json_fields_one_row_per_item(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], report: str
) -> None:
    _, db = _vault(tmp_path, capsys)
    args = ("stats", report, "--db", str(db), "--timezone", "UTC")
    result = run_json(capsys, *args)
    items = result["blocks"] if report == "blocks" else result["rows"]
    rows = _csv(capsys, *args)
    assert items and len(rows) == len(items)
    for item, row in zip(items, rows, strict=True):
        flat = flatten(item)
        assert {k: v for k, v in row.items() if v != "" or k in flat} == {
            k: v for k, v in flat.items() if k in row
        }
        assert set(flat) <= set(row)


def test_jobs_csv_and_json_keep_their_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, db = _vault(tmp_path, capsys)
    from dataclasses import fields

    from jobvault.records import JobRecord

    jobs = run_json(capsys, "jobs", "--db", str(db))
    keys = {f.name for f in fields(JobRecord)}
    assert keys >= RECORD_KEYS  # the README's stable keys
    assert all(set(job) == keys for job in jobs)  # --json: the record, unchanged in shape
    rows = _csv(capsys, "jobs", "--db", str(db))
    assert [r["id"] for r in rows] == [j["id"] for j in jobs]
    assert set(rows[0]) == keys
    by_id = {r["id"]: r for r in rows}
    for job in jobs:
        row = by_id[job["id"]]
        assert row["models"] == ";".join(job["models"])
        assert float(row["cost_usd"]) == job["cost_usd"]
        assert row["input_tokens"] == str(job["input_tokens"])


def test_tables_fit_80_columns_and_keep_the_token_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, db = _vault(tmp_path, capsys)
    monkeypatch.setenv("COLUMNS", "80")
    reports = ("daily", "weekly", "monthly", "models", "projects", "sources", "tools", "blocks")
    for args in (["jobs"], *(["stats", r, "--timezone", "UTC"] for r in reports)):
        code, out = run(capsys, *args, "--db", str(db))
        assert code == 0, out
        lines = out.splitlines()
        assert lines and max(len(line) for line in lines) <= 80, (args, out)
        if args[0] == "stats" and args[1] not in ("tools", "blocks"):
            header = lines[1]  # under the title
            for short, long in (("in", "input"), ("out", "output"),
                                ("c.write", "cache write"), ("c.read", "cache read")):  # fmt: skip
                assert short in header.split() or long in header, (args, header)
            assert "tokens" in header and "cost" in header
        if args[0] == "jobs":
            assert "tokens" in lines[0] and "cost" in lines[0]


def test_words_in_the_right_number_and_unknown_costs_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, db = _vault(tmp_path, capsys)
    monkeypatch.setenv("COLUMNS", "120")
    shown = run(capsys, "show", C, "--db", str(db))[1]
    assert "(1 prompt)" in shown and "1 prompts" not in shown
    assert "no price for claude-mystery-9" in shown and "$0.0000 (" not in shown
    job = run_json(capsys, "show", C, "--db", str(db))
    assert job["cost_usd"] == 0 and job["unpriced_models"] == ["claude-mystery-9"]
    table = run(capsys, "jobs", "--db", str(db))[1]
    line = next(line for line in table.splitlines() if line.startswith("cccccccc"))
    assert " ? " in f"{line} " and "$0.00" not in line
    models = run(capsys, "stats", "models", "--db", str(db))[1]
    line = next(line for line in models.splitlines() if "mystery" in line)
    assert line.rstrip().endswith("?")
    daily = run(capsys, "stats", "daily", "--db", str(db), "--timezone", "UTC")[1]
    assert "+?" in daily and "missing from the price table" in daily
    status = run(capsys, "status", "--db", str(db))[1]
    assert "in 3 files" in status
    (tmp_path / "one").mkdir()
    one = tmp_path / "one" / "projects" / "-p"
    one.mkdir(parents=True)
    (one / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(1)))
    code, out = run(capsys, "import", str(one), "--db", str(tmp_path / "one" / "vault" / "v.db"),
                    "--no-progress")  # fmt: skip
    assert code == 0 and "imported 1 file:" in out and "1 job " in out


def test_export_never_overwrites_and_stays_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One session found in two watched roots (~/.claude and ~/.config/claude, say).
    roots = [tmp_path / "a" / "projects", tmp_path / "b" / "projects"]
    data = b"".join(session_lines(2))
    for root in roots:
        (root / "-work-app").mkdir(parents=True)
        (root / "-work-app" / f"{SESSION}.jsonl").write_bytes(data)
    db = tmp_path / "v.db"
    assert run(capsys, "import", *map(str, roots), "--db", str(db), "--no-progress")[0] == 0
    out = tmp_path / "out"
    code, printed = run(capsys, "export", SESSION, "--db", str(db), "--dir", str(out))
    assert code == 0
    targets = printed.split()
    assert len(targets) == len(set(targets)) == 2  # never the same target twice
    for target in map(Path, targets):
        assert target.read_bytes() == data
        assert target.stat().st_mode & 0o777 == 0o600
        assert target.parent.stat().st_mode & 0o777 == 0o700
    assert main(["export", SESSION, "--db", str(db), "--dir", str(out)]) == ExitCode.USAGE
    assert "use --force" in capsys.readouterr().err
    assert main(["export", SESSION, "--db", str(db), "--dir", str(out), "--force"]) == 0
