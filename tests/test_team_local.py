"""The team vault's local side, no server needed: the change numbers of migration m007_sync,
what may leave the machine, the [sync] configuration, URLs shown without passwords, and the
glob filter's translation."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jobvault import config as config_mod
from jobvault.cli import main
from jobvault.config import SYNC_INCLUDES
from jobvault.errors import ConfigError, ExitCode, TeamError
from jobvault.records import JobRecord
from jobvault.store.migrations import MIGRATIONS, migrate
from jobvault.team import connect, privacy
from jobvault.team.reports import glob_regex
from jobvault.team.vault import Vault, hour_of, key_digest, moment
from tests.helpers import run, session_lines
from tests.teamkit import append, import_into, sid, write_session


def _changes(db: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute("SELECT seq, job_id FROM sync_changes ORDER BY seq")]
    finally:
        conn.close()


def test_every_write_and_deletion_of_a_job_gets_a_new_change_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "claude"
    path = write_session(root, sid(1), session_lines(2, session=sid(1)))
    write_session(root, sid(2), session_lines(2, session=sid(2), base=100))
    db = tmp_path / "vault" / "jobvault.db"
    import_into(capsys, db, root)
    first = _changes(db)
    assert sorted(j for _, j in first) == [f"claude:{sid(1)}", f"claude:{sid(2)}"]
    append(path, session_lines(2, session=sid(1), base=200)[1:])
    import_into(capsys, db, root)
    second = _changes(db)
    assert len(second) == 2  # one row per job, always
    rewritten = {j: s for s, j in second}
    assert rewritten[f"claude:{sid(1)}"] > max(s for s, _ in first)  # moved past every other
    conn = sqlite3.connect(db)  # this test is the one writer now
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("UPDATE jobs SET status = 'active' WHERE id = ?", (f"claude:{sid(2)}",))
    conn.commit()
    conn.execute("DELETE FROM jobs WHERE id = ?", (f"claude:{sid(1)}",))
    conn.commit()
    conn.close()
    third = _changes(db)
    assert [j for _, j in third] == [f"claude:{sid(2)}", f"claude:{sid(1)}"]  # a tombstone last
    with Vault(db) as vault:
        batch = vault.changes(0, (), 1000)
        assert [(c.job_id, c.job is None) for c in batch] == [
            (f"claude:{sid(2)}", False), (f"claude:{sid(1)}", True)
        ]  # fmt: skip
        assert vault.pending(third[0][0]) == 1 and vault.max_seq() == third[-1][0]


def test_an_older_database_gets_its_jobs_numbered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "claude"
    for n in range(3):
        write_session(root, sid(n), session_lines(1, session=sid(n), base=n * 10))
    db = tmp_path / "vault" / "jobvault.db"
    import_into(capsys, db, root)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TABLE sync_changes")  # back to the schema before m007_sync
    for trigger in ("sync_job_inserted", "sync_job_updated", "sync_job_deleted"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DELETE FROM _migrations WHERE name = 'm007_sync'")
    with pytest.raises(TeamError, match="predates team sync"):
        Vault(db)
    assert migrate(conn, MIGRATIONS) == ["m007_sync"]
    conn.close()
    assert sorted(j for _, j in _changes(db)) == sorted(f"claude:{sid(n)}" for n in range(3))


def test_every_record_field_is_classified_for_leaving_the_machine() -> None:
    fields = {f.name for f in dataclasses.fields(JobRecord)}
    unknown = fields - privacy.METADATA - set(privacy.OPT_IN)
    assert unknown == set(), f"decide whether these may leave the machine: {sorted(unknown)}"
    assert set(privacy.OPT_IN.values()) <= set(SYNC_INCLUDES)
    assert privacy.METADATA.isdisjoint(privacy.OPT_IN)
    record = dict.fromkeys(fields, "text") | {"files_modified": ["/a"], "extra": "x"}
    sent = privacy.record(record, ())
    assert "extra" not in sent  # a field nobody classified never leaves
    assert {k for k, v in sent.items() if v in (None, [])} == set(privacy.OPT_IN)
    everything = {k: v for k, v in record.items() if k != "extra"}
    assert privacy.record(record, SYNC_INCLUDES) == everything


def test_the_sync_table_the_variables_and_their_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "jobvault.toml"
    cfg.write_text(
        'idle_timeout = 9\n[sync]\nurl = "postgresql://u@db.example/team"\n'
        'include = ["prompts", "archive", "prompts"]\ninterval = 2\nname = " laptop "\n'
    )
    loaded = config_mod.load(cfg)
    assert loaded.sync_url == "postgresql://u@db.example/team"
    assert loaded.sync_include == ("prompts", "archive")
    assert (loaded.sync_interval, loaded.sync_name, loaded.idle_timeout) == (2.0, "laptop", 9.0)
    monkeypatch.setenv("JOBVAULT_SYNC_URL", "host=db dbname=team")
    monkeypatch.setenv("JOBVAULT_SYNC_INCLUDE", "summaries, file_paths")
    loaded = config_mod.load(cfg)
    assert loaded.sync_url == "host=db dbname=team"
    assert loaded.sync_include == ("summaries", "file_paths")
    monkeypatch.setenv("JOBVAULT_SYNC_URL", "")
    assert config_mod.load(cfg).sync_url == "postgresql://u@db.example/team"  # unset: file's
    for text, key in (
        ('[sync]\ninclude = ["secrets"]\n', "sync_include"),
        ('[sync]\nurl = "mysql://x/y"\n', "sync_url"),
        ("[sync]\nurl = 5\n", "sync_url"),
        ('[sync]\nuri = "postgresql://x/y"\n', "sync.uri"),
        ('sync = "postgresql://x/y"\n', "sync"),
        ("[sync]\ninterval = 0\n", "sync_interval"),
    ):
        cfg.write_text(text)
        with pytest.raises(ConfigError) as caught:
            config_mod.load(cfg, environ={})
        assert caught.value.key == key, text
    cfg.write_text('[sync]\nurl = ""\n')
    assert config_mod.load(cfg, environ={}).sync_url is None


def test_sync_and_team_need_a_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "vault" / "jobvault.db"
    import_into(capsys, db, write_session(tmp_path / "c", sid(1), session_lines(1)).parent)
    for args in (["sync", "--db", str(db)], ["team", "init"], ["stats", "--team", "--db", str(db)]):
        capsys.readouterr()
        assert main(args) == ExitCode.USAGE
        assert "no team database" in capsys.readouterr().err
    code, _ = run(capsys, "team", "forget", "--url", "postgresql://u@127.0.0.1:1/x")
    assert code == ExitCode.UNAVAILABLE


def test_urls_are_shown_without_their_password() -> None:
    url = "postgresql://alice:hunter2@db.example:6543/team?sslmode=verify-full&sslrootcert=/ca"
    assert connect.display(url) == "postgresql://alice@db.example:6543/team?sslmode=verify-full"
    assert "hunter2" not in connect.display("host=db user=alice password=hunter2 dbname=t")
    assert connect.display("postgresql:///team?host=/run/pg") == ("postgresql:///team?host=/run/pg")
    with pytest.raises(TeamError, match="must start with postgresql://"):
        connect.parse("https://db.example/team")
    with pytest.raises(TeamError, match="port"):
        connect.parse("postgresql://db.example:http/team")


def test_values_sent_as_times_and_keys() -> None:
    assert hour_of("2025-10-01T10") is not None and hour_of("unknown") is None
    assert hour_of("2025-13-01T10") is None  # a line's bad time is no hour, never an error
    assert moment("2025-10-01T10:00:00.000Z") is not None and moment("yesterday") is None
    assert moment("2025-10-01T10:00:00") == moment("2025-10-01T10:00:00+00:00")
    assert len(key_digest("msg_1:req_1")) == 16 and key_digest("a") != key_digest("b")


@settings(max_examples=500, deadline=None)
@given(
    glob=st.text(alphabet="abc*?[]^/.\\-", min_size=0, max_size=8),
    path=st.text(alphabet="abc/.\\^[]-", min_size=0, max_size=8),
)
@example(glob="[---]", path="-")  # (a `--` in a Python class: "possible set difference")
@example(glob="[\\-.]", path="\\")  # a reversed range: its first character still matches
@example(glob="[^c-a]", path="b")
@example(glob="[a-c-e]", path="-")
def test_the_file_glob_means_what_sqlite_glob_means(glob: str, path: str) -> None:
    conn = sqlite3.connect(":memory:")
    try:
        expected = conn.execute("SELECT ? GLOB ?", (path, glob)).fetchone()[0] == 1
    finally:
        conn.close()
    try:
        pattern = re.compile(glob_regex(glob), re.DOTALL)
    except re.error:
        pytest.fail(f"{glob!r} gave an invalid pattern {glob_regex(glob)!r}")
    assert bool(pattern.search(path)) == expected, (glob, path, glob_regex(glob))
