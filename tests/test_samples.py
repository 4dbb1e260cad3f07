"""The real lines and shape fixtures in ../shared/samples import cleanly and losslessly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import archived, run, run_json


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    return dst


def test_real_lines_import_without_crash(
    samples: Path, tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = _copy(samples / "claude-real-lines", tmp_path / "real")
    files = sorted(tree.rglob("*.jsonl"))
    summary = run_json(capsys, "import", str(tree), "--db", str(db), "--no-progress")
    assert summary["files"] == len(files)
    assert summary["bytes_archived"] == sum(f.stat().st_size for f in files)
    assert summary["bad_lines"] == 0
    for path in files:
        assert archived(db, path) == path.read_bytes()
    jobs = run_json(capsys, "jobs", "--db", str(db), "--limit", "0")
    assert jobs and all(j["status"] in ("completed", "interrupted", "error") for j in jobs)
    assert sum(j["tool_call_count"] for j in jobs) > 0


def test_shape_fixtures_import_and_attach_subagents(
    samples: Path, tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = _copy(samples / "shape-fixtures" / "claude", tmp_path / "shape")
    files = sorted(tree.rglob("*.jsonl"))
    summary = run_json(capsys, "import", str(tree), "--db", str(db), "--no-progress")
    assert summary["bytes_archived"] == sum(f.stat().st_size for f in files)
    assert summary["bad_lines"] == 0  # unknown line types are skipped, not errors
    jobs = {j["session_id"]: j for j in run_json(capsys, "jobs", "--db", str(db), "--limit", "0")}
    # The subagent file belongs to its parent: no job of its own.
    parent = "0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f"
    assert set(jobs) == {"small", "large", "schema_drift", parent}
    detail = run_json(capsys, "show", f"claude:{parent}", "--db", str(db))
    assert detail["subagent_count"] == 1
    assert detail["subagents"][0]["agent_id"] == "a0ad4f44468bdf20d"
    assert detail["subagents"][0]["layout"] == "subagents-dir"
    assert detail["tool_call_count"] == 2  # the parent's Task and the subagent's bash
    assert detail["prompt"] == "Delegate a repo search to a subagent"
    # The drifting schema (assistant content as a plain string) still yields a summary.
    drift = run_json(capsys, "show", "schema_drift", "--db", str(db))
    assert drift["summary"] == "Read README and extracted the title."
    code, _ = run(capsys, "export", "small", "--db", str(db), "-o", str(tmp_path / "o.jsonl"))
    assert code == 0
    assert (tmp_path / "o.jsonl").read_bytes() == (tree / "small.jsonl").read_bytes()
