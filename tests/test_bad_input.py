"""Bad input is archived, counted with its file and offset, logged, and never stops ingestion."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from jobvault import config as config_mod
from jobvault.ingest.engine import Engine
from jobvault.store.db import open_writer
from jobvault.store.writer import Store
from tests.helpers import SESSION, archived, dumps, run_json, session_lines, user


def _bad_lines(db: Path) -> list[tuple[str, int, str]]:
    conn = sqlite3.connect(db)
    try:
        return [
            (Path(p).name, off, reason)
            for p, off, reason in conn.execute(
                "SELECT f.path, b.offset, b.reason FROM bad_lines b JOIN files f "
                "ON f.id = b.file_id ORDER BY f.path, b.offset"
            )
        ]
    finally:
        conn.close()


def test_bad_lines_are_archived_counted_and_skipped(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "p"
    project.mkdir()
    good = session_lines(3)
    big = dumps(user("x" * (5 * 1024 * 1024), 100, uuid="big"))  # a valid 5 MB line
    parts = [
        good[0],
        b'{"type": "user", "message": \n',  # corrupt JSON
        b"\x00" * 64 + b"\n",  # NUL bytes
        b'{"type":"user","text":"\xff\xfe invalid utf-8"}\n',
        big,
        b"[1, 2, 3]\n",  # JSON, but not an object
        *good[1:],
    ]
    path = project / f"{SESSION}.jsonl"
    path.write_bytes(b"".join(parts))
    (project / "empty.jsonl").write_bytes(b"")
    nonl = project / "nonewline.jsonl"
    nonl.write_bytes(dumps(user("a", 1, session="nonewline")) + b'{"type":"user","trunc')

    from jobvault.cli import main

    capsys.readouterr()
    assert main(["import", str(project), "--db", str(db), "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    logs = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    assert summary["bytes_archived"] == sum(p.stat().st_size for p in project.iterdir())
    assert archived(db, path) == path.read_bytes()
    assert archived(db, nonl) == nonl.read_bytes()

    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    bad = _bad_lines(db)
    main_bad = [(off, reason) for name, off, reason in bad if name == path.name]
    assert [off for off, _ in main_bad] == [offsets[1], offsets[2], offsets[3], offsets[5]]
    assert main_bad[0][1].startswith("invalid JSON")
    assert main_bad[3][1] == "not a JSON object"
    [(_name, reason)] = [(n, r) for n, _, r in bad if n == nonl.name]
    assert reason.startswith("unterminated final line (invalid JSON")
    assert summary["bad_lines"] == 5
    assert sum(1 for e in logs if e["event"] == "bad_line") == 5
    assert all(e["file"] and "offset" in e for e in logs if e["event"] == "bad_line")
    assert all(e["level"] == "warning" for e in logs if e["event"] == "bad_line")

    # The rest of the file continued: every good line and the 5 MB line were parsed.
    job = run_json(capsys, "show", SESSION, "--db", str(db))
    assert job["tool_call_count"] == 3
    assert job["message_count"] == 3 + 3 + 1 + 1  # 3 answers, 3 results, 2 prompts
    # The empty file is tracked and makes no job.
    ids = {j["session_id"] for j in run_json(capsys, "jobs", "--db", str(db), "--limit", "0")}
    assert ids == {SESSION, "nonewline"}


def test_overlong_line_is_archived_not_parsed(tmp_path: Path, db: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    good = session_lines(2)
    long_line = dumps(user("y" * 300_000, 50, uuid="long"))
    path = project / f"{SESSION}.jsonl"
    path.write_bytes(good[0] + long_line + b"".join(good[1:]))
    config = config_mod.Config(watch=(project,), db=db, max_line_bytes=64 * 1024)
    store = Store(open_writer(db))
    engine = Engine(config, store)
    engine.poll_all([project])
    engine.finalize_all()
    engine.close()
    store.close()
    assert archived(db, path) == path.read_bytes()
    assert _bad_lines(db) == [(path.name, len(good[0]), "line longer than max_line_bytes")]
    conn = sqlite3.connect(db)
    record = conn.execute("SELECT tool_call_count, user_message_count FROM jobs").fetchone()
    conn.close()
    assert record == (2, 1)  # the long prompt was not parsed; the rest was


def test_logs_never_carry_prompt_or_tool_text(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even at debug level, logs name files, offsets and reasons, never what was said."""
    from jobvault.cli import main

    project = tmp_path / "p"
    project.mkdir()
    secret = "SECRET-PROMPT-7f3a"
    lines = session_lines(2)
    lines.append(dumps(user(f"please deploy {secret}", 200)))
    lines.append(b'{"type":"user","message":"' + secret.encode() + b" broken\n")  # a bad line
    (project / f"{SESSION}.jsonl").write_bytes(b"".join(lines))
    capsys.readouterr()
    assert main(["import", str(project), "--db", str(db), "--log-level", "debug",
                 "--no-progress"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    # It did log, in detail (a file read by a worker is `file_imported`: not kept tracked).
    assert "bad_line" in err and ("file_tracked" in err or "file_imported" in err)
    assert secret not in err


def test_token_counts_out_of_range_are_bad_values_not_crashes(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A count past SQLite's 64 bits (or two summing past it) is a counted bad value; the
    rest of the session, and `rebuild`, go on."""
    from tests.helpers import assistant

    project = tmp_path / "p"
    project.mkdir()
    lines = [
        dumps(user("hello", 0)),
        dumps(assistant("msg_huge", 1, inp=18446744073709551615, out=7)),
        dumps(assistant("msg_half1", 2, inp=2**62, out=5)),
        dumps(assistant("msg_half2", 3, inp=2**62, out=5)),
        dumps(assistant("msg_neg", 4, inp=-5, out=3)),
        dumps(assistant("msg_ok", 5, inp=11, out=13)),
    ]
    (project / f"{SESSION}.jsonl").write_bytes(b"".join(lines))
    summary = run_json(capsys, "import", str(project), "--db", str(db), "--no-progress")
    assert summary["bad_lines"] == 4
    reasons = [reason for _name, _off, reason in _bad_lines(db)]
    assert all(r.startswith("bad value: input_tokens") for r in reasons), reasons
    job = run_json(capsys, "show", SESSION, "--db", str(db))
    # The bad values count 0; everything else on those lines is used.
    assert job["input_tokens"] == 11
    assert job["output_tokens"] == 7 + 5 + 5 + 3 + 13
    assert run_json(capsys, "rebuild", "--db", str(db), "--no-progress")["jobs"] == 1
    assert run_json(capsys, "show", SESSION, "--db", str(db))["input_tokens"] == 11
