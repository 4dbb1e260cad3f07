"""Full-text search: words, phrases and prefixes in prompts and assistant text, ranking,
filters, file and tool search, the socket method, rebuild and upgrade; originals deleted."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobvault.config import Config
from jobvault.service.daemon import run_daemon
from jobvault.store import migrations
from tests.helpers import assistant, dumps, run, run_json, user
from tests.test_daemon import eventually
from tests.test_server import Conn

S1 = "aaaaaaaa-2222-4333-8444-555555555555"
S2 = "bbbbbbbb-2222-4333-8444-555555555555"
S3 = "cccccccc-2222-4333-8444-555555555555"


def _edit(session: str, second: int, path: str) -> list[bytes]:
    tool_id = f"toolu_{session[:4]}_{second}"
    call = assistant(f"m_{session[:4]}_{second}", second, session=session, content=[
        {"type": "tool_use", "id": tool_id, "name": "Edit",
         "input": {"file_path": path, "old_string": "a", "new_string": "b"}}])  # fmt: skip
    result = {**user("", second + 1, session=session, uuid=f"r{session[:4]}{second}"),
              "message": {"role": "user", "content": [
                  {"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}]}}  # fmt: skip
    return [dumps(call), dumps(result)]


def _tree(root: Path) -> Path:
    project = root / "projects" / "-work-app"
    project.mkdir(parents=True)
    (project / f"{S1}.jsonl").write_bytes(b"".join([
        dumps(user("Make the tokenizer handle unicode identifiers", 0, session=S1)),
        dumps(assistant("m1", 1, session=S1, text="The tokenizer now reads identifiers with "
                        "unicode letters; the lexer table was regenerated.")),
        *_edit(S1, 2, "/work/app/src/lexer/table.py"),
    ]))  # fmt: skip
    (project / f"{S2}.jsonl").write_bytes(b"".join([
        dumps(user("Why does the deploy script fail on staging?", 100, session=S2)),
        dumps(assistant("m2", 101, session=S2, text="The deploy script calls a missing "
                        "binary. Unrelated: the tokenizer is fine.")),
        *_edit(S2, 102, "/work/app/deploy/run.sh"),
    ]))  # fmt: skip
    (project / f"{S3}.jsonl").write_bytes(b"".join([
        dumps(user("Add a changelog entry", 200, session=S3)),
        dumps(assistant("m3", 201, session=S3, text="Added the entry. Note: migrations "
                        "must run before the server restarts, as the rollback plan says.")),
    ]))  # fmt: skip
    return root / "projects"


@pytest.fixture
def vault(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    root = _tree(tmp_path)
    db = tmp_path / "vault" / "jobvault.db"
    assert run(capsys, "import", str(root), "--db", str(db), "--no-progress")[0] == 0
    for path in root.rglob("*.jsonl"):
        path.unlink()  # search needs nothing but the database
    return db


def _search(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = run_json(capsys, "search", *args, "--db", str(db))
    return result


def _ids(result: dict[str, Any]) -> list[str]:
    return [hit["job"]["session_id"] for hit in result["results"]]


def test_word_phrase_and_prefix_in_prompts_and_answers(
    vault: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _ids(_search(capsys, vault, "staging")) == [S2]  # a word in a prompt
    assert _ids(_search(capsys, vault, "rollback")) == [S3]  # a word in assistant text
    assert _ids(_search(capsys, vault, '"deploy script"')) == [S2]  # a phrase
    assert _ids(_search(capsys, vault, '"script deploy"')) == []  # word order matters
    assert _ids(_search(capsys, vault, '"lexer table"')) == [S1]  # a phrase in an answer
    assert _ids(_search(capsys, vault, "regener*")) == [S1]  # a prefix in an answer
    assert _ids(_search(capsys, vault, "identif*")) == [S1]  # a prefix in a prompt
    assert _ids(_search(capsys, vault, "Unicode")) == [S1]  # case-insensitive
    hit = _search(capsys, vault, "rollback")["results"][0]
    assert "«rollback»" in hit["snippet"] and hit["score"] < 0


def test_ranking_prefers_the_prompt_and_more_occurrences(
    vault: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "tokenizer": S1's prompt and answer; S2's answer only, once.
    assert _ids(_search(capsys, vault, "tokenizer")) == [S1, S2]
    # bm25: the rarer word (one job) outweighs the common one; one mention in an answer last.
    assert _ids(_search(capsys, vault, "tokenizer OR changelog")) == [S3, S1, S2]
    assert _ids(_search(capsys, vault, "tokenizer NOT staging")) == [S1]


def test_filters_files_and_tools(vault: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _ids(_search(capsys, vault, "tokenizer", "--file", "/work/app/deploy/run.sh")) == [S2]
    by_prefix = _search(capsys, vault, "--file", "/work/app/src/")
    assert _ids(by_prefix) == [S1]
    assert by_prefix["results"][0]["matched_files"] == ["/work/app/src/lexer/table.py"]
    assert _ids(_search(capsys, vault, "--file", "*.sh")) == [S2]
    assert _ids(_search(capsys, vault, "--file", "/work/app/*/table.py")) == [S1]
    assert sorted(_ids(_search(capsys, vault, "--tool", "Edit"))) == [S1, S2]
    assert _ids(_search(capsys, vault, "tokenizer", "--since", "2025-10-01T10:01:00Z")) == [S2]
    assert _ids(_search(capsys, vault, "tokenizer", "--project=-other")) == []
    # Text that is not FTS5 syntax is searched as plain words, not an error.
    assert _ids(_search(capsys, vault, 'deploy-script "staging')) == [S2]
    code, out = run(capsys, "search", "rollback", "--db", str(vault))
    assert code == 0 and "cccccccc" in out and "rollback" in out
    assert run(capsys, "search", "--db", str(vault))[0] == 64  # nothing to search for


def test_rebuild_reproduces_the_index(vault: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def index() -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(vault)
        try:
            return conn.execute(
                "SELECT d.job_id, f.title, f.prompt, f.summary, f.body FROM search_fts f "
                "JOIN search_docs d ON d.id = f.rowid ORDER BY d.job_id"
            ).fetchall()
        finally:
            conn.close()

    before = index()
    assert len(before) == 3 and all(row[4] for row in before)
    assert run(capsys, "rebuild", "--db", str(vault), "--no-progress")[0] == 0
    assert index() == before
    assert _ids(_search(capsys, vault, "rollback")) == [S3]


def test_upgrade_indexes_existing_jobs(tmp_path: Path) -> None:
    """A vault from before m002 gets its jobs' prompts indexed by the migration."""
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    migrations.migrate(conn, [migrations.m001_initial])
    conn.execute(
        "INSERT INTO jobs (id, source, session_id, status, prompt, summary, record, updated_at) "
        "VALUES ('claude:x', 'claude', 'x', 'completed', 'fix the flaky websocket test', "
        "'done', '{}', '2025-01-01')"
    )
    migrations.migrate(conn)
    rows = conn.execute(
        "SELECT d.job_id FROM search_fts JOIN search_docs d ON d.id = search_fts.rowid "
        "WHERE search_fts MATCH 'websock*'"
    ).fetchall()
    assert rows == [("claude:x",)]
    conn.execute("DELETE FROM jobs")  # the trigger drops the document
    assert conn.execute("SELECT COUNT(*) FROM search_docs").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM search_fts").fetchone() == (0,)
    conn.close()


def _jobs(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


async def test_search_and_stats_over_the_socket(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    socket = Path(os.environ["XDG_RUNTIME_DIR"]) / "jv.sock"
    db = tmp_path / "vault" / "jobvault.db"
    config = Config(watch=(root,), db=db, socket=socket, rescan_interval=0.3, batch_interval=0.02)
    async with run_daemon(config):
        await eventually(lambda: _jobs(db) == 3)
        conn = await Conn.open(socket)
        try:
            reply = await conn.call("search", {"query": "tokenizer", "tool": "Edit", "limit": 1})
            assert [h["job"]["session_id"] for h in reply["result"]["results"]] == [S1]
            assert reply["result"]["next_offset"] == 1
            bad = await conn.call("search", {"query": "x", "limit": 0})
            assert bad["error"]["data"]["kind"] == "invalid_params"
            usage = await conn.call("stats.usage", {"group_by": "model"})
            assert usage["result"]["rows"][0]["model"] == "claude-sonnet-4-20250514"
            tools = await conn.call("stats.tools", {})
            assert tools["result"]["rows"][0] == {
                "tool": "Edit", "calls": 2, "failures": 0, "jobs": 2, "failure_rate": 0.0
            }  # fmt: skip
            blocks = await conn.call("stats.blocks", {"hours": 5})
            assert len(blocks["result"]["blocks"]) == 1
            wrong = await conn.call("stats.usage", {"group_by": "year"})
            assert wrong["error"]["data"]["kind"] == "invalid_params"
        finally:
            conn.close()
