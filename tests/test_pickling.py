"""The worker processes' results pickle back whole: `jobvault.pickling.quick`."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from jobvault.ingest.workers import FileTask, UnitTask
from jobvault.records import FileModified, ToolCall, UsageCandidate, UsageRow
from jobvault.sources.base import FileInfo
from jobvault.store.archive import FileRow


def test_quick_classes_round_trip_equal_and_stay_frozen() -> None:
    call = ToolCall(3, "toolu_1", "Bash", None, True, "2026-12-01T10:00:00Z", "ls", "é" * 600)
    usage = UsageRow("2026-12-01T10", "claude-sonnet-4-5", 2, 10, 20, 30, 40, 0, 0.5)
    candidate = UsageCandidate(False, 100, "/p/a.jsonl", 42, at="2026-12-01T10:00:00Z")
    modified = FileModified("/src/x.py", "Edit", 2)
    for value in (call, usage, candidate, modified):
        back = pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        assert back == value and type(back) is type(value)
        # The state is the fields' values in order, as dataclasses' own pickling has it.
        names = [f.name for f in dataclasses.fields(value)]
        assert value.__getstate__() == tuple(getattr(value, n) for n in names)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(back, names[0], None)


def test_a_unit_task_round_trips() -> None:
    info = FileInfo("main", "abc", None, None, "-work-app")
    row = FileRow(7, "claude", "/r/p/abc.jsonl", "/r", "p/abc.jsonl", 0, 1, 2, 64, b"h", 0,
                  100, 0, False, False, "active", "abc", "main", None, 0, 0, 0)  # fmt: skip
    task = UnitTask((FileTask(row, info, new=True),), frozenset({"abc"}))
    back = pickle.loads(pickle.dumps(task))
    assert back == task and back.files[0].info == info and back.files[0].row.id == 7
