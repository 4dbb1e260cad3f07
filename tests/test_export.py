"""`export` restores every imported file byte for byte, even after the original is deleted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SESSION, dumps, run, session_lines, sha256, user


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "projects" / "-work-app"
    project.mkdir(parents=True)
    return project


def test_export_is_byte_identical_after_delete(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = _project(tmp_path)
    main_file = project / f"{SESSION}.jsonl"
    main_file.write_bytes(b"".join(session_lines(6)))
    # A subagent in the current layout and a file whose last line has no newline.
    sub = project / SESSION / "subagents" / "agent-abc123.jsonl"
    sub.parent.mkdir(parents=True)
    sub_line = dumps({**user("sub task", 3), "isSidechain": True, "agentId": "abc123"})
    sub.write_bytes(sub_line + sub_line.rstrip(b"\n"))
    other = project / "22222222-2222-4333-8444-555555555555.jsonl"
    other.write_bytes(dumps(user("no newline at the end", 1, session=other.stem)).rstrip(b"\n"))
    digests = {p: sha256(p) for p in (main_file, sub, other)}

    code, _ = run(capsys, "import", str(tmp_path / "projects"), "--db", str(db), "--no-progress")
    assert code == 0
    for path in (main_file, sub, other):
        path.unlink()

    out = tmp_path / "restored.jsonl"
    assert run(capsys, "export", SESSION, "--db", str(db), "-o", str(out))[0] == 0
    assert sha256(out) == digests[main_file]
    # An existing file is never overwritten silently...
    from jobvault.cli import main

    assert main(["export", other.stem, "--db", str(db), "-o", str(out)]) == 64
    assert "exists: use --force" in capsys.readouterr().err
    assert sha256(out) == digests[main_file]
    # ...but on request, and the copy stays private.
    assert run(capsys, "export", other.stem, "--db", str(db), "-o", str(out), "--force")[0] == 0
    assert sha256(out) == digests[other]
    assert out.stat().st_mode & 0o777 == 0o600

    restore = tmp_path / "restore"
    assert run(capsys, "export", SESSION, "--db", str(db), "--dir", str(restore))[0] == 0
    assert sha256(restore / "-work-app" / f"{SESSION}.jsonl") == digests[main_file]
    assert (
        sha256(restore / "-work-app" / SESSION / "subagents" / "agent-abc123.jsonl")
        == (digests[sub])
    )


def test_export_to_stdout(
    tmp_path: Path, db: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    from jobvault.cli import main

    project = _project(tmp_path)
    data = b"".join(session_lines(2))
    (project / f"{SESSION}.jsonl").write_bytes(data)
    assert main(["import", str(project), "--db", str(db), "--no-progress"]) == 0
    capfdbinary.readouterr()
    assert main(["export", SESSION[:8], "--db", str(db)]) == 0
    assert capfdbinary.readouterr().out == data


def test_unknown_job_is_a_clear_error(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = _project(tmp_path)
    (project / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(1)))
    run(capsys, "import", str(project), "--db", str(db), "--no-progress")
    from jobvault.cli import main

    assert main(["show", "nope", "--db", str(db)]) == 66
    assert "no job matches 'nope'" in capsys.readouterr().err
