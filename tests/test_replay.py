"""Replay from the archive alone: every step in order, subagents nested, errors marked.

Uses the committed fixtures (tests/fixtures/claude): 1a6f3c2e has a subagent in the
`<session>/subagents/` layout spawned by a Task call, a failing Bash and a failing Edit;
c3b8d1e2 has an old in-file sidechain subagent, a flat `agent-<id>.jsonl` subagent and ends on
an interruption; d9e0f1a2 ends on an API error. The originals are deleted before replaying.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run, run_json

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude" / "projects"


@pytest.fixture
def vault(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    projects = tmp_path / "claude" / "projects"
    shutil.copytree(FIXTURES, projects)
    db = tmp_path / "vault" / "jobvault.db"
    assert run(capsys, "import", str(projects), "--db", str(db), "--no-progress")[0] == 0
    shutil.rmtree(projects)  # replay needs nothing but the archive
    return db


def _steps(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out = []
    for e in events:
        label = {"tool_call": e.get("name"), "subagent": e["agent_id"]}.get(
            e["kind"], (e.get("text") or "")[:24]
        )
        result = e.get("result")
        out.append((e["depth"], e["kind"], label, result["is_error"] if result else None))
    return out


def test_subagents_and_tool_errors_in_order(
    vault: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_json(capsys, "replay", "1a6f3c2e", "--db", str(vault))
    assert result["job_id"] == "claude:1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01"
    events = result["events"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert _steps(events) == [
        (0, "command", "<command-name>/clear</co", None),
        (0, "prompt", "Add input validation to ", None),
        (0, "text", "I'll read the handler fi", None),
        (0, "tool_call", "Read", False),
        (0, "tool_call", "Task", False),
        (1, "subagent", "a4c1e9f2", None),
        (1, "prompt", "Find every place in /hom", None),
        (1, "tool_call", "Grep", False),
        (1, "text", "Login input is read in s", None),
        (0, "tool_call", "Edit", False),
        (0, "tool_call", "Write", False),
        (0, "tool_call", "Bash", True),
        (0, "tool_call", "MultiEdit", False),
        (0, "tool_call", "Edit", True),
        (0, "text", "The config edit failed: ", None),
        (0, "prompt", "Leave config.py alone an", None),
        (0, "text", "Summary: login() in src/", None),
        (0, "summary", "Login form validation an", None),
    ]
    bash = next(e for e in events if e.get("name") == "Bash")
    assert bash["input"]["command"].startswith("pytest")
    assert "NameError" in bash["result"]["output"]
    stamps = [e["timestamp"] for e in events if e["depth"] == 0 and e["timestamp"]]
    assert stamps == sorted(stamps)


def test_old_and_flat_subagent_layouts_and_errors(
    vault: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = run_json(capsys, "replay", "c3b8d1e2", "--db", str(vault))["events"]
    assert _steps(events) == [
        (0, "prompt", "Why is GET /users return", None),
        (0, "tool_call", "Task", False),
        (1, "subagent", "9b3d4c6e", None),  # isSidechain lines inside the main file
        (1, "prompt", "Search /home/dev/api for", None),
        (1, "tool_call", "Glob", False),
        (1, "text", "The handler is handlers/", None),
        (0, "tool_call", "Task", False),
        (1, "subagent", "5e7f1a2b", None),  # a flat agent-5e7f1a2b.jsonl file
        (1, "prompt", "Read /var/log/api/stagin", None),
        (1, "tool_call", "Bash", False),
        (1, "text", "The most recent 500 (09:", None),
        (0, "text", "The 500 comes from an un", None),
        (0, "prompt", "Wrap it in a retry with ", None),
        (0, "text", "I'll add a retry with ex", None),
        (0, "interrupt", "[Request interrupted by ", None),
    ]
    events = run_json(capsys, "replay", "d9e0f1a2", "--db", str(vault))["events"]
    assert [e["kind"] for e in events][-1] == "error"
    assert events[-1]["text"].startswith("API Error: 529")


def test_readable_rendering_shows_every_step(
    vault: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "replay", "1a6f3c2e", "--db", str(vault), "--no-pager")
    assert code == 0
    json_events = run_json(capsys, "replay", "1a6f3c2e", "--db", str(vault))["events"]
    position = 0
    for event in json_events:
        text = (event.get("text") or "").strip().splitlines()
        marker = {"tool_call": event.get("name"), "subagent": f"subagent {event['agent_id']}"}.get(
            event["kind"], text[0][:30] if text else ""
        )
        found = out.find(str(marker), position)
        assert found >= 0, f"step {event['seq']} ({marker!r}) missing or out of order"
        position = found
    assert out.count("✗") == 2  # the failed Bash and Edit calls
    assert "NameError" in out  # a failed call shows its error output
    code, _ = run(capsys, "replay", "nope", "--db", str(vault))
    assert code == 66
    assert json.loads(json.dumps(json_events)) == json_events
