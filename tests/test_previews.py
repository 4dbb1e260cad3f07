"""Tool-call previews kept in a scratch file once a session's budget is spent."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobvault.cli import main
from jobvault.records import ToolCall
from jobvault.sources import previews, spill
from jobvault.sources.previews import Previews, RawCall, ToolCallList

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEXTS = ["plain ascii", "", "accents é è and a cut…", "emoji 🚀 and CJK 漢字", "x" * 500]


def test_previews_past_the_budget_go_to_a_private_unlinked_scratch_file(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    spill.set_spill_dir(scratch)
    try:
        store = Previews(budget=20)
        refs = [store.put(t) for t in TEXTS * 3] + [store.put(None)]
        assert any(isinstance(r, bytes) for r in refs), "the first ones stay in memory"
        assert sum(isinstance(r, int) for r in refs) >= 10, "the rest are spilled"
        assert store.held <= 20
        assert [store.get(r) for r in refs] == [*(TEXTS * 3), None]
        assert store.spilled == sum(len(t.encode()) for t in (TEXTS * 3)) - store.held
        assert os.listdir(scratch) == [], "the scratch file is unlinked from the start"
        store.close()
    finally:
        spill.set_spill_dir(None)


def test_tool_call_list_reads_back_as_a_list(tmp_path: Path) -> None:
    store = Previews(budget=0)
    raw = [
        RawCall(
            "t1", "Bash", None, False, "2025-01-01T00:00:00Z", store.put("ls"), store.put("a\nb")
        ),
        RawCall("t2", "Edit", "agent", True, None, store.put("{}"), None),
    ]
    calls = ToolCallList(raw, store)
    expected = [
        ToolCall(0, "t1", "Bash", None, False, "2025-01-01T00:00:00Z", "ls", "a\nb"),
        ToolCall(1, "t2", "Edit", "agent", True, None, "{}", None),
    ]
    assert len(calls) == 2
    assert list(calls) == expected and calls == expected
    assert calls[-1] == expected[1] and calls[0:1] == expected[:1]


def _tool_rows(
    tmp_path: Path, name: str, budget: int, monkeypatch: pytest.MonkeyPatch
) -> list[Any]:
    monkeypatch.setattr(previews, "MEMORY_BUDGET", budget)
    root = tmp_path / name
    shutil.copytree(FIXTURES / "claude" / "projects", root / "claude")
    shutil.copytree(FIXTURES / "codex" / "home", root / "codex")
    db = tmp_path / f"{name}.db"
    assert main(["import", str(root), "--db", str(db), "--no-progress", "--json"]) == 0
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT job_id, seq, tool_use_id, name, agent_id, is_error, timestamp, "
            "input_preview, output_preview FROM tool_calls ORDER BY job_id, seq"
        ).fetchall()
    finally:
        conn.close()


def test_spilled_previews_store_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    in_memory = _tool_rows(tmp_path, "memory", 1 << 30, monkeypatch)
    spilled = _tool_rows(tmp_path, "spilled", 0, monkeypatch)
    assert len(in_memory) > 10
    assert any(row[7] and row[8] for row in in_memory), "the fixtures have previews"
    assert spilled == in_memory
    assert not list(tmp_path.rglob("jobvault-spill-*")), "no scratch file is left behind"


def test_spilled_previews_are_read_back_from_the_file_and_from_its_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(previews, "WRITE_BUFFER", 50)  # written every few previews
    spill.set_spill_dir(tmp_path)
    try:
        store = Previews(budget=0)
        texts = [f"{i}: {TEXTS[i % len(TEXTS)]}" for i in range(40)] + ["tail 1", "tail 2"]
        refs = [store.put(t) for t in texts]
        assert all(isinstance(r, int) for r in refs)
        assert 0 < store._written < store.spilled, "some in the file, the last ones buffered"
        assert [store.get(r) for r in refs] == texts
        store.close()
    finally:
        spill.set_spill_dir(None)
