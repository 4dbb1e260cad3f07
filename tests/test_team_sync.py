"""`jobvault sync` against a real PostgreSQL server: two machines pushed, pushed again (no
change), updated (replaced), rebuilt, deleted, killed with SIGKILL half-way and resumed; what
leaves the machine; logins, passwords, TLS and the errors of a bad URL or a refused login.

Every vault is a real SQLite database built by `jobvault import` of synthetic transcripts;
every push goes through the CLI (in-process, or a subprocess where it is killed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from jobvault.cli import main
from jobvault.config import SYNC_INCLUDES
from jobvault.errors import ExitCode
from jobvault.team import connect, schema
from jobvault.team.schema import SHARED_LOCK
from tests.helpers import dumps, run, session_lines, user
from tests.pg import PgServer
from tests.teamkit import (
    append,
    check_consistent,
    import_into,
    init,
    machine,
    rows,
    sid,
    snapshot,
    sync,
    write_session,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "claude" / "projects"


def _local(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def _remote(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql, params)]


def _machine_id(db: Path) -> str:
    return str(_local(db, "SELECT value FROM meta WHERE key = 'machine_id'")[0][0])


def _same_jobs(db: Path, url: str) -> None:
    """The machine's remote job rows and hourly usage are its local ones."""
    machine_id = _machine_id(db)
    local = _local(db, "SELECT id, message_count, input_tokens, output_tokens, "
                       "ROUND(cost_usd, 6), status FROM jobs ORDER BY id")  # fmt: skip
    remote = _remote(url, "SELECT job_id, message_count, input_tokens, output_tokens, "
                          "ROUND(cost_usd::numeric, 6)::float8, status FROM jobvault.jobs "
                          "WHERE machine_id = %s ORDER BY job_id", (machine_id,))  # fmt: skip
    assert remote == local
    local_usage = _local(db, "SELECT job_id, hour, model, messages, input_tokens, output_tokens, "
                             "cache_creation_tokens, cache_read_tokens FROM job_usage")  # fmt: skip
    remote_usage = _remote(
        url, "SELECT job_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24'), model, "
             "messages, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens "
             "FROM jobvault.job_usage WHERE machine_id = %s", (machine_id,),
    )  # fmt: skip
    assert sorted(remote_usage) == sorted(local_usage)


def test_init_applies_named_migrations_each_in_its_own_transaction(
    team_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "team", "init", "--url", team_db)
    assert code == 0 and "applied m001_initial" in out
    assert [r[0] for r in _remote(team_db, "SELECT name FROM jobvault._migrations")] == [
        m.__name__ for m in schema.MIGRATIONS
    ]
    code, out = run(capsys, "team", "init", "--url", team_db)
    assert code == 0 and "up to date" in out

    def m900_good(conn: Any) -> None:
        conn.execute("CREATE TABLE jobvault.good (x int)")

    def m901_bad(conn: Any) -> None:
        conn.execute("CREATE TABLE jobvault.half (x int)")
        conn.execute("SELECT no_such_function()")

    with psycopg.connect(team_db, autocommit=True) as conn:
        with pytest.raises(psycopg.Error):
            schema.migrate(conn, [*schema.MIGRATIONS, m900_good, m901_bad])
        names = [r[0] for r in conn.execute("SELECT name FROM jobvault._migrations")]
        assert "m900_good" in names and "m901_bad" not in names
        # The failed one left nothing behind; the one before it is whole.
        assert conn.execute("SELECT to_regclass('jobvault.half')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('jobvault.good')").fetchone() != (None,)
        # A database with a migration this jobvault does not know is refused.
        with pytest.raises(Exception, match="newer schema"):
            schema.check(conn)


def test_two_machines_pushed_then_pushed_again_changes_nothing(
    tmp_path: Path, team_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    init(capsys, team_db)
    _, a = machine(capsys, tmp_path, "a", {sid(1): session_lines(6, session=sid(1)),
                                           sid(2): session_lines(3, session=sid(2))})  # fmt: skip
    _, b = machine(capsys, tmp_path, "b", {sid(3): session_lines(4, session=sid(3), base=900)})
    first_a, first_b = sync(capsys, a, team_db), sync(capsys, b, team_db)
    assert (first_a["jobs"], first_b["jobs"], first_a["pending"]) == (2, 1, 0)
    _same_jobs(a, team_db)
    _same_jobs(b, team_db)
    check_consistent(team_db)
    machines = _remote(team_db, "SELECT machine_id, acked_seq FROM jobvault.machines ORDER BY 1")
    assert sorted(machines) == sorted([(_machine_id(a), 2), (_machine_id(b), 1)])

    def everything() -> dict[str, list[Any]]:  # times of writing included: nothing rewritten
        with psycopg.connect(team_db) as conn:
            return {
                t: sorted(map(repr, conn.execute(f"SELECT * FROM jobvault.{t}").fetchall()))
                for t in ("jobs", "job_usage", "tool_calls", "usage_keys", "usage_hourly")
            }

    before = everything()
    again_a, again_b = sync(capsys, a, team_db), sync(capsys, b, team_db)
    assert (again_a["jobs"], again_a["rows"], again_b["jobs"], again_b["batches"]) == (0, 0, 0, 0)
    assert everything() == before
    code, out = run(capsys, "sync", "--to", team_db, "--db", str(a), "--no-progress")
    assert code == 0 and "nothing to push" in out and "s3cret" not in out


def test_updated_rebuilt_and_deleted_jobs_replace_their_remote_rows(
    tmp_path: Path, team_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    init(capsys, team_db)
    sessions = {sid(1): session_lines(4, session=sid(1)), sid(2): session_lines(2, session=sid(2))}
    root, a = machine(capsys, tmp_path, "a", sessions)
    _, b = machine(capsys, tmp_path, "b", {sid(3): session_lines(3, session=sid(3), base=500)})
    sync(capsys, a, team_db)
    sync(capsys, b, team_db)
    theirs = rows(team_db, "jobs")
    theirs_b = [r for r in theirs if r[0] == _machine_id(b)]

    # New lines in one session: only that job is sent again, and its rows are replaced.
    path = root / "projects" / "-home-dev-app" / f"{sid(1)}.jsonl"
    append(path, session_lines(5, session=sid(1), base=3600)[1:])
    import_into(capsys, a, root)
    result = sync(capsys, a, team_db)
    assert (result["jobs"], result["deleted"]) == (1, 0)
    _same_jobs(a, team_db)
    check_consistent(team_db)
    assert [r for r in rows(team_db, "jobs") if r[0] == _machine_id(b)] == theirs_b
    hours = _remote(team_db, "SELECT count(*) FROM jobvault.job_usage WHERE job_id = %s",
                    (f"claude:{sid(1)}",))  # fmt: skip
    assert hours == [(2,)]  # the old hour and the new one, each once

    # A rebuild rewrites every record (new change numbers) as it was: nothing is sent again.
    before = snapshot(team_db)
    code, out = run(capsys, "rebuild", "--db", str(a), "--no-progress")
    assert code == 0, out
    result = sync(capsys, a, team_db)
    assert (result["jobs"], result["unchanged"], result["rows"]) == (0, 2, 0)
    moved = ("machines",)  # its acknowledgement; nothing else
    assert {t: v for t, v in snapshot(team_db).items() if t not in moved} == {
        t: v for t, v in before.items() if t not in moved
    }
    # Re-priced (a price of the user's, then a rebuild): the records change and are replaced.
    config = tmp_path / "prices.toml"
    config.write_text('[pricing."claude-sonnet-4-20250514"]\ninput = 30.0\noutput = 150.0\n')
    code, out = run(capsys, "rebuild", "--db", str(a), "--no-progress", "--config", str(config))
    assert code == 0, out
    result = sync(capsys, a, team_db)
    assert (result["jobs"], result["unchanged"]) == (2, 0)
    _same_jobs(a, team_db)
    check_consistent(team_db)
    costs = _remote(team_db, "SELECT sum(cost_usd) FROM jobvault.usage_hourly")[0][0]
    assert costs > sum(r[-1] for r in before["usage_hourly"])

    # A job deleted by the writer (here: this test, the only writer) is deleted remotely.
    conn = sqlite3.connect(a)
    conn.execute("PRAGMA foreign_keys = ON")  # as the store's writer has it
    conn.execute("DELETE FROM jobs WHERE id = ?", (f"claude:{sid(2)}",))
    conn.commit()
    conn.close()
    result = sync(capsys, a, team_db)
    assert (result["jobs"], result["deleted"]) == (0, 1)
    _same_jobs(a, team_db)
    check_consistent(team_db)


def _waiting(url: str, application: str) -> bool:
    found = _remote(url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                         "AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                    (application,))  # fmt: skip
    return bool(found[0][0] > 0)


def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(0.02)


def test_push_killed_half_way_with_sigkill_then_resumed(
    tmp_path: Path, team_db: str, pg_server: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second batch is held mid-transaction (after its deletes and COPYs, at the shared-
    message lock, which the test holds), the process is killed: batch 1 stays, batch 2 is
    rolled back whole, and the next push finishes the work; the result equals a clean push."""
    init(capsys, team_db)
    sessions = {sid(n): session_lines(2 + n % 3, session=sid(n), base=200 * n) for n in range(12)}
    _, a = machine(capsys, tmp_path, "a", sessions)
    total = len(sessions)
    env = {**os.environ, "JOBVAULT_SYNC_BATCH_ROWS": "20", "PYTHONPATH": str(ROOT / "daemon")}
    with psycopg.connect(team_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (SHARED_LOCK,))
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobvault", "sync", "--to", team_db, "--db", str(a), "--json",
             "--no-progress"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            _until(lambda: _waiting(team_db, "jobvault-sync"))  # batch 1, mid-transaction
            # Let batch 1 commit, and queue behind it so that batch 2 waits on us in turn.
            holder.execute("SELECT pg_advisory_unlock(%s)", (SHARED_LOCK,))
            holder.execute("SELECT pg_advisory_lock(%s)", (SHARED_LOCK,))
            _until(lambda: _waiting(team_db, "jobvault-sync"))  # batch 2, mid-transaction
            acked = _remote(team_db, "SELECT acked_seq FROM jobvault.machines")[0][0]
            assert 0 < acked < total
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # The dead client's transaction can never commit: once its statement ends, the
        # server finds the connection gone and rolls it back.
        holder.execute("SELECT pg_advisory_unlock(%s)", (SHARED_LOCK,))
        _until(
            lambda: (
                not _remote(
                    team_db,
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'jobvault-sync'",
                )
            )
        )
    pushed = _remote(team_db, "SELECT count(*), max(local_seq) FROM jobvault.jobs")[0]
    assert pushed == (acked, acked)  # exactly the acknowledged batches, nothing of batch 2
    check_consistent(team_db)

    result = sync(capsys, a, team_db)  # resume
    assert result["jobs"] == total - acked and result["pending"] == 0
    _same_jobs(a, team_db)
    check_consistent(team_db)
    clean_db = pg_server.create_database()
    try:
        clean = pg_server.url(clean_db)
        init(capsys, clean)
        sync(capsys, a, clean)
        assert snapshot(team_db) == snapshot(clean)  # nothing lost, nothing doubled
    finally:
        pg_server.drop_database(clean_db)


def _opt_in_texts(db: Path) -> dict[str, set[str]]:
    """Every local value of the text that only leaves the machine when opted in."""
    queries = {
        "prompts": ["SELECT prompt FROM jobs", "SELECT description FROM subagents"],
        "summaries": ["SELECT summary FROM jobs", "SELECT title FROM jobs"],
        "tool_previews": ["SELECT input_preview FROM tool_calls",
                          "SELECT output_preview FROM tool_calls"],
        "file_paths": ["SELECT path FROM files_modified", "SELECT cwd FROM jobs",
                       "SELECT source_path FROM jobs", "SELECT path FROM files"],
        "git_branches": ["SELECT git_branch FROM jobs"],
    }  # fmt: skip
    out: dict[str, set[str]] = {}
    for name, sqls in queries.items():
        values = {str(r[0]) for sql in sqls for r in _local(db, sql) if r[0]}
        out[name] = {v for v in values if len(v) >= 12}  # long enough to never occur by chance
    return out


def _leaves(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _leaves(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _leaves(v)]
    return []


def _dump(url: str) -> str:
    """Every text value of every row of every team table (JSON walked), one per line."""
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'jobvault' "
            "AND table_type = 'BASE TABLE'")]  # fmt: skip
        return "\n".join(
            leaf
            for t in tables
            for row in conn.execute(f"SELECT * FROM jobvault.{t}")
            for leaf in _leaves(tuple(row))
        )


def test_only_figures_and_metadata_leave_the_machine_unless_opted_in(
    tmp_path: Path, team_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    init(capsys, team_db)
    root = tmp_path / "a" / "claude" / "projects"
    shutil.copytree(FIXTURES, root)
    mine = session_lines(3, session=sid(7))
    mine[0] = dumps(user("a prompt that names a secret customer", 0, session=sid(7),
                         gitBranch="feature/secret-customer-branch"))  # fmt: skip
    write_session(root.parent, sid(7), mine)
    db = tmp_path / "a" / "jobvault.db"
    import_into(capsys, db, root)
    texts = _opt_in_texts(db)
    assert all(texts.values()), texts  # the fixtures have some of each

    sync(capsys, db, team_db)
    dump = _dump(team_db)
    leaked = {name: [v for v in values if v in dump] for name, values in texts.items()}
    assert leaked == {name: [] for name in texts}
    # The figures did go.
    assert _remote(team_db, "SELECT count(*), sum(input_tokens) > 0 FROM jobvault.jobs")[0] == (
        5, True)  # fmt: skip
    assert _remote(team_db, "SELECT count(*) FROM jobvault.archive_chunks") == [(0,)]
    assert _remote(team_db, "SELECT count(*), count(path) FROM jobvault.files_modified")[0][1] == 0

    config = tmp_path / "jobvault.toml"
    everything = json.dumps(list(SYNC_INCLUDES))
    config.write_text(f"[sync]\ninclude = {everything}\n")
    result = sync(capsys, db, team_db, "--config", str(config))
    assert result["full"].startswith("include changed") and result["chunks"] > 0
    dump = _dump(team_db)
    for name, values in texts.items():
        assert all(v in dump for v in values), name
    # The raw archive: each file's chunks, decompressed and concatenated, are its bytes.
    path = next(root.rglob(f"{sid(7)}.jsonl"))
    data = _remote(
        team_db, "SELECT c.codec, c.data, c.length FROM jobvault.archive_chunks c "
                 "JOIN jobvault.archive_files f USING (machine_id, file_id) WHERE f.path = %s "
                 "ORDER BY c.\"offset\"", (str(path),),
    )  # fmt: skip
    restored = b"".join(
        zstandard.ZstdDecompressor().decompress(d, max_output_size=n) if c == "zstd" else d
        for c, d, n in data
    )
    assert restored == path.read_bytes()

    # Opting out again takes it all back off the server.
    config.write_text("[sync]\ninclude = []\n")
    result = sync(capsys, db, team_db, "--config", str(config))
    assert result["full"].startswith("include changed")
    dump = _dump(team_db)
    assert {n: [v for v in vs if v in dump] for n, vs in texts.items()} == {n: [] for n in texts}
    assert _remote(team_db, "SELECT count(*) FROM jobvault.archive_files") == [(0,)]
    check_consistent(team_db)


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def test_bad_urls_and_refused_logins_are_one_line_and_a_named_exit_code(
    tmp_path: Path, team_db: str, pg_server: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    _, db = machine(capsys, tmp_path, "a", {sid(1): session_lines(2, session=sid(1))})
    name = team_db.rsplit("/", 1)[1]
    cases = [
        ("http://example.invalid/db", ExitCode.CONFIG, "must start with postgresql://"),
        (f"postgresql://{pg_server.url(name)[13:].replace(str(pg_server.port), 'notaport')}",
         ExitCode.CONFIG, "port"),
        (pg_server.url(name, password="wrong-password"), ExitCode.NOPERM,
         "password authentication failed"),
        (pg_server.url(name, user="nobody", password="x"), ExitCode.NOPERM, "nobody"),
        (pg_server.url("no_such_database"), ExitCode.CONFIG, "does not exist"),
        (pg_server.url(name).replace(f":{pg_server.port}/", ":1/"), ExitCode.UNAVAILABLE,
         "cannot reach"),
        (pg_server.url(name), ExitCode.CONFIG, "jobvault team init"),  # no schema yet
    ]  # fmt: skip
    for url, expected, words in cases:
        code, err = _fails(capsys, "sync", "--to", url, "--db", str(db), "--no-progress")
        assert code == expected, (url, code, err)
        assert err.startswith("jobvault: error: ") and err.count("\n") == 1, err
        assert words in err, err
        assert "wrong-password" not in err and "s3cret" not in err
    # The same for the reports and for a URL from the environment.
    code, err = _fails(capsys, "stats", "daily", "--team", pg_server.url(name, password="no"))
    assert code == ExitCode.NOPERM and err.count("\n") == 1
    os.environ["JOBVAULT_SYNC_URL"] = "mysql://nope"
    try:
        code, err = _fails(capsys, "sync", "--db", str(db))
    finally:
        del os.environ["JOBVAULT_SYNC_URL"]
    assert code == ExitCode.CONFIG and "sync_url" in err and err.count("\n") == 1


def test_passwords_from_pgpassfile_pgpass_and_the_environment(
    tmp_path: Path, team_db: str, pg_server: PgServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    init(capsys, team_db)
    _, db = machine(capsys, tmp_path, "a", {sid(1): session_lines(2, session=sid(1))})
    name = team_db.rsplit("/", 1)[1]
    bare = pg_server.url(name, password=None)  # no password in the URL
    code, err = _fails(capsys, "sync", "--to", bare, "--db", str(db), "--no-progress")
    assert code == ExitCode.NOPERM and "no password supplied" in err
    line = f"127.0.0.1:{pg_server.port}:{name}:jv_admin:s3cret-for-tests\n"
    passfile = tmp_path / "passfile"
    passfile.write_text(line)
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    assert sync(capsys, db, bare)["jobs"] == 1
    monkeypatch.delenv("PGPASSFILE")
    home_pgpass = Path(os.environ["HOME"]) / ".pgpass"  # the test's own HOME
    home_pgpass.write_text(line)
    home_pgpass.chmod(0o600)
    assert sync(capsys, db, bare, "--full")["jobs"] == 1
    home_pgpass.unlink()
    monkeypatch.setenv("PGPASSWORD", "s3cret-for-tests")
    assert sync(capsys, db, bare, "--full")["jobs"] == 1


def test_tls_as_the_url_and_the_environment_ask(
    tmp_path: Path, team_db: str, pg_server: PgServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    if not pg_server.tls:
        pytest.skip("openssl was not there to make the test server's certificate")
    init(capsys, team_db)
    _, db = machine(capsys, tmp_path, "a", {sid(1): session_lines(2, session=sid(1))})
    name = team_db.rsplit("/", 1)[1]
    root = pg_server.base / "root.crt"
    verified = pg_server.url(name, sslmode="verify-full", sslrootcert=str(root))
    assert sync(capsys, db, verified)["jobs"] == 1
    with connect.connect(verified) as conn:
        assert conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() == (True,)
    monkeypatch.setenv("PGSSLMODE", "require")
    with connect.connect(team_db) as conn:
        assert conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() == (True,)
    # A certificate that does not match is refused, in one line.
    other = tmp_path / "other.crt"
    made = subprocess.run(
        ["openssl", "req", "-new", "-x509", "-days", "1", "-nodes", "-subj", "/CN=other",
         "-keyout", str(tmp_path / "other.key"), "-out", str(other)], capture_output=True,
    )  # fmt: skip
    assert made.returncode == 0
    code, err = _fails(capsys, "sync", "--to",
                       pg_server.url(name, sslmode="verify-full", sslrootcert=str(other)),
                       "--db", str(db))  # fmt: skip
    assert code == ExitCode.NOPERM and "certificate" in err and err.count("\n") == 1


def _role_sql(database: str, suffix: str) -> list[str]:
    """The role statements of docs/team.md, for this test's database and role names."""
    text = (ROOT / "docs" / "team.md").read_text()
    block = text.split("<!-- roles:begin -->", 1)[1].split("<!-- roles:end -->", 1)[0]
    sql = block.split("```sql", 1)[1].split("```", 1)[0]
    sql = re.sub(r"\bjobvault_(sync|read)\b", lambda m: f"jobvault_{m[1]}_{suffix}", sql)
    sql = sql.replace("DATABASE jobvault ", f'DATABASE "{database}" ')
    return [s.strip() for s in sql.split(";") if s.strip() and not s.strip().startswith("--")]


def test_the_documented_least_privilege_roles_are_enough_and_no_more(
    tmp_path: Path, team_db: str, pg_server: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    init(capsys, team_db)
    name = team_db.rsplit("/", 1)[1]
    suffix = name.rsplit("_", 2)[-1] + str(os.getpid())
    statements = _role_sql(name, suffix)
    assert any("GRANT" in s for s in statements)
    sync_role, read_role = f"jobvault_sync_{suffix}", f"jobvault_read_{suffix}"
    with psycopg.connect(team_db, autocommit=True) as admin:
        for statement in statements:
            admin.execute(statement.replace("'change-me'", "'pw-sync'").replace(
                "'change-me-too'", "'pw-read'"))  # fmt: skip
    try:
        pusher = pg_server.url(name, user=sync_role, password="pw-sync")
        reader = pg_server.url(name, user=read_role, password="pw-read")
        _, db = machine(capsys, tmp_path, "a", {sid(1): session_lines(3, session=sid(1))})
        assert sync(capsys, db, pusher)["jobs"] == 1
        conn = sqlite3.connect(db)  # a deletion needs DELETE, and a change UPDATE
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM jobs")
        conn.commit()
        conn.close()
        assert sync(capsys, db, pusher)["deleted"] == 1
        code, out = run(capsys, "stats", "daily", "--team", reader, "--json")
        assert code == 0 and json.loads(out)["rows"] == []
        code, err = _fails(capsys, "team", "init", "--url", pusher)
        assert code == 0  # nothing to apply: it only reads _migrations
        code, err = _fails(capsys, "sync", "--to", reader, "--db", str(db))
        assert code == ExitCode.NOPERM and "permission denied" in err
        for url, statement in (
            (pusher, "CREATE TABLE jobvault.extra (x int)"),
            (pusher, "DROP TABLE jobvault.jobs"),
            (pusher, "ALTER TABLE jobvault.jobs ADD COLUMN x int"),
            (pusher, "TRUNCATE jobvault.jobs"),
            (pusher, "CREATE TABLE public.extra (x int)"),
            (reader, "DELETE FROM jobvault.jobs"),
        ):
            with (
                psycopg.connect(url, autocommit=True) as refused,
                pytest.raises(psycopg.errors.InsufficientPrivilege),
            ):
                refused.execute(statement)
    finally:
        with psycopg.connect(team_db, autocommit=True) as admin:
            for role in (sync_role, read_role):
                admin.execute(f"DROP OWNED BY {role}")
                admin.execute(f"DROP ROLE {role}")


def test_a_vault_restored_from_an_older_backup_is_pushed_whole(
    tmp_path: Path, team_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    init(capsys, team_db)
    root, db = machine(capsys, tmp_path, "a", {sid(1): session_lines(2, session=sid(1))})
    backup = tmp_path / "backup.db"
    code, out = run(capsys, "backup", str(backup), "--db", str(db))
    assert code == 0, out
    write_session(root, sid(2), session_lines(2, session=sid(2), base=100))
    write_session(root, sid(3), session_lines(2, session=sid(3), base=200))
    import_into(capsys, db, root)
    assert sync(capsys, db, team_db)["jobs"] == 3
    shutil.copy(backup, db)  # the machine goes back to its older database
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    result = sync(capsys, db, team_db)
    assert result["full"] and "older" in result["full"]
    assert result["deleted"] == 2  # the jobs the older database never had
    _same_jobs(db, team_db)
    check_consistent(team_db)


def test_docs_team_md_lists_every_table_and_column_of_the_schema(
    team_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    init(capsys, team_db)
    text = (ROOT / "docs" / "team.md").read_text()
    block = text.split("<!-- team-schema:begin -->", 1)[1].split("<!-- team-schema:end -->")[0]
    documented: dict[str, list[str]] = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            documented[cells[0].split("`")[1]] = re.findall(r"`([^`]+)`", cells[1])
    with psycopg.connect(team_db) as conn:
        live = {
            table: [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                    "'jobvault' AND table_name = %s ORDER BY ordinal_position",
                    (table,),
                )
            ]
            for (table,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'jobvault'"
            )
        }
    assert documented == live
