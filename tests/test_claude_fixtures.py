"""jobvault's job records for its own Claude Code fixtures versus a hand-derived oracle.

The fixtures (tests/fixtures/claude/projects, written once by
tests/fixtures/make_claude_fixtures.py and committed) cover: streamed duplicate lines, an
isMeta line and a /clear wrapper before the real prompt, failing Bash and Edit calls, a 1h
cache write, a `summary` line, a subagent in the `<session>/subagents/` layout, a resumed
session repeating two messages of another session, old in-file sidechain lines, a flat v2.0
`agent-<id>.jsonl` file, a user interruption, a message without requestId, and an API error.
tests/fixtures/claude/expected.json holds the expected values, derived by hand (the arithmetic
is in its "_arith" notes); nothing here is generated at test time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from jobvault.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude"
EXPECTED: dict[str, dict[str, Any]] = {
    k: v
    for k, v in json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8")).items()
    if not k.startswith("_")
}

REQUIRED_KEYS = {
    "input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens", "cost_usd",
    "tool_call_count", "failed_tool_calls", "primary_tool", "files_modified", "message_count",
    "user_message_count", "subagent_count", "status", "prompt", "summary", "model", "models",
    "started_at", "ended_at", "duration_ms",
}  # fmt: skip


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    capsys.readouterr()  # drop anything printed before
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, f"jobvault {' '.join(argv)} exited {code}: {out}"
    return json.loads(out)


@pytest.fixture
def imported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Copy the committed fixture tree into tmp_path and import it; return the database path."""
    src = FIXTURES / "projects"
    if not src.is_dir():
        pytest.fail(f"{src} is missing: run tests/fixtures/make_claude_fixtures.py")
    projects = tmp_path / "claude-config" / "projects"
    shutil.copytree(src, projects)
    db = tmp_path / "vault" / "fixtures.db"
    _run_json(capsys, ["import", str(projects), "--db", str(db), "--json", "--no-progress"])
    return db


def test_expected_file_covers_required_keys() -> None:
    assert len(EXPECTED) == 4
    for job_id, exp in EXPECTED.items():
        missing = REQUIRED_KEYS - exp.keys()
        assert not missing, f"{job_id}: expected.json lacks {sorted(missing)}"


def test_one_job_per_main_file(imported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = _run_json(capsys, ["jobs", "--json", "--limit", "0", "--db", str(imported)])
    ids = {j["id"] for j in jobs}
    # No job for <A>/subagents/agent-a4c1e9f2.jsonl nor for the flat agent-5e7f1a2b.jsonl.
    assert ids == set(EXPECTED)


@pytest.mark.parametrize("job_id", sorted(EXPECTED))
def test_job_matches_oracle(
    job_id: str, imported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _run_json(capsys, ["show", job_id, "--json", "--db", str(imported)])
    assert job["id"] == job_id
    mismatches = []
    for key, want in sorted(EXPECTED[job_id].items()):
        if key.startswith("_"):
            continue
        got = job.get(key, "<missing>")
        if key == "cost_usd":
            # jobvault rounds the job cost to 6 decimals.
            ok = isinstance(got, (int, float)) and got == pytest.approx(want, rel=1e-9, abs=1e-6)
        else:
            ok = got == want
        if not ok:
            mismatches.append(f"  {key}: expected {want!r}, jobvault gave {got!r}")
    assert not mismatches, f"{job_id} disagrees with the oracle:\n" + "\n".join(mismatches)
