"""The CLI's listing filters, its errors, and the one-writer lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobvault.cli import main
from jobvault.errors import ExitCode
from jobvault.store.lock import WriterLock
from tests.helpers import run, run_json, session_lines


def _import_three(tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    for day, session in ((0, "a"), (1, "b"), (2, "c")):
        sid = f"{session * 8}-0000-4000-8000-000000000000"
        # session_lines times start at 2025-10-01T10:00Z; shift each by whole days.
        lines = [
            line.replace(b"2025-10-01T", f"2025-10-0{1 + day}T".encode())
            for line in session_lines(2, session=sid)
        ]
        (project / f"{sid}.jsonl").write_bytes(b"".join(lines))
    assert run(capsys, "import", str(project), "--db", str(db), "--no-progress")[0] == 0


def test_jobs_limit_since_until(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _import_three(tmp_path, db, capsys)
    every = run_json(capsys, "jobs", "--db", str(db), "--limit", "0")
    assert [j["session_id"][0] for j in every] == ["c", "b", "a"]  # newest first
    assert len(run_json(capsys, "jobs", "--db", str(db), "--limit", "2")) == 2
    since = run_json(capsys, "jobs", "--db", str(db), "--since", "2025-10-02")
    assert [j["session_id"][0] for j in since] == ["c", "b"]
    until = run_json(capsys, "jobs", "--db", str(db), "--until", "2025-10-02T00:00Z")
    assert [j["session_id"][0] for j in until] == ["a"]
    code, out = run(capsys, "jobs", "--db", str(db))
    assert code == 0 and "aaaaaaaa" in out and "prompt" in out


def test_bad_time_and_limit_are_usage_errors(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _import_three(tmp_path, db, capsys)
    assert main(["jobs", "--db", str(db), "--since", "last tuesday"]) == ExitCode.USAGE
    assert "cannot read the time" in capsys.readouterr().err
    assert main(["jobs", "--db", str(db), "--limit", "-1"]) == ExitCode.USAGE


def test_unknown_flag_exits_with_usage_code() -> None:
    with pytest.raises(SystemExit) as info:
        main(["jobs", "--bogus"])
    assert info.value.code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["jobs", "--bogus"], "unrecognized arguments: --bogus"),
        (["stats", "hourly"], "argument report: invalid choice: 'hourly'"),
        (["jobz"], "argument COMMAND: invalid choice: 'jobz'"),
        (["stats", "--since"], "argument --since: expected one argument"),
    ],
)
def test_a_command_line_error_reads_as_the_whole_parser_says_it(
    capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    # The parser of the command alone is built for speed; its errors are the whole parser's.
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert said in err and err.startswith("usage: jobvault")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(f"    {name} " in out for name in ("import", "jobs", "statusline", "team"))


def test_a_value_that_names_a_command_is_not_taken_for_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `--sock` is short for --socket, whose value here is "stats": the command is `jobs`
    # (the parser built for `stats` alone fails on it and the whole parser takes over).
    assert main(["--sock", "stats", "jobs"]) == ExitCode.UNAVAILABLE
    assert "no daemon listening on" in capsys.readouterr().err


def test_import_of_missing_path(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", str(tmp_path / "nope"), "--db", str(db)]) == ExitCode.NOT_FOUND
    assert "no such file or directory" in capsys.readouterr().err


def test_second_writer_is_refused(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "p"
    project.mkdir()
    assert main(["import", str(project), "--db", str(db), "--no-progress"]) == 0
    with WriterLock(db):
        assert main(["import", str(project), "--db", str(db)]) == ExitCode.LOCKED
        assert "another jobvault process" in capsys.readouterr().err
        assert main(["rebuild", "--db", str(db)]) == ExitCode.LOCKED
        assert main(["jobs", "--db", str(db)]) == 0  # readers are never locked out
    assert main(["rebuild", "--db", str(db), "--no-progress"]) == 0
