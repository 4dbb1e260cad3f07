"""Issue 14, the adapters' part: Codex 0.15x fields, slash-command prompts, no empty jobs.

The fixtures (tests/fixtures/fidelity, written by tests/fixtures/make_fidelity_fixtures.py
and committed) and their expected values (tests/fixtures/fidelity/expected.json, derived by
hand in its "_arith" notes) are described in the generator's docstring. The prices' part
is in tests/test_pricing.py.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobvault.records import JobDetail
from jobvault.sources.base import LineContext
from jobvault.sources.claude import ClaudeJob
from jobvault.sources.codex import CodexJob
from jobvault.sources.prompts import claude_typed, codex_typed, strip_blocks
from tests.helpers import archived, assert_matches_oracle, run, run_json

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fidelity"
ORACLE: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
EXPECTED = {k: v for k, v in ORACLE.items() if not k.startswith("_")}
NOT_JOBS = ORACLE["_not_jobs"]
CHILDREN = {"tool_calls", "rate_limits"}
E = "019fd0a1-2b3c-7d4e-8f50-617283940a1b"
S = "5a1c0d2e-3f4b-4c5d-8e6f-7a8b9c0d1e2f"


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    claude = tmp_path / "claude"
    codex = tmp_path / "codex"
    shutil.copytree(FIXTURES / "claude", claude)
    shutil.copytree(FIXTURES / "codex", codex)
    return claude / "projects", codex / "sessions"


@pytest.fixture
def imported(tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    projects, sessions = _copy(tmp_path)
    summary = run_json(
        capsys, "import", str(projects), str(sessions), "--db", str(db), "--no-progress"
    )
    assert summary["bad_lines"] == 0
    assert summary["files"] == 8 and summary["jobs"] == len(EXPECTED)
    return db


def _rows(db: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("job_id", sorted(EXPECTED))
def test_job_matches_oracle(
    job_id: str, imported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = run_json(capsys, "show", job_id, "--db", str(imported))
    assert_matches_oracle(job_id, job, EXPECTED[job_id], CHILDREN)
    want_calls = EXPECTED[job_id].get("tool_calls")
    if want_calls is not None:
        assert [
            [t["name"], t["tool_use_id"], t["is_error"]] for t in job["tool_calls"]
        ] == want_calls


def test_codex_rate_limits_are_kept_per_job(imported: Path) -> None:
    rows = _rows(
        imported,
        "SELECT at, window, used_percent, window_minutes, resets_at FROM job_rate_limits "
        "WHERE job_id = ? ORDER BY at, window",
        f"codex:{E}",
    )
    assert [list(r) for r in rows] == EXPECTED[f"codex:{E}"]["rate_limits"]
    # Only jobs that report limits have rows; deleting a job deletes them (ON DELETE CASCADE).
    assert {r[0] for r in _rows(imported, "SELECT DISTINCT job_id FROM job_rate_limits")} == {
        f"codex:{E}"
    }


def test_files_without_conversation_are_archived_not_jobs(
    imported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = run_json(capsys, "jobs", "--limit", "0", "--db", str(imported))
    assert {j["id"] for j in jobs} == set(EXPECTED)
    status = run_json(capsys, "status", "--db", str(imported))
    assert status["files_tracked"] == 8 and status["jobs"] == len(EXPECTED)
    empty = set(_rows(imported, "SELECT source, session_id FROM empty_sessions"))
    assert empty == {("claude", s) for s in NOT_JOBS["claude"]} | {
        ("codex", s) for s in NOT_JOBS["codex"]
    }
    for path in tmp_path.rglob("*.jsonl"):  # every byte is still in the archive
        assert archived(imported, path) == path.read_bytes(), path.name
    # Usage reports count the jobs only: the day's total is the sum of the job records.
    daily = run_json(capsys, "stats", "daily", "--db", str(imported))["rows"]
    assert len(daily) == 1
    assert daily[0]["cost_usd"] == pytest.approx(sum(j["cost_usd"] for j in jobs), abs=1e-6)
    assert daily[0]["input_tokens"] == sum(j["input_tokens"] for j in jobs)
    # `rebuild` agrees, and says how many jobs it rebuilt.
    assert run_json(capsys, "rebuild", "--db", str(imported), "--no-progress")["jobs"] == 4
    assert {j["id"] for j in run_json(capsys, "jobs", "--limit", "0", "--db", str(imported))} == (
        set(EXPECTED)
    )


def test_an_empty_session_that_grows_becomes_a_job(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    projects = tmp_path / "projects"
    src = FIXTURES / "claude" / "projects" / "-home-dev-todo"
    y = NOT_JOBS["claude"][1]  # attachment-only
    (projects / "-home-dev-todo").mkdir(parents=True)
    path = projects / "-home-dev-todo" / f"{y}.jsonl"
    shutil.copyfile(src / f"{y}.jsonl", path)
    run_json(capsys, "import", str(projects), "--db", str(db), "--no-progress")
    assert run_json(capsys, "jobs", "--limit", "0", "--db", str(db)) == []
    assert _rows(db, "SELECT session_id FROM empty_sessions") == [(y,)]
    with path.open("a", encoding="utf-8") as fh:
        fh.write(
            json.dumps(
                {
                    "type": "user",
                    "sessionId": y,
                    "uuid": "u-y1",
                    "parentUuid": None,
                    "timestamp": "2026-08-03T11:01:00.000Z",
                    "cwd": "/home/dev/todo",
                    "message": {"role": "user", "content": "Now write the tests"},
                }
            )
            + "\n"
        )
    run_json(capsys, "import", str(projects), "--db", str(db), "--no-progress")
    jobs = run_json(capsys, "jobs", "--limit", "0", "--db", str(db))
    assert [(j["session_id"], j["prompt"]) for j in jobs] == [(y, "Now write the tests")]
    assert _rows(db, "SELECT session_id FROM empty_sessions") == []


def test_an_old_empty_job_row_is_deleted_and_its_usage_retracted(
    imported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database written before this change holds empty jobs: the next write removes them."""
    from jobvault.records import JobRecord, UsageRow
    from jobvault.store.db import open_writer
    from jobvault.store.writer import Store

    x = NOT_JOBS["claude"][0]
    record = JobRecord(
        id=f"claude:{x}",
        source="claude",
        session_id=x,
        project=None,
        cwd=None,
        git_branch=None,
        version=None,
        model=None,
        models=[],
        status="completed",
        started_at=None,
        ended_at=None,
        duration_ms=None,
        prompt=None,
        summary=None,
        title=None,
        input_tokens=5,
        output_tokens=0,
        cache_creation_tokens=0,
        cache_read_tokens=0,
        reasoning_tokens=0,
        cost_usd=1.0,
        pricing_version="old",
        tool_call_count=0,
        failed_tool_calls=0,
        primary_tool=None,
        files_modified=[],
        message_count=0,
        user_message_count=0,
        subagent_count=0,
        context_window=None,
        context_used_pct=None,
        source_path=None,
        machine_id=None,
    )
    row = UsageRow("2026-08-03T09", "m", 1, 5, 0, 0, 0, 0, 1.0)
    store = Store(open_writer(imported, "FULL"))
    try:
        before = _daily_cost(imported)
        store.write_jobs([(JobDetail(record, [], [], [], [row]), True)])  # as an older version
        assert _daily_cost(imported) == pytest.approx(before + 1.0)
    finally:
        store.close()
    code, _ = run(capsys, "rebuild", "--db", str(imported), "--no-progress")
    assert code == 0
    assert _rows(imported, "SELECT id FROM jobs WHERE id = ?", f"claude:{x}") == []
    assert _daily_cost(imported) == pytest.approx(before)


def _daily_cost(db: Path) -> float:
    return float(_rows(db, "SELECT COALESCE(SUM(cost_usd), 0) FROM daily_metrics")[0][0])


def test_recovery_does_not_requeue_empty_sessions(imported: Path) -> None:
    from jobvault.store.db import open_writer
    from jobvault.store.writer import Store

    store = Store(open_writer(imported, "FULL"))
    try:
        assert store.unfinalized_job_keys() == []
    finally:
        store.close()


# -- order independence (the lines of several files in any interleaving) --------------------


def _lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    out, offset = [], 0
    for raw in path.read_bytes().splitlines(keepends=True):
        out.append((offset, json.loads(raw)))
        offset += len(raw)
    return out


def _feed(job: CodexJob | ClaudeJob, files: list[tuple[LineContext, Path]], seed: int) -> JobDetail:
    queues = [(ctx, _lines(p)) for ctx, p in files]
    rng = random.Random(seed)
    while any(q for _, q in queues):
        ctx, queue = rng.choice([(c, q) for c, q in queues if q])
        offset, obj = queue.pop(0)
        job.feed(obj, ctx, offset)
    return job.build(finalized=True, machine_id=None)


def _same(detail: JobDetail) -> tuple[Any, ...]:
    return (
        detail.record.to_dict(),
        list(detail.tool_calls),
        detail.files,
        detail.usage,
        list(detail.rate_limits),
        detail.empty,
    )


@pytest.mark.parametrize("seed", range(6))
def test_codex_record_does_not_depend_on_interleaving(seed: int, tmp_path: Path) -> None:
    """The rollout in sessions/ and an older copy in archived_sessions/, plus a rollout of
    the same session under another name, fed in random interleavings: one record."""
    src = next((FIXTURES / "codex").rglob(f"*{E}.jsonl"))
    live = tmp_path / "sessions" / "2026" / "08" / "03" / src.name
    old = tmp_path / "archived_sessions" / src.name
    other = tmp_path / "sessions" / "2026" / "08" / "04" / f"rollout-2026-08-04T09-00-00-{E}x.jsonl"
    for path in (live, old, other):
        path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, live)
    lines = src.read_bytes().splitlines(keepends=True)
    old.write_bytes(b"".join(lines[: len(lines) // 2]))
    other.write_bytes(b"".join(lines[len(lines) // 2 :]))
    files = [
        (LineContext(i + 1, "main", None, None, None, str(p)), p)
        for i, p in enumerate((live, old, other))
    ]
    reference = _same(_feed(CodexJob(E), files, 0))
    assert _same(_feed(CodexJob(E), list(reversed(files)), seed + 100)) == reference


@pytest.mark.parametrize("seed", range(4))
def test_claude_command_prompt_does_not_depend_on_order(seed: int, tmp_path: Path) -> None:
    """The `<local-command-stdout>` answering /model arrives in another file (a resumed
    copy) before the command itself: /model is still local, the prompt the same."""
    src = FIXTURES / "claude" / "projects" / "-home-dev-todo" / f"{S}.jsonl"
    lines = src.read_bytes().splitlines(keepends=True)
    stdout = next(i for i, raw in enumerate(lines) if b"local-command-stdout" in raw)
    first = tmp_path / "a" / f"{S}.jsonl"
    second = tmp_path / "b" / f"{S}.jsonl"
    for path in (first, second):
        path.parent.mkdir()
    first.write_bytes(b"".join(lines[:stdout] + lines[stdout + 1 :]))
    second.write_bytes(lines[stdout])
    files = [
        (LineContext(i + 1, "main", None, None, p.parent.name, str(p)), p)
        for i, p in enumerate((second, first))
    ]
    detail = _feed(ClaudeJob(S), files, seed)
    assert detail.record.prompt == "/orchestrator create TODO app by Next.js"
    assert detail.record.user_message_count == 2


# -- prompts: the pieces -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "typed"),
    [
        (
            "<command-name>/orchestrator</command-name>\n<command-message>orchestrator"
            "</command-message>\n<command-args>create TODO app by Next.js</command-args>",
            "command",
            "/orchestrator create TODO app by Next.js",
        ),
        (
            "<command-message>review is running…</command-message>\n<command-name>review"
            "</command-name>\n<command-args>PR 12</command-args>",
            "command",
            "/review PR 12",
        ),
        (
            "<command-name>/clear</command-name>\n<command-message>clear</command-message>\n"
            "<command-args></command-args>",
            "local",
            "/clear",
        ),
        ("<local-command-stdout>Set model to opus</local-command-stdout>", "wrapper", ""),
        ("<local-command-stderr>error</local-command-stderr>", "wrapper", ""),
        ("<bash-input>ls</bash-input>", "wrapper", ""),
        (
            "Caveat: The messages below were generated by the user while running local commands.",
            "wrapper",
            "",
        ),
        (
            "<system-reminder>The user opened a file.</system-reminder>\nFix the failing test",
            "prompt",
            "Fix the failing test",
        ),
        ("Explain <b>this</b> markup", "prompt", "Explain <b>this</b> markup"),
    ],
)
def test_claude_typed_text(text: str, kind: str, typed: str) -> None:
    got = claude_typed(text)
    assert (got.kind, got.text) == (kind, typed)


@pytest.mark.parametrize(
    ("parts", "typed"),
    [
        (
            [
                "<recommended_plugins>\nvercel\n</recommended_plugins>\n"
                "# AGENTS.md instructions for /r\n\n<INSTRUCTIONS>\nx\n</INSTRUCTIONS>\n"
                "<environment_context>\n<cwd>/r</cwd>\n</environment_context>"
            ],
            "",
        ),
        (
            ['<some_future_block attr="1">\nanything\n</some_future_block>', "Do the thing"],
            "Do the thing",
        ),
        (
            [
                "# AGENTS.md instructions for /r\n\n<INSTRUCTIONS>\nUse pnpm.\n</INSTRUCTIONS>\n\n"
                "Then run it"
            ],
            "Then run it",
        ),
        (
            ["<image name=[Image #1]>", "</image>", "What is in the picture?"],
            "What is in the picture?",
        ),
        (["<unclosed> is what I typed"], "<unclosed> is what I typed"),
        (["# AGENTS.md instructions for /r (cut)"], ""),
    ],
)
def test_codex_typed_text(parts: list[str], typed: str) -> None:
    assert codex_typed(parts) == typed


def test_strip_blocks_keeps_text_before_the_first_block() -> None:
    assert strip_blocks("hello <x>y</x>") == "hello <x>y</x>"


# -- Codex 0.15x: the pieces, line by line -------------------------------------------------


def _codex(lines: list[dict[str, Any]]) -> tuple[JobDetail, list[str | None]]:
    job = CodexJob("019fd0a4-0000-7000-8000-000000000001")
    ctx = LineContext(1, "main", None, None, None, "/x/sessions/rollout-a.jsonl")
    problems = [job.feed(obj, ctx, 100 * n) for n, obj in enumerate(lines)]
    return job.build(finalized=True, machine_id=None), problems


def _line(second: int, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"timestamp": f"2026-08-03T10:00:{second:02d}.000Z", "type": kind, "payload": payload}


def _ev(second: int, event: str, **fields: Any) -> dict[str, Any]:
    return _line(second, "event_msg", {"type": event, **fields})


def _it(second: int, kind: str, **fields: Any) -> dict[str, Any]:
    return _line(second, "response_item", {"type": kind, **fields})


def _user(second: int, text: str) -> dict[str, Any]:
    return _it(second, "message", role="user", content=[{"type": "input_text", "text": text}])


START = [
    _line(0, "session_meta", {"id": "019fd0a4-0000-7000-8000-000000000001", "cwd": "/w"}),
    _line(0, "turn_context", {"cwd": "/w", "model": "gpt-5.6-luna", "effort": "low"}),
]


def test_prompt_counts_once_whichever_way_it_is_written() -> None:
    detail, _ = _codex(
        [
            *START,
            # Older versions wrote injected instructions as events with a `kind`.
            _ev(1, "user_message", message="Use pnpm.", kind="user_instructions"),
            _user(2, "first"),
            _ev(2, "user_message", message="first"),  # both: once
            _ev(3, "user_message", message="second"),  # an event alone counts
            _user(4, "third"),  # an item alone counts
            _user(5, "first"),
            _ev(5, "user_message", message="first"),  # typed again: twice
        ]
    )
    assert detail.record.prompt == "first"
    assert detail.record.user_message_count == 4


def test_item_completed_failures_find_their_call() -> None:
    detail, _ = _codex(
        [
            *START,
            _user(1, "go"),
            # An item with the call's own id.
            _it(2, "function_call", call_id="c1", name="shell", arguments="{}"),
            _ev(
                3,
                "item_completed",
                item={
                    "type": "CommandExecution",
                    "id": "c1",
                    "status": "completed",
                    "exit_code": 2,
                },
            ),
            _it(3, "function_call_output", call_id="c1", output="done"),
            # A user's own shell command failing is no tool call's failure.
            _it(4, "custom_tool_call", call_id="c2", name="exec", input="x"),
            _ev(
                5,
                "item_completed",
                item={
                    "type": "CommandExecution",
                    "id": "u1",
                    "source": "userShell",
                    "status": "failed",
                },
            ),
            _it(5, "custom_tool_call_output", call_id="c2", output="ok"),
            # After its output: the failure is the file's last call's.
            _it(6, "custom_tool_call", call_id="c3", name="exec", input="y"),
            _it(7, "custom_tool_call_output", call_id="c3", output="ok"),
            _ev(8, "item_completed", item={"type": "McpToolCall", "id": "m9", "status": "failed"}),
            # A failed status on the call item itself, and an unknown event naming a call.
            _it(9, "web_search_call", id="w1", status="failed", action={"query": "q"}),
            _it(10, "function_call", call_id="c4", name="notion__search", arguments="{}"),
            _ev(11, "some_future_call_end", call_id="c4", status="error"),
        ]
    )
    calls = {c.tool_use_id: c.is_error for c in detail.tool_calls}
    assert calls == {"c1": True, "c2": False, "c3": True, "w1": True, "c4": True}
    assert detail.record.failed_tool_calls == 4
    assert detail.record.skipped_kinds == ["event_msg/some_future_call_end"]


def test_settings_and_world_state() -> None:
    detail, _ = _codex(
        [
            _line(0, "session_meta", {"id": "019fd0a4-0000-7000-8000-000000000001", "cwd": "/w"}),
            _line(0, "world_state", {"full": True, "state": {"model": "gpt-5.5"}}),
            _user(1, "go"),
            _ev(
                2,
                "token_count",
                info={"total_token_usage": {"input_tokens": 1000, "output_tokens": 100}},
            ),
            _ev(
                3,
                "thread_settings_applied",
                thread_settings={
                    "model": "gpt-5.5",
                    "reasoning_effort": "high",
                    "approval_policy": "never",
                    "service_tier": "priority",
                    "sandbox_policy": {"type": "read-only"},
                },
            ),
            _ev(
                4,
                "token_count",
                info={"total_token_usage": {"input_tokens": 2000, "output_tokens": 200}},
            ),
        ]
    )
    record = detail.record
    assert (
        record.model,
        record.reasoning_effort,
        record.approval_policy,
        record.sandbox_policy,
    ) == ("gpt-5.5", "high", "never", "read-only")
    # 1000 x $5 + 100 x $30 = $0.008 before; the same again on the priority tier, x 2.
    assert record.cost_usd == pytest.approx(0.008 + 0.016)


def test_token_usage_record_never_adds_to_token_count() -> None:
    usage = {"input_tokens": 1000, "cached_input_tokens": 0, "output_tokens": 100}
    detail, _ = _codex(
        [
            *START,
            _user(1, "go"),
            _line(2, "token_usage_record", {"response_id": "r1", "usage": usage}),
            _ev(2, "token_count", info={"total_token_usage": usage, "last_token_usage": usage}),
            _line(3, "token_usage_record", {"response_id": "r2", "usage": usage}),
        ]
    )
    assert (detail.record.input_tokens, detail.record.output_tokens) == (1000, 100)


def test_rate_limit_values_are_checked() -> None:
    good = {"used_percent": 5, "window_minutes": 300, "resets_in_seconds": 3600}
    detail, problems = _codex(
        [
            *START,
            _user(1, "go"),
            _ev(
                2,
                "token_count",
                info=None,
                rate_limits={
                    "primary": good,
                    "secondary": {"used_percent": 1e9, "window_minutes": -3, "resets_at": 10**15},
                },
            ),
            _ev(
                3,
                "token_count",
                info=None,
                rate_limits={"primary_used_percent": 7.5, "primary_window_minutes": 300},
            ),  # the flat shape of older versions
            _ev(
                4,
                "account/rateLimits/updated",
                rate_limits={
                    "primary": {"used_percent": 9, "window_minutes": 300, "reset_at": 1785780000}
                },
            ),
        ]
    )
    assert problems[3] is not None and "used_percent" in problems[3]
    assert "window_minutes" in problems[3] and "resets_at" in problems[3]
    assert [
        (r.at[11:19], r.window, r.used_percent, r.window_minutes, r.resets_at)
        for r in detail.rate_limits
    ] == [
        ("10:00:02", "primary", 5.0, 300, "2026-08-03T11:00:02Z"),
        ("10:00:03", "primary", 7.5, 300, None),
        ("10:00:04", "primary", 9.0, 300, "2026-08-03T18:00:00Z"),
    ]


def test_a_rollout_without_conversation_is_empty() -> None:
    detail, _ = _codex([*START, _line(1, "world_state", {"full": True, "state": {}})])
    assert detail.empty
    detail, _ = _codex([*START, _user(1, "hello")])
    assert not detail.empty


def test_a_claude_file_of_meta_lines_only_is_empty() -> None:
    job = ClaudeJob(S)
    ctx = LineContext(1, "main", None, None, "-p", "/p/-p/s.jsonl")
    caveat = {
        "type": "user",
        "isMeta": True,
        "sessionId": S,
        "timestamp": "2026-08-03T09:00:00Z",
        "message": {"role": "user", "content": "Caveat: The messages below were …"},
    }
    job.feed(caveat, ctx, 0)
    assert job.build(finalized=True, machine_id=None).empty
    job.feed({**caveat, "isMeta": False, "message": {"role": "user", "content": "hi"}}, ctx, 200)
    assert not job.build(finalized=True, machine_id=None).empty
