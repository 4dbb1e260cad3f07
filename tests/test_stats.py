"""Usage reports against ccusage 20.0.24's own reports on the same fixtures, and by hand.

tests/fixtures/claude/ccusage-20.0.24.json holds ccusage's `daily`, `monthly`, `session` and
`blocks` output for tests/fixtures/claude (the command is in its "_about" note), frozen so the
test needs neither Node nor the network. Token totals must be equal and costs within 1%.

Known differences, each asserted exactly rather than tolerated:

* ccusage's `daily` report counts both streamed copies of a message that has no requestId
  (session d9e0f1a2, msg_01yJ76…, 2025-10-09): its `session`, `monthly` and `blocks` reports
  count it once, as FORMATS.md's rule (and jobvault) does. jobvault's daily figures equal
  ccusage's daily figures minus that one extra copy.
* ccusage lists the flat subagent file `agent-5e7f1a2b.jsonl` as a session of its own;
  jobvault attaches it to the session its lines name (c3b8d1e2).
* ccusage's blocks count the local `<synthetic>` API-error line (no usage) as an entry, so the
  last block has one more entry and ends at that line's time; jobvault counts messages that
  carry usage.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jobvault.store import stats
from jobvault.store.db import open_reader
from tests.helpers import assistant, dumps, run, run_json

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude"
CCUSAGE = json.loads((FIXTURES / "ccusage-20.0.24.json").read_text(encoding="utf-8"))
KEYS = {
    "inputTokens": "input_tokens",
    "outputTokens": "output_tokens",
    "cacheCreationTokens": "cache_creation_tokens",
    "cacheReadTokens": "cache_read_tokens",
}
# The second streamed copy of msg_01yJ76… (no requestId) that only ccusage's daily counts.
DAILY_DOUBLE = {"date": "2025-10-09", "inputTokens": 8, "outputTokens": 1,
                "cacheCreationTokens": 2500, "cacheReadTokens": 9000}  # fmt: skip
FLAT_AGENT = ("agent-5e7f1a2b", "c3b8d1e2-5f6a-4d7c-8e9f-0a1b2c3d4e5f")


@pytest.fixture
def vault(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    projects = tmp_path / "claude" / "projects"
    shutil.copytree(FIXTURES / "projects", projects)
    db = tmp_path / "vault" / "jobvault.db"
    assert run(capsys, "import", str(projects), "--db", str(db), "--no-progress")[0] == 0
    return db


def _stats(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> Any:
    return run_json(capsys, "stats", *args, "--db", str(db), "--timezone", "UTC")


def _close(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= 0.01 * abs(theirs) + 1e-9


def _same_tokens(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    for their_key, our_key in KEYS.items():
        assert ours[our_key] == theirs[their_key], (our_key, ours, theirs)


def test_daily_equals_ccusage(vault: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ours = {r["period"]: r for r in _stats(capsys, vault, "daily")["rows"]}
    theirs = {d["date"]: d for d in CCUSAGE["daily"]["daily"]}
    assert set(ours) == set(theirs) == {"2025-10-06", "2025-10-07", "2025-10-08", "2025-10-09"}
    for day, their in theirs.items():
        if day == DAILY_DOUBLE["date"]:
            # ccusage daily counted the no-requestId streamed message twice; remove one copy.
            their = {k: their[k] - DAILY_DOUBLE[k] for k in KEYS}
            sessions = {s["sessionId"]: s for s in CCUSAGE["session"]["sessions"]}
            _same_tokens(ours[day], sessions["d9e0f1a2-b3c4-4d5e-8f60-718293a4b5c6"])
        else:
            assert _close(ours[day]["cost_usd"], their["totalCost"])
            by_model = {m["model"]: m for m in ours[day]["models"]}
            for breakdown in their["modelBreakdowns"]:
                _same_tokens(by_model[breakdown["modelName"]], breakdown)
                assert _close(by_model[breakdown["modelName"]]["cost_usd"], breakdown["cost"])
        _same_tokens(ours[day], their)


def test_monthly_and_weekly_equal_ccusage(vault: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monthly = _stats(capsys, vault, "monthly")
    (month,) = CCUSAGE["monthly"]["monthly"]
    assert [r["period"] for r in monthly["rows"]] == [month["month"]]
    _same_tokens(monthly["rows"][0], month)
    assert _close(monthly["rows"][0]["cost_usd"], month["totalCost"])
    by_model = {m["model"]: m for m in monthly["rows"][0]["models"]}
    for breakdown in month["modelBreakdowns"]:
        _same_tokens(by_model[breakdown["modelName"]], breakdown)
    # 2025-10-06 is a Monday: the four days are ISO week 41.
    weekly = _stats(capsys, vault, "weekly")
    assert [r["period"] for r in weekly["rows"]] == ["2025-W41"]
    _same_tokens(weekly["rows"][0], CCUSAGE["monthly"]["totals"])


def test_sessions_equal_ccusage(vault: Path, capsys: pytest.CaptureFixture[str]) -> None:
    theirs: dict[str, dict[str, Any]] = {}
    for session in CCUSAGE["session"]["sessions"]:
        key = FLAT_AGENT[1] if session["sessionId"] == FLAT_AGENT[0] else session["sessionId"]
        total = theirs.setdefault(key, {**dict.fromkeys(KEYS, 0), "totalCost": 0.0})
        for k in (*KEYS, "totalCost"):
            total[k] += session[k]
    jobs = {j["session_id"]: j for j in run_json(capsys, "jobs", "--db", str(vault))}
    assert set(jobs) == set(theirs)
    for session_id, their in theirs.items():
        _same_tokens(jobs[session_id], their)
        assert _close(jobs[session_id]["cost_usd"], their["totalCost"])
    # The same figures through the usage report's top sessions.
    top = _stats(capsys, vault, "daily", "--top", "10")["top_sessions"]
    assert [t["session_id"] for t in top] == sorted(theirs, key=lambda s: -theirs[s]["totalCost"])


def test_blocks_equal_ccusage(vault: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ours = _stats(capsys, vault, "blocks")["blocks"]
    theirs = CCUSAGE["blocks"]["blocks"]
    assert [b["id"] for b in ours] == [b["id"] for b in theirs]
    for our, their in zip(ours, theirs, strict=True):
        assert (our["start"], our["end"], our["is_gap"], our["is_active"]) == (
            their["startTime"], their["endTime"], their["isGap"], their["isActive"])  # fmt: skip
        assert our["total_tokens"] == their["totalTokens"]
        assert _close(our["cost_usd"], their["costUSD"])
        assert our["models"] == their["models"]
        tokens = {k: their["tokenCounts"][v] for k, v in (
            ("input_tokens", "inputTokens"), ("output_tokens", "outputTokens"),
            ("cache_creation_tokens", "cacheCreationInputTokens"),
            ("cache_read_tokens", "cacheReadInputTokens"))}  # fmt: skip
        assert {k: our[k] for k in tokens} == tokens
        if our["id"] == "2025-10-09T11:00:00.000Z":
            # ccusage also counts the <synthetic> API-error line at 11:00:20 (no usage).
            assert (our["entries"], our["actual_end"]) == (2, "2025-10-09T11:00:10.000Z")
            assert (their["entries"], their["actualEndTime"]) == (3, "2025-10-09T11:00:20.000Z")
        else:
            assert (our["entries"], our["actual_end"]) == (their["entries"], their["actualEndTime"])


def test_days_follow_the_time_zone(vault: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """UTC+14: 14:20 UTC is the next day, 10:00 and 11:00 UTC too (00:00 and 01:00)."""
    rows = run_json(capsys, "stats", "daily", "--db", str(vault), "--timezone",
                    "Pacific/Kiritimati")["rows"]  # fmt: skip
    assert [(r["period"], r["input_tokens"]) for r in rows] == [
        ("2025-10-06", 52), ("2025-10-08", 10), ("2025-10-09", 38), ("2025-10-10", 14)
    ]  # fmt: skip
    # A local date bound is local midnight: 2025-10-09 in UTC+14 is 2025-10-08T10:00Z.
    rows = run_json(capsys, "stats", "daily", "--db", str(vault), "--timezone",
                    "Pacific/Kiritimati", "--since", "2025-10-09")["rows"]  # fmt: skip
    assert [r["period"] for r in rows] == ["2025-10-09", "2025-10-10"]
    # UTC-10: 09:00 UTC on the 6th is still the 5th.
    rows = run_json(capsys, "stats", "daily", "--db", str(vault), "-z", "Pacific/Honolulu")["rows"]
    assert rows[0]["period"] == "2025-10-05"
    bad = run(capsys, "stats", "--db", str(vault), "--timezone", "Mars/Olympus")
    assert bad[0] == 64


def test_daily_metrics_answer_like_the_hourly_rows(vault: Path) -> None:
    """The UTC fast path (daily_metrics), the hourly rollup (usage_hourly) and the per-job
    rows give the same report; so do the top sessions picked through the cost index."""
    conn = open_reader(vault)
    try:
        fast = stats.usage(conn, "day", timezone="UTC")
        rollup = stats.usage(conn, "day", timezone="Africa/Abidjan")  # UTC+0, not an alias
        # A job filter that keeps every job reads the per-job rows instead of usage_hourly.
        slow = stats.usage(conn, "day", timezone="Africa/Abidjan", filters={"min_cost": 0})
        assert fast["rows"] == rollup["rows"] == slow["rows"] and fast["rows"]
        for zone in ("Asia/Tokyo", "America/Los_Angeles"):
            by_rollup = stats.usage(conn, "week", timezone=zone, top=3)
            by_jobs = stats.usage(conn, "week", timezone=zone, top=3, filters={"min_cost": 0})
            assert by_rollup == by_jobs and by_rollup["top_sessions"]
        for group in ("model", "project", "source"):
            report = stats.usage(conn, group)
            assert report["totals"]["total_tokens"] == fast["totals"]["total_tokens"]
        one = stats.usage(conn, "day", filters={"project": "-home-dev-api"}, since=None)
        assert one["totals"]["input_tokens"] == 30 + 8 + 14
    finally:
        conn.close()


def test_models_projects_and_tools(vault: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = {r["model"]: r for r in _stats(capsys, vault, "models")["rows"]}
    for breakdown in CCUSAGE["monthly"]["monthly"][0]["modelBreakdowns"]:
        _same_tokens(models[breakdown["modelName"]], breakdown)
    projects = {r["project"]: r for r in _stats(capsys, vault, "projects")["rows"]}
    assert projects["-home-dev-webapp"]["jobs"] == 2 and projects["-home-dev-api"]["jobs"] == 2
    tools = {r["tool"]: r for r in _stats(capsys, vault, "tools")["rows"]}
    # From tests/fixtures/claude/expected.json: 1a6f3c2e has failing Bash and Edit calls.
    assert tools["Edit"]["failures"] >= 1 and tools["Bash"]["failures"] >= 1
    total = _stats(capsys, vault, "tools")["totals"]
    jobs = run_json(capsys, "jobs", "--db", str(vault))
    assert total["calls"] == sum(j["tool_call_count"] for j in jobs)
    assert total["failures"] == sum(j["failed_tool_calls"] for j in jobs)
    assert total["failure_rate"] == round(total["failures"] / total["calls"], 4)
    code, out = run(capsys, "stats", "daily", "--db", str(vault), "--timezone", "UTC")
    assert code == 0 and "2025-10-07" in out and "█" in out  # the cost bar chart
    code, out = run(capsys, "stats", "tools", "--db", str(vault))
    assert code == 0 and "Edit" in out


def _query(capsys: pytest.CaptureFixture[str], db: Path, method: str, params: Any) -> Any:
    code, out = run(capsys, "query", method, json.dumps(params), "--db", str(db))
    assert code == 0, out
    return json.loads(out)


def _line(n: int, when: str, inp: int = 100, out: int = 200) -> bytes:
    obj = assistant(f"msg_{n}", 0, inp=inp, out=out, request=f"req_{n}")
    return dumps({**obj, "timestamp": when})


def test_blocks_active_burn_rate_and_projection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same lines gave these figures in ccusage 20.0.24 (`blocks --json`, now 12:46:16)."""
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    times = ["2025-01-01T10:30:00.000Z", "2025-01-01T14:59:00.000Z", "2025-01-01T15:00:00.001Z",
             "2025-01-02T10:00:00.000Z", "2025-01-02T14:59:00.000Z", "2025-01-02T19:58:00.000Z",
             "2025-01-03T12:06:16.000Z"]  # fmt: skip
    lines = [_line(n, t) for n, t in enumerate(times)]
    lines.append(_line(99, "2025-01-03T12:36:16.000Z", 1000, 3000))
    (project / "11111111-2222-4333-8444-555555555555.jsonl").write_bytes(b"".join(lines))
    db = tmp_path / "db.sqlite"
    assert run(capsys, "import", str(tmp_path / "projects"), "--db", str(db))[0] == 0
    result = _query(capsys, db, "stats.blocks", {"now": "2025-01-03T12:46:16Z"})
    got = [(b["id"], b["entries"], b["is_active"], b["actual_end"]) for b in result["blocks"]]
    assert got == [
        ("2025-01-01T10:00:00.000Z", 2, False, "2025-01-01T14:59:00.000Z"),
        ("2025-01-01T15:00:00.000Z", 1, False, "2025-01-01T15:00:00.001Z"),
        ("gap-2025-01-01T20:00:00.001Z", 0, False, None),
        ("2025-01-02T10:00:00.000Z", 2, False, "2025-01-02T14:59:00.000Z"),
        ("2025-01-02T19:00:00.000Z", 1, False, "2025-01-02T19:58:00.000Z"),  # 4h59 later
        ("gap-2025-01-03T00:58:00.000Z", 0, False, None),
        ("2025-01-03T12:00:00.000Z", 2, True, "2025-01-03T12:36:16.000Z"),
    ]
    active = result["blocks"][-1]
    assert active["total_tokens"] == 4300 and active["cost_usd"] == pytest.approx(0.0513)
    assert active["burn_rate"]["tokens_per_minute"] == pytest.approx(143.33333333333334)
    assert active["burn_rate"]["cost_per_hour"] == pytest.approx(0.1026)
    assert active["projection"] == {"remaining_minutes": 254, "total_tokens": 40707,
                                    "total_cost": 0.49}  # fmt: skip
    only = _query(capsys, db, "stats.blocks", {"now": "2025-01-03T12:46:16Z", "active": True})
    assert [b["id"] for b in only["blocks"]] == ["2025-01-03T12:00:00.000Z"]
    later = stats.blocks(open_reader(db), now=datetime(2025, 1, 3, 18, tzinfo=UTC))
    assert not any(b["is_active"] for b in later["blocks"])


ZONES = ("Europe/Paris", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu",
         "Australia/Lord_Howe", "Pacific/Chatham", "UTC")  # fmt: skip


def test_local_periods_across_offset_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Days, weeks and months summed by SQLite per stretch of constant offset equal the
    rule applied hour by hour (each UTC hour on the local day its start falls in), across
    daylight-saving changes and in :30 and :45 zones, from the rollup and the per-job rows."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    session = "44444444-2222-4333-8444-555555555555"
    lines = [dumps({**assistant("m0", 0, session=session), "timestamp": "2025-03-29T00:10:00Z"})]
    for start in ("2025-03-29T12:00", "2025-10-25T12:00", "2025-11-01T12:00"):
        moment = datetime.fromisoformat(start + "+00:00")
        for i in range(96):  # every 30 minutes for two days
            stamp = (moment + timedelta(minutes=30 * i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            lines.append(dumps({**assistant(f"m{start}{i}", 0, session=session, inp=i + 1),
                                "timestamp": stamp}))  # fmt: skip
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    (project / f"{session}.jsonl").write_bytes(b"".join(lines))
    db = tmp_path / "v.db"
    assert run(capsys, "import", str(project), "--db", str(db), "--no-progress")[0] == 0
    conn = open_reader(db)
    try:
        hours = conn.execute(
            "SELECT hour, SUM(input_tokens) FROM job_usage GROUP BY hour"
        ).fetchall()
        for name in ZONES:
            for group in ("day", "week", "month"):
                expected: dict[str, int] = {}
                for hour, tokens in hours:
                    local = datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=UTC)
                    label = stats.period_of(local.astimezone(ZoneInfo(name)).date(), group)
                    expected[label] = expected.get(label, 0) + tokens
                for filters in ({}, {"min_cost": 0}):  # the rollup, then the per-job rows
                    report = stats.usage(conn, group, timezone=name, filters=filters)
                    got = {r["period"]: r["input_tokens"] for r in report["rows"]}
                    assert got == expected, (name, group, filters)
    finally:
        conn.close()
