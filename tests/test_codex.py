"""Codex CLI rollouts: jobvault's own fixtures versus a hand-derived oracle, the shared
samples, file classification, interleaving, moves between the two trees, forks and prices.

The fixtures (tests/fixtures/codex/home, written by tests/fixtures/make_codex_fixtures.py and
committed) and their expected values (tests/fixtures/codex/expected.json, derived by hand with
the arithmetic in its "_arith" notes) are described in the generator's docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobvault import paths, pricing
from jobvault.sources import ADAPTERS
from jobvault.sources.base import LineContext
from jobvault.sources.codex import CodexAdapter, CodexJob
from jobvault.sources.codex_file import (
    EVENT_KINDS,
    IGNORED_EVENT_KINDS,
    IGNORED_RESPONSE_KINDS,
    RESPONSE_KINDS,
    TOP_KINDS,
)
from tests.helpers import archived, assert_matches_oracle, run, run_json

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "codex"
EXPECTED: dict[str, dict[str, Any]] = {
    k: v
    for k, v in json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8")).items()
    if not k.startswith("_")
}
A = "0199a1b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b"
C = "0199b3c4-d5e6-7f80-91a2-b3c4d5e6f708"
CHILDREN = {"files", "tool_calls", "usage"}


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "codex-home"
    shutil.copytree(FIXTURES / "home", home)
    return home


def _import(capsys: pytest.CaptureFixture[str], db: Path, *roots: Path) -> Any:
    args = ["import", *map(str, roots), "--db", str(db), "--no-progress"]
    return run_json(capsys, *args)


@pytest.fixture
def imported(tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    home = _home(tmp_path)
    summary = _import(capsys, db, home / "sessions", home / "archived_sessions")
    assert summary["bad_lines"] == 0
    return db


def _usage_rows(db: Path, job_id: str) -> list[list[Any]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT hour, model, messages, input_tokens, output_tokens, cache_creation_tokens, "
            "cache_read_tokens, reasoning_tokens, cost_usd FROM job_usage WHERE job_id = ? "
            "ORDER BY hour, model",
            (job_id,),
        ).fetchall()
    finally:
        conn.close()
    return [list(r) for r in rows]


def test_one_job_per_session(imported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = run_json(capsys, "jobs", "--limit", "0", "--db", str(imported))
    # C is in sessions/ and archived_sessions/: one job.
    assert {j["id"] for j in jobs} == set(EXPECTED)
    assert {j["source"] for j in jobs} == {"codex"}
    assert all(j["session_id"] == j["id"].removeprefix("codex:") for j in jobs)


@pytest.mark.parametrize("job_id", sorted(EXPECTED))
def test_job_matches_oracle(
    job_id: str, imported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = run_json(capsys, "show", job_id, "--db", str(imported))
    assert_matches_oracle(job_id, job, EXPECTED[job_id], CHILDREN)
    exp = EXPECTED[job_id]
    calls = [[t["name"], t["tool_use_id"], t["is_error"]] for t in job["tool_calls"]]
    assert calls == exp["tool_calls"]
    assert [{k: f[k] for k in ("path", "tool", "count")} for f in job["files"]] == exp["files"]
    rows = _usage_rows(imported, job_id)
    assert [r[:8] for r in rows] == [r[:8] for r in exp["usage"]]
    assert [r[8] for r in rows] == pytest.approx([r[8] for r in exp["usage"]], abs=1e-6)


def test_tool_outputs_are_previewed(imported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = run_json(capsys, "show", f"codex:{A}", "--db", str(imported))
    failing = next(t for t in job["tool_calls"] if t["tool_use_id"] == "call_a3")
    assert "pytest -q tests/test_discount.py" in failing["input_preview"]
    assert failing["output_preview"].endswith("1 failed, 1 passed in 0.12s\n")
    patch = next(t for t in job["tool_calls"] if t["tool_use_id"] == "call_b2")
    assert patch["output_preview"].startswith("Failed to find expected lines")


def test_rebuild_gives_identical_records(
    imported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {j: run_json(capsys, "show", j, "--db", str(imported)) for j in EXPECTED}
    code, _ = run(capsys, "rebuild", "--db", str(imported))
    assert code == 0
    after = {j: run_json(capsys, "show", j, "--db", str(imported)) for j in EXPECTED}
    assert after == before


def test_export_is_byte_exact_and_claude_and_codex_coexist(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _home(tmp_path)
    claude = tmp_path / "claude"
    shutil.copytree(FIXTURES.parent / "claude" / "projects", claude)
    _import(capsys, db, claude, home / "sessions", home / "archived_sessions")
    jobs = run_json(capsys, "jobs", "--limit", "0", "--db", str(db))
    assert {j["source"] for j in jobs} == {"claude", "codex"}
    rollout = next(home.glob(f"sessions/**/rollout-*-{A}.jsonl"))
    out = tmp_path / "export.jsonl"
    code, _ = run(capsys, "export", f"codex:{A}", "-o", str(out), "--db", str(db))
    assert code == 0
    assert out.read_bytes() == rollout.read_bytes()
    assert archived(db, rollout) == rollout.read_bytes()


@pytest.mark.parametrize("how", ["rename", "copy-then-delete"])
def test_rollout_moved_to_archive_stays_one_job(
    how: str, tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _home(tmp_path)
    roots = (home / "sessions", home / "archived_sessions")
    _import(capsys, db, *roots)
    before = run_json(capsys, "show", f"codex:{A}", "--db", str(db))
    src = next(home.glob(f"sessions/**/rollout-*-{A}.jsonl"))
    dst = home / "archived_sessions" / src.name
    if how == "rename":
        src.rename(dst)
    else:
        shutil.copy2(src, dst)
        src.unlink()
    _import(capsys, db, *roots)
    jobs = run_json(capsys, "jobs", "--limit", "0", "--db", str(db))
    assert {j["id"] for j in jobs} == set(EXPECTED)
    after = run_json(capsys, "show", f"codex:{A}", "--db", str(db))
    for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cost_usd",
                "tool_call_count", "failed_tool_calls", "files_modified", "prompt"):  # fmt: skip
        assert after[key] == before[key], key


def _lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    out, offset = [], 0
    for raw in path.read_bytes().splitlines(keepends=True):
        if raw.strip():
            out.append((offset, json.loads(raw)))
        offset += len(raw)
    return out


def _feed_interleaved(files: list[Path], seed: int | None) -> dict[str, Any]:
    """Feed the files' lines into one CodexJob, interleaved at random (file order kept)."""
    job = CodexJob(C)
    queues = [
        (LineContext(i + 1, "main", None, None, None, str(p)), _lines(p))
        for i, p in enumerate(files)
    ]
    rng = random.Random(seed)
    while any(q for _, q in queues):
        live = [(ctx, q) for ctx, q in queues if q]
        ctx, queue = live[0] if seed is None else rng.choice(live)
        offset, obj = queue.pop(0)
        job.feed(obj, ctx, offset)
    detail = job.build(finalized=True, machine_id=None)
    return {
        "record": detail.record.to_dict(),
        "tools": list(detail.tool_calls),
        "usage": detail.usage,
    }


def test_record_does_not_depend_on_interleaving(tmp_path: Path) -> None:
    home = _home(tmp_path)
    live = next(home.glob(f"sessions/**/rollout-*-{C}.jsonl"))
    archive = home / "archived_sessions" / live.name
    reference = _feed_interleaved([live, archive], None)
    assert reference["record"]["input_tokens"] == EXPECTED[f"codex:{C}"]["input_tokens"]
    for seed in range(20):
        assert _feed_interleaved([live, archive], seed) == reference
        # The file ids (discovery order) do not matter either: sessions/ wins.
        assert _feed_interleaved([archive, live], seed)["record"]["input_tokens"] == 15662


def _meta_line(session: str, ts: str, **extra: Any) -> dict[str, Any]:
    payload = {"id": session, "timestamp": ts, "cwd": "/w", "cli_version": "0.60.0", **extra}
    return {"timestamp": ts, "type": "session_meta", "payload": payload}


def _tokens_line(ts: str, inp: int, cached: int, out: int) -> dict[str, Any]:
    usage = {"input_tokens": inp, "cached_input_tokens": cached, "output_tokens": out,
             "reasoning_output_tokens": 0, "total_tokens": inp + out}  # fmt: skip
    info = {"total_token_usage": usage, "last_token_usage": usage, "model_context_window": 1000}
    return {"timestamp": ts, "type": "event_msg", "payload": {"type": "token_count", "info": info}}


def _turn(ts: str, model: str) -> dict[str, Any]:
    return {"timestamp": ts, "type": "turn_context", "payload": {"model": model, "cwd": "/w"}}


def _build(lines: list[dict[str, Any]]) -> Any:
    job = CodexJob("k")
    ctx = LineContext(1, "main", None, None, None, "/x/sessions/rollout-k.jsonl")
    for offset, obj in enumerate(lines):
        job.feed(obj, ctx, offset * 100)
    return job.build(finalized=True, machine_id=None).record


def test_fork_with_preserved_timestamps_and_a_restarted_counter() -> None:
    created = "2025-11-03T11:20:00.300Z"
    replay = [
        _meta_line("parent", "2025-11-03T09:00:00.000Z"),
        _turn("2025-11-03T09:00:01.000Z", "gpt-5"),
        _tokens_line("2025-11-03T09:00:05.000Z", 1000, 0, 100),
        _tokens_line("2025-11-03T09:01:05.000Z", 3000, 1000, 300),
    ]
    head = [_meta_line("k", created, forked_from_id="parent"), *replay]
    # Counter continues from the replayed total: only the growth counts.
    rec = _build([*head, _turn("2025-11-03T11:21:00.000Z", "gpt-5"),
                  _tokens_line("2025-11-03T11:21:05.000Z", 4000, 2000, 350)])  # fmt: skip
    assert (rec.input_tokens, rec.cache_read_tokens, rec.output_tokens) == (0, 1000, 50)
    assert rec.parent_session_id == "parent"
    # Counter starts again from zero after the replay: its first total counts whole.
    rec = _build([*head, _turn("2025-11-03T11:21:00.000Z", "gpt-5"),
                  _tokens_line("2025-11-03T11:21:05.000Z", 500, 0, 20)])  # fmt: skip
    assert (rec.input_tokens, rec.cache_read_tokens, rec.output_tokens) == (500, 0, 20)


def test_unchanged_and_shrinking_totals_add_nothing() -> None:
    lines = [
        _meta_line("k", "2025-11-03T09:00:00.000Z"),
        {"timestamp": "2025-11-03T09:00:00.500Z", "type": "event_msg",
         "payload": {"type": "token_count", "info": None}},
        _turn("2025-11-03T09:00:01.000Z", "gpt-5"),
        _tokens_line("2025-11-03T09:00:05.000Z", 1000, 200, 100),
        _tokens_line("2025-11-03T09:00:06.000Z", 1000, 200, 100),
        _tokens_line("2025-11-03T09:00:07.000Z", 900, 200, 90),
        _turn("2025-11-03T09:01:00.000Z", "o3"),
        _tokens_line("2025-11-03T09:01:05.000Z", 2000, 1200, 150),
    ]  # fmt: skip
    rec = _build(lines)
    assert (rec.input_tokens, rec.cache_read_tokens, rec.output_tokens) == (800, 1200, 150)
    # gpt-5: 800 x 1.25 + 200 x 0.125 + 100 x 10 = 2025; o3: 0 x 2 + 1000 x 0.5 + 50 x 8 = 900
    assert rec.cost_usd == pytest.approx(0.002925, abs=1e-9)
    assert rec.models == ["gpt-5", "o3"]


def test_classify_claims_only_rollouts(tmp_path: Path) -> None:
    adapter = CodexAdapter()
    uuid = "0199a1b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b"
    name = f"rollout-2025-11-03T09-14-05-{uuid}.jsonl"
    for path in (
        Path("/h/.codex/sessions/2025/11/03") / name,
        Path("/h/.codex/archived_sessions") / name,
        Path("/anywhere") / name,
    ):
        info = adapter.classify(path)
        assert info is not None and info.job_key == uuid and info.role == "main"
    odd = adapter.classify(Path("/h/.codex/sessions/2025/01/01/rollout-odd.jsonl"))
    assert odd is not None and odd.job_key is None  # the key comes from session_meta
    for path in (
        Path("/anywhere/rollout-odd.jsonl"),
        Path(f"/h/.claude/projects/-w/{uuid}.jsonl"),
        Path("/h/.codex/sessions/notes.jsonl"),
        Path(f"/h/.codex/sessions/{name}.bak"),
    ):
        assert adapter.classify(path) is None
    assert next(iter(ADAPTERS)) == "codex"  # asked before Claude, which claims every .jsonl


def test_codex_home_and_default_roots(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert paths.codex_home() == isolated_home / ".codex"
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "cx"))
    assert paths.codex_home() == tmp_path / "cx"
    roots = paths.default_watch_roots()
    assert roots[-2:] == [tmp_path / "cx" / "sessions", tmp_path / "cx" / "archived_sessions"]


@pytest.mark.parametrize(
    ("model", "figures"),
    [
        ("gpt-5-codex", (1.25, 10.0, 0.125)),
        ("gpt-5-2025-08-07", (1.25, 10.0, 0.125)),
        ("gpt-5.1-codex-max", (1.25, 10.0, 0.125)),
        ("gpt-5.1-codex-mini", (0.25, 2.0, 0.025)),
        ("gpt-5.2-codex", (1.75, 14.0, 0.175)),
        ("o4-mini", (1.1, 4.4, 0.275)),
        ("gpt-4.1", (2.0, 8.0, 0.5)),
    ],
)
def test_openai_prices(model: str, figures: tuple[float, float, float]) -> None:
    price = pricing.lookup(model)
    assert price is not None
    assert (price.input, price.output, price.cache_read) == figures


# -- the shared samples --------------------------------------------------------------------


def _kind(obj: dict[str, Any]) -> tuple[str, bool]:
    """A line's kind, and whether the adapter reads it (independently of the adapter)."""
    kind, payload = obj.get("type"), obj.get("payload")
    if isinstance(kind, str) and isinstance(payload, dict):
        if kind in ("response_item", "event_msg"):
            sub = payload.get("type")
            known = (
                RESPONSE_KINDS | IGNORED_RESPONSE_KINDS
                if kind == "response_item"
                else (EVENT_KINDS | IGNORED_EVENT_KINDS)
            )
            return f"{kind}/{sub}", sub in known
        return kind, kind in TOP_KINDS
    if "record_type" in obj:
        return "record_type", True
    if isinstance(kind, str):
        return kind, kind in RESPONSE_KINDS
    if kind is None and isinstance(obj.get("id"), str) and isinstance(obj.get("timestamp"), str):
        return "legacy_header", True
    return kind if isinstance(kind, str) else "untyped", False


def _conversation(path: Path) -> bool:
    """Does a rollout hold a prompt, an answer, counted tokens or a tool call? (read here
    independently of the adapter)"""
    for _, obj in _lines(path):
        kind, payload = obj.get("type"), obj.get("payload")
        item = payload if isinstance(payload, dict) else obj
        sub = item.get("type")
        if kind in ("response_item", "message", "function_call") and sub in (
            "message",
            "function_call",
            "custom_tool_call",
            "local_shell_call",
            "web_search_call",
        ):
            return True
        if kind == "event_msg" and sub in ("user_message", "agent_message"):
            return True
        info = item.get("info")
        if kind == "event_msg" and sub == "token_count" and isinstance(info, dict):
            total = info.get("total_token_usage")
            if isinstance(total, dict) and "input_tokens" in total:
                return True
    return False


def test_samples_import_without_losing_a_record_kind(
    samples: Path, tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = sorted((samples / "codex-real").glob("*.jsonl"))
    sources += sorted((samples / "shape-fixtures" / "codex").glob("*.jsonl"))
    assert len(sources) >= 8
    day = tmp_path / "cx" / "sessions" / "2026" / "01" / "01"
    day.mkdir(parents=True)
    copies: dict[Path, tuple[Path, str]] = {}
    for n, src in enumerate(sources):
        digest = hashlib.sha256(src.name.encode()).hexdigest()
        uuid = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        dst = day / f"rollout-2026-01-01T00-00-{n:02d}-{uuid}.jsonl"
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o600)
        copies[src] = (dst, uuid)
    summary = _import(capsys, db, tmp_path / "cx" / "sessions")
    assert summary["files"] == len(sources)
    listed = {j["session_id"] for j in run_json(capsys, "jobs", "--limit", "0", "--db", str(db))}
    for src, (dst, uuid) in copies.items():
        assert archived(db, dst) == src.read_bytes(), src.name
        if not _conversation(src):  # archived, but no job (finding 5 of issue 14)
            assert uuid not in listed, src.name
            continue
        assert uuid in listed, src.name
        job = run_json(capsys, "show", f"codex:{uuid}", "--db", str(db))
        assert job["source"] == "codex" and job["session_id"] == uuid
        kinds: dict[str, bool] = {}
        unknown = 0
        for _, obj in _lines(src):
            kind, known = _kind(obj)
            kinds[kind] = known
            unknown += not known
        lost = {k for k, known in kinds.items() if not known} - set(job["skipped_kinds"])
        assert not lost, f"{src.name}: kinds neither read nor counted: {sorted(lost)}"
        assert job["skipped_records"] == unknown, src.name
    real = run_json(capsys, "show", f"codex:{copies[sources[0]][1]}", "--db", str(db))
    assert real["prompt"].startswith("can you analyse the MD files")
    # No token_count in this head: no usage, but the model still comes from turn_context.
    assert real["model"] == "gpt-5.2-codex" and real["models"] == []
    assert real["version"] == "0.77.0" and real["sandbox_policy"] == "workspace-write"
    assert real["cwd"] == "/Users/macmini/Code/homelab-migration"


async def test_daemon_watches_claude_and_codex_roots_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real daemon on the default layout of both agents: one job per session, each with
    its source, and a rollout exported byte for byte."""
    from jobvault.config import Config
    from jobvault.service.daemon import run_daemon
    from tests.test_daemon import eventually

    fixtures = Path(__file__).parent / "fixtures"
    claude = tmp_path / "claude" / "projects"
    codex = tmp_path / "codex"
    shutil.copytree(fixtures / "claude" / "projects", claude)
    shutil.copytree(fixtures / "codex" / "home", codex)
    files = list(tmp_path.rglob("*.jsonl"))
    db = tmp_path / "vault" / "j.db"
    config = Config(
        watch=(claude, codex / "sessions", codex / "archived_sessions"), db=db,
        idle_timeout=0.5, rescan_interval=0.2, batch_interval=0.01,
    )  # fmt: skip

    def all_final() -> bool:
        if not db.exists():
            return False
        conn = sqlite3.connect(db)
        try:
            archived_bytes, open_jobs = conn.execute(
                "SELECT (SELECT COALESCE(SUM(length), 0) FROM chunks), "
                "(SELECT COUNT(*) FROM jobs WHERE finalized_at IS NULL)"
            ).fetchone()
        finally:
            conn.close()
        return bool(archived_bytes == sum(p.stat().st_size for p in files) and not open_jobs)

    async with run_daemon(config):
        await eventually(all_final, 30)
    jobs = run_json(capsys, "jobs", "--db", str(db), "--limit", "0")
    assert {j["source"] for j in jobs} == {"claude", "codex"}
    assert all(j["id"].startswith(j["source"] + ":") for j in jobs)
    rollout = next((codex / "sessions").rglob("rollout-*.jsonl"))
    session = next(j for j in jobs if j["source"] == "codex" and j["source_path"] == str(rollout))
    out = tmp_path / "export.jsonl"
    code, _ = run(capsys, "export", session["id"], "--db", str(db), "-o", str(out))
    assert code == 0 and out.read_bytes() == rollout.read_bytes()
