"""Named migrations, applied in order, each in its own transaction.

A migration is a function `mNNN_name(conn)`; its name is recorded in `_migrations` inside the
same transaction as its changes, so a crash leaves it either fully applied or not at all. A
migration that cannot run in a transaction (VACUUM, say) sets `transactional = False`. Never
edit a released migration: add a new one. An upgrade never drops archived data.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from jobvault.store.keys import key_hash

Migration = Callable[[sqlite3.Connection], None]


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute several statements inside the current transaction.

    `executescript` would COMMIT first, breaking the one-transaction-per-migration rule.
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement.strip()[:80]}")


def m001_initial(conn: sqlite3.Connection) -> None:
    """Create the archive, file tracking, job records and their child tables."""
    run_script(
        conn,
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;

        -- One row per generation of a tracked source file. A path that is replaced (new inode
        -- or different first bytes) or truncated gets a new row; the old one is kept with
        -- state 'replaced' / 'truncated' so its archived bytes stay restorable.
        CREATE TABLE files (
            id            INTEGER PRIMARY KEY,
            source        TEXT    NOT NULL,
            path          TEXT    NOT NULL,
            root          TEXT    NOT NULL,
            rel_path      TEXT    NOT NULL,
            generation    INTEGER NOT NULL DEFAULT 0,
            dev           INTEGER NOT NULL,
            ino           INTEGER NOT NULL,
            fp_len        INTEGER NOT NULL DEFAULT 0,
            fp_hash       BLOB,
            offset        INTEGER NOT NULL DEFAULT 0,
            size          INTEGER NOT NULL DEFAULT 0,
            mtime_ns      INTEGER NOT NULL DEFAULT 0,
            in_long_line  INTEGER NOT NULL DEFAULT 0,
            partial_tail  INTEGER NOT NULL DEFAULT 0,
            state         TEXT    NOT NULL DEFAULT 'active'
                          CHECK (state IN ('active', 'deleted', 'replaced', 'truncated')),
            job_key       TEXT,
            role          TEXT    NOT NULL DEFAULT 'main' CHECK (role IN ('main', 'subagent')),
            agent_id      TEXT,
            line_count    INTEGER NOT NULL DEFAULT 0,
            bad_lines     INTEGER NOT NULL DEFAULT 0,
            lost_bytes    INTEGER NOT NULL DEFAULT 0,
            first_seen_at TEXT    NOT NULL,
            updated_at    TEXT    NOT NULL
        ) STRICT;
        CREATE INDEX files_path ON files (path);
        CREATE INDEX files_job ON files (job_key);
        CREATE INDEX files_inode ON files (dev, ino);

        -- The raw archive: every byte of every file, in order, compressed. Concatenating a
        -- file's chunks by offset restores it byte for byte.
        CREATE TABLE chunks (
            id         INTEGER PRIMARY KEY,
            file_id    INTEGER NOT NULL REFERENCES files (id),
            offset     INTEGER NOT NULL,
            length     INTEGER NOT NULL,
            line_count INTEGER NOT NULL,
            codec      TEXT    NOT NULL CHECK (codec IN ('zstd', 'raw')),
            data       BLOB    NOT NULL,
            UNIQUE (file_id, offset)
        ) STRICT;

        CREATE TABLE bad_lines (
            id          INTEGER PRIMARY KEY,
            file_id     INTEGER NOT NULL REFERENCES files (id),
            offset      INTEGER NOT NULL,
            length      INTEGER NOT NULL,
            reason      TEXT    NOT NULL,
            detected_at TEXT    NOT NULL,
            UNIQUE (file_id, offset)
        ) STRICT;

        CREATE TABLE jobs (
            id                    TEXT PRIMARY KEY,
            source                TEXT    NOT NULL,
            session_id            TEXT    NOT NULL,
            project               TEXT,
            cwd                   TEXT,
            git_branch            TEXT,
            version               TEXT,
            model                 TEXT,
            models                TEXT    NOT NULL DEFAULT '[]',
            status                TEXT    NOT NULL
                                  CHECK (status IN ('active', 'completed', 'interrupted', 'error')),
            started_at            TEXT,
            ended_at              TEXT,
            duration_ms           INTEGER,
            prompt                TEXT,
            summary               TEXT,
            title                 TEXT,
            input_tokens          INTEGER NOT NULL DEFAULT 0,
            output_tokens         INTEGER NOT NULL DEFAULT 0,
            cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens      INTEGER NOT NULL DEFAULT 0,
            cost_usd              REAL    NOT NULL DEFAULT 0,
            pricing_version       TEXT,
            tool_call_count       INTEGER NOT NULL DEFAULT 0,
            failed_tool_calls     INTEGER NOT NULL DEFAULT 0,
            primary_tool          TEXT,
            message_count         INTEGER NOT NULL DEFAULT 0,
            user_message_count    INTEGER NOT NULL DEFAULT 0,
            subagent_count        INTEGER NOT NULL DEFAULT 0,
            context_window        INTEGER,
            context_used_pct      REAL,
            source_path           TEXT,
            machine_id            TEXT,
            record                TEXT    NOT NULL,
            finalized_at          TEXT,
            updated_at            TEXT    NOT NULL
        ) STRICT;
        CREATE INDEX jobs_started ON jobs (started_at);
        CREATE INDEX jobs_session ON jobs (session_id);
        CREATE INDEX jobs_project ON jobs (project);

        CREATE TABLE tool_calls (
            job_id         TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            seq            INTEGER NOT NULL,
            tool_use_id    TEXT,
            name           TEXT    NOT NULL,
            agent_id       TEXT,
            is_error       INTEGER NOT NULL DEFAULT 0,
            timestamp      TEXT,
            input_preview  TEXT,
            output_preview TEXT,
            PRIMARY KEY (job_id, seq)
        ) STRICT;
        CREATE INDEX tool_calls_name ON tool_calls (name);

        CREATE TABLE subagents (
            job_id          TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            agent_id        TEXT    NOT NULL,
            agent_type      TEXT,
            description     TEXT,
            layout          TEXT    NOT NULL,
            started_at      TEXT,
            ended_at        TEXT,
            message_count   INTEGER NOT NULL DEFAULT 0,
            tool_call_count INTEGER NOT NULL DEFAULT 0,
            input_tokens    INTEGER NOT NULL DEFAULT 0,
            output_tokens   INTEGER NOT NULL DEFAULT 0,
            cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
            cost_usd        REAL    NOT NULL DEFAULT 0,
            PRIMARY KEY (job_id, agent_id)
        ) STRICT;

        CREATE TABLE files_modified (
            job_id TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            path   TEXT    NOT NULL,
            tool   TEXT    NOT NULL,
            count  INTEGER NOT NULL,
            PRIMARY KEY (job_id, path, tool)
        ) STRICT;
        CREATE INDEX files_modified_path ON files_modified (path);

        -- Usage per job, UTC hour and model: the exact source of the daily metrics and of
        -- time-zone aware reports (any whole-hour offset regroups these rows).
        CREATE TABLE job_usage (
            job_id                TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            hour                  TEXT    NOT NULL,
            model                 TEXT    NOT NULL,
            messages              INTEGER NOT NULL,
            input_tokens          INTEGER NOT NULL,
            output_tokens         INTEGER NOT NULL,
            cache_creation_tokens INTEGER NOT NULL,
            cache_read_tokens     INTEGER NOT NULL,
            reasoning_tokens      INTEGER NOT NULL,
            cost_usd              REAL    NOT NULL,
            PRIMARY KEY (job_id, hour, model)
        ) STRICT;

        -- The best copy of each deduplicated message per job. The same message can appear in
        -- several jobs (resumed or forked sessions); only the job holding the best copy
        -- counts it (non-sidechain first, then the largest total, then path and offset).
        CREATE TABLE usage_keys (
            key        TEXT    NOT NULL,
            session_id TEXT    NOT NULL,
            sidechain  INTEGER NOT NULL,
            total      INTEGER NOT NULL,
            path       TEXT    NOT NULL,
            offset     INTEGER NOT NULL,
            PRIMARY KEY (key, session_id)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX usage_keys_session ON usage_keys (session_id);

        -- Kept up to date incrementally whenever a job's usage rows change.
        CREATE TABLE daily_metrics (
            day                   TEXT    NOT NULL,
            source                TEXT    NOT NULL,
            model                 TEXT    NOT NULL,
            messages              INTEGER NOT NULL DEFAULT 0,
            input_tokens          INTEGER NOT NULL DEFAULT 0,
            output_tokens         INTEGER NOT NULL DEFAULT 0,
            cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens      INTEGER NOT NULL DEFAULT 0,
            cost_usd              REAL    NOT NULL DEFAULT 0,
            PRIMARY KEY (day, source, model)
        ) STRICT;
        """,
    )
    now = datetime.now(UTC).isoformat(timespec="seconds")
    conn.execute("INSERT INTO meta (key, value) VALUES ('machine_id', ?)", (uuid.uuid4().hex,))
    conn.execute("INSERT INTO meta (key, value) VALUES ('created_at', ?)", (now,))


def m002_analytics(conn: sqlite3.Connection) -> None:
    """Add what usage reports, billing blocks and full-text search need.

    * `job_usage.first_at` / `last_at`: the first and last counted message of each job, hour
      and model. Billing blocks (ccusage's 5-hour windows) start at the hour of a block's
      first message, but their end, burn rate, gaps and "active" state are measured from the
      exact first and last message times; an hour's extremes are all they need, at a
      fraction of the size of a row per message. Rows written before this migration keep
      NULL (the hour's bounds are used) until `jobvault rebuild`.
    * `search_docs` + `search_fts`: one FTS5 document per job (title, prompt, summary, and a
      bounded sample of the messages' text). `search_docs` gives each job a stable integer
      rowid (jobs.rowid is not stable across VACUUM); a trigger drops a job's document
      whenever its row is deleted, which every rewrite of a record does first, so the index
      can never hold a stale job. Existing jobs are indexed now from their prompt, summary
      and title; their message text is indexed by the next `jobvault rebuild`.
    """
    run_script(
        conn,
        """
        ALTER TABLE job_usage ADD COLUMN first_at TEXT;
        ALTER TABLE job_usage ADD COLUMN last_at TEXT;
        CREATE INDEX job_usage_hour ON job_usage (hour);

        CREATE TABLE search_docs (
            id     INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL UNIQUE
        ) STRICT;

        CREATE VIRTUAL TABLE search_fts USING fts5 (
            title, prompt, summary, body,
            tokenize = 'unicode61 remove_diacritics 2',
            prefix = '2 3'
        );

        CREATE TRIGGER jobs_search_delete AFTER DELETE ON jobs BEGIN
            DELETE FROM search_fts
                WHERE rowid IN (SELECT id FROM search_docs WHERE job_id = old.id);
            DELETE FROM search_docs WHERE job_id = old.id;
        END;

        INSERT INTO search_docs (job_id) SELECT id FROM jobs ORDER BY id;
        INSERT INTO search_fts (rowid, title, prompt, summary, body)
            SELECT d.id, COALESCE(j.title, ''), COALESCE(j.prompt, ''),
                   COALESCE(j.summary, ''), ''
            FROM search_docs d JOIN jobs j ON j.id = d.job_id;
        """,
    )


def m003_list_order_indexes(conn: sqlite3.Connection) -> None:
    """Index the orders `jobs.list` pages by, so a page never sorts the whole table."""
    run_script(
        conn,
        """
        CREATE INDEX jobs_order_started ON jobs (COALESCE(started_at, ''), id);
        CREATE INDEX jobs_order_ended ON jobs (COALESCE(ended_at, ''), id);
        CREATE INDEX jobs_order_cost ON jobs (cost_usd, id);
        CREATE INDEX jobs_order_duration ON jobs (COALESCE(duration_ms, 0), id);
        """,
    )


def m004_message_usage(conn: sqlite3.Connection) -> None:
    """Keep what each message copy counts, and index file rows by their path under a root.

    * `usage_keys` gains the copy's time, model, tokens by kind and cost, so the table is the
      per-message usage of every job (a team vault counts a message present on several
      machines once with it, by the same best-copy rule). Existing rows keep empty values
      until the next `jobvault rebuild` or the job's next write.
    * `files (root, rel_path, generation)`: the next generation of a path was found by a
      scan of `files` for every new file, which made an import quadratic in its files.
    """
    run_script(
        conn,
        """
        ALTER TABLE usage_keys ADD COLUMN at TEXT NOT NULL DEFAULT '';
        ALTER TABLE usage_keys ADD COLUMN model TEXT NOT NULL DEFAULT '';
        ALTER TABLE usage_keys ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE usage_keys ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE usage_keys ADD COLUMN cache_creation_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE usage_keys ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE usage_keys ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
        CREATE INDEX files_root_rel ON files (root, rel_path, generation);
        """,
    )


def m009_ingest_v2(conn: sqlite3.Connection) -> None:
    """What the composed ingest pipeline records beyond offsets.

    * `files.codec` / `files.disk_size`: a `.jsonl.zst` rollout (Codex compresses idle ones)
      is read by streaming decompression; its offsets count decompressed bytes, so a plain
      rollout and its compressed successor are one file, archived once.
    * `faults`: a file or a session that raised an unexpected error is quarantined: counted
      in `status`, logged once, skipped until it changes (a file) or until `jobvault rebuild`
      (a session), so one bad input can never stop everything else, also across restarts.
    """
    run_script(
        conn,
        """
        ALTER TABLE files ADD COLUMN codec TEXT NOT NULL DEFAULT 'plain'
            CHECK (codec IN ('plain', 'zstd'));
        ALTER TABLE files ADD COLUMN disk_size INTEGER NOT NULL DEFAULT 0;
        UPDATE files SET disk_size = size;
        CREATE TABLE faults (
            kind     TEXT    NOT NULL CHECK (kind IN ('file', 'session')),
            key      TEXT    NOT NULL,
            reason   TEXT    NOT NULL,
            detail   TEXT,
            count    INTEGER NOT NULL DEFAULT 1,
            first_at TEXT    NOT NULL,
            last_at  TEXT    NOT NULL,
            PRIMARY KEY (kind, key)
        ) STRICT;
        """,
    )


def m010_search_without_prefix_indexes(conn: sqlite3.Connection) -> None:
    """Rebuild the full-text index without its 2- and 3-character prefix indexes.

    They tripled the index entries written for every document (half of the cost of writing
    a record at import), and prefix queries (`deploy*`) are answered from the main index as
    well: its terms are sorted, so a prefix is a range scan. The documents are copied, so
    nothing needs a rebuild.
    """
    run_script(
        conn,
        """
        CREATE VIRTUAL TABLE search_fts_new USING fts5 (
            title, prompt, summary, body,
            tokenize = 'unicode61 remove_diacritics 2'
        );
        INSERT INTO search_fts_new (rowid, title, prompt, summary, body)
            SELECT rowid, title, prompt, summary, body FROM search_fts;
        DROP TRIGGER jobs_search_delete;
        DROP TABLE search_fts;
        ALTER TABLE search_fts_new RENAME TO search_fts;
        CREATE TRIGGER jobs_search_delete AFTER DELETE ON jobs BEGIN
            DELETE FROM search_fts
                WHERE rowid IN (SELECT id FROM search_docs WHERE job_id = old.id);
            DELETE FROM search_docs WHERE job_id = old.id;
        END;
        """,
    )


def m006_dashboard(conn: sqlite3.Connection) -> None:
    """Keep the rate-limit usage that Claude Code's statusLine reports, and index tool calls
    by time, for the dashboard.

    `jobvault statusline` sends each reading through the daemon (the one writer); a reading is
    stored when it differs from the window's last one, or that one is 15 minutes old, so a
    statusline refreshed several times a second adds a few rows an hour, not thousands.
    """
    run_script(
        conn,
        """
        CREATE TABLE rate_limit_samples (
            id           INTEGER PRIMARY KEY,
            at           TEXT    NOT NULL,
            source       TEXT    NOT NULL DEFAULT 'claude',
            session_id   TEXT,
            window       TEXT    NOT NULL CHECK (window IN ('five_hour', 'seven_day')),
            used_percent REAL    NOT NULL,
            resets_at    TEXT
        ) STRICT;
        CREATE INDEX rate_limit_samples_window ON rate_limit_samples (source, window, at);

        -- The dashboard's period (and `stats tools --since`) select tool calls by time; without
        -- this every call ever made was read (440 ms for 30 days of 100k jobs, now 40 ms).
        CREATE INDEX tool_calls_time ON tool_calls (timestamp);
        """,
    )


def m007_sync(conn: sqlite3.Connection) -> None:
    """Number every change of a job record, so `jobvault sync` pushes only what changed.

    `sync_changes` holds one row per job ever written: the job id and the change number of
    its latest write or deletion (AUTOINCREMENT: numbers only grow and are never reused, and
    there is one writer, so they grow in commit order). Triggers maintain it inside the
    writer's own transactions (a record is rewritten as DELETE + INSERT of its row and its
    children), so the sync process only ever reads this database: it pushes the jobs whose
    number is above the last one the team database acknowledged, and a number whose job row
    is gone is a deletion. Every existing job gets a number now.
    """
    run_script(
        conn,
        """
        CREATE TABLE sync_changes (
            seq    INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT    NOT NULL UNIQUE
        ) STRICT;

        CREATE TRIGGER sync_job_inserted AFTER INSERT ON jobs BEGIN
            DELETE FROM sync_changes WHERE job_id = new.id;
            INSERT INTO sync_changes (job_id) VALUES (new.id);
        END;
        CREATE TRIGGER sync_job_updated AFTER UPDATE ON jobs BEGIN
            DELETE FROM sync_changes WHERE job_id IN (old.id, new.id);
            INSERT INTO sync_changes (job_id) VALUES (new.id);
            INSERT INTO sync_changes (job_id) SELECT old.id WHERE old.id != new.id;
        END;
        CREATE TRIGGER sync_job_deleted AFTER DELETE ON jobs BEGIN
            DELETE FROM sync_changes WHERE job_id = old.id;
            INSERT INTO sync_changes (job_id) VALUES (old.id);
        END;

        INSERT INTO sync_changes (job_id) SELECT id FROM jobs ORDER BY id;
        """,
    )


def m008_fidelity(conn: sqlite3.Connection) -> None:
    """Keep each job's rate-limit readings, and remember sessions that are not jobs.

    * `job_rate_limits`: the plan's rate-limit windows as the agent reported them while the
      job ran (Codex `token_count.rate_limits`), one row per reading that changed, so a
      report can show limit history. Written with the job's other children.
    * `empty_sessions`: finalized sessions whose files hold no user or assistant message
      (summary-only, attachment-only or snapshot-only files). They are archived and
      counted by `status` but are not jobs; this row tells the start-up recovery that
      their missing job row is not an unfinished record.
    """
    run_script(
        conn,
        """
        CREATE TABLE job_rate_limits (
            job_id         TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            at             TEXT    NOT NULL,
            window         TEXT    NOT NULL CHECK (window IN ('primary', 'secondary')),
            used_percent   REAL,
            window_minutes INTEGER,
            resets_at      TEXT,
            PRIMARY KEY (job_id, at, window)
        ) STRICT, WITHOUT ROWID;

        CREATE TABLE empty_sessions (
            source       TEXT NOT NULL,
            session_id   TEXT NOT NULL,
            finalized_at TEXT NOT NULL,
            PRIMARY KEY (source, session_id)
        ) STRICT, WITHOUT ROWID;
        """,
    )


def m005_read_side(conn: sqlite3.Connection) -> None:
    """What `status` and the period reports read instead of scanning tables.

    * `status_counters`: one row with the file and archive figures `status` used to scan
      `files` and `chunks` for (31 ms at 10,000 sessions), kept exact by triggers on those
      tables and on `bad_lines` (whose rows are the bad lines) in the transaction of every
      write. Jobs are counted at read time instead: an
      index walk, plus the partial index `jobs_active` for the active ones (a trigger on
      `jobs` would cost each record write a statement journal inside the writer's savepoint,
      about 0.15 ms, 10 % of an import).
    * `usage_hourly`: tokens and cost per UTC hour, source and model, so that period reports
      in any whole-hour time zone read a few thousand rows instead of every job's usage.
      The writer adds a job's rows as it writes them (`Store._add_hourly`, like
      `daily_metrics`); a trigger subtracts them just before the job's row is deleted (the
      foreign-key cascade deletes `job_usage` after the parent is gone, when its source can
      no longer be looked up), whichever code path deletes it; a `job_usage` row deleted or
      changed on its own, its job still there, is handled by that table's triggers. Rows
      whose counts all return to zero are removed, like `daily_metrics`' rows.
    """
    kinds = ("messages", "input_tokens", "output_tokens", "cache_creation_tokens",
             "cache_read_tokens", "reasoning_tokens", "cost_usd")  # fmt: skip
    columns = ", ".join(kinds)
    added = ", ".join(f"{k} = {k} + excluded.{k}" for k in kinds)
    zero = " AND ".join(f"{k} = 0" for k in kinds[:-1])

    def upsert(row: str, source: str, tail: str, sign: str = "") -> str:
        """Add (sign "") or subtract (sign "-") the usage row `row` to its hour's totals."""
        values = ", ".join(f"{sign}{row}.{k}" for k in kinds)
        return (
            f"INSERT INTO usage_hourly (hour, source, model, {columns})\n"
            f"                SELECT {row}.hour, {source}, {row}.model, {values}\n"
            f"                {tail}\n"
            f"                ON CONFLICT (hour, source, model) DO UPDATE SET {added};"
        )

    def prune(row: str) -> str:
        return (
            f"DELETE FROM usage_hourly WHERE hour = {row}.hour AND model = {row}.model\n"
            f"                AND source = (SELECT source FROM jobs WHERE id = {row}.job_id)"
            f" AND {zero};"
        )

    of_job = "FROM jobs j WHERE j.id = {}.job_id"
    run_script(
        conn,
        """
        CREATE TABLE status_counters (
            id             INTEGER PRIMARY KEY CHECK (id = 1),
            files_known    INTEGER NOT NULL,
            files_active   INTEGER NOT NULL,
            lines_archived INTEGER NOT NULL,
            bad_lines      INTEGER NOT NULL,
            lost_bytes     INTEGER NOT NULL,
            chunks         INTEGER NOT NULL,
            bytes_archived INTEGER NOT NULL
        ) STRICT;
        INSERT INTO status_counters SELECT 1,
            (SELECT COUNT(*) FROM files),
            (SELECT COALESCE(SUM(state = 'active'), 0) FROM files),
            (SELECT COALESCE(SUM(line_count), 0) FROM files),
            (SELECT COUNT(*) FROM bad_lines),
            (SELECT COALESCE(SUM(lost_bytes), 0) FROM files),
            (SELECT COUNT(*) FROM chunks),
            (SELECT COALESCE(SUM(length), 0) FROM chunks);

        CREATE TRIGGER counters_files_insert AFTER INSERT ON files BEGIN
            UPDATE status_counters SET files_known = files_known + 1,
                files_active = files_active + (new.state = 'active'),
                lines_archived = lines_archived + new.line_count,
                lost_bytes = lost_bytes + new.lost_bytes;
        END;
        CREATE TRIGGER counters_files_update
        AFTER UPDATE OF state, line_count, lost_bytes ON files BEGIN
            UPDATE status_counters
            SET files_active = files_active + (new.state = 'active') - (old.state = 'active'),
                lines_archived = lines_archived + new.line_count - old.line_count,
                lost_bytes = lost_bytes + new.lost_bytes - old.lost_bytes;
        END;
        CREATE TRIGGER counters_files_delete AFTER DELETE ON files BEGIN
            UPDATE status_counters SET files_known = files_known - 1,
                files_active = files_active - (old.state = 'active'),
                lines_archived = lines_archived - old.line_count,
                lost_bytes = lost_bytes - old.lost_bytes;
        END;
        -- Bad lines are the rows of their table (as `import` and db_status count them): the
        -- files' own counter is not taken back when a reported unterminated tail continues.
        CREATE TRIGGER counters_bad_lines_insert AFTER INSERT ON bad_lines BEGIN
            UPDATE status_counters SET bad_lines = bad_lines + 1;
        END;
        CREATE TRIGGER counters_bad_lines_delete AFTER DELETE ON bad_lines BEGIN
            UPDATE status_counters SET bad_lines = bad_lines - 1;
        END;
        CREATE TRIGGER counters_chunks_insert AFTER INSERT ON chunks BEGIN
            UPDATE status_counters
            SET chunks = chunks + 1, bytes_archived = bytes_archived + new.length;
        END;
        CREATE TRIGGER counters_chunks_update AFTER UPDATE OF length ON chunks BEGIN
            UPDATE status_counters SET bytes_archived = bytes_archived + new.length - old.length;
        END;
        CREATE TRIGGER counters_chunks_delete AFTER DELETE ON chunks BEGIN
            UPDATE status_counters
            SET chunks = chunks - 1, bytes_archived = bytes_archived - old.length;
        END;
        CREATE INDEX jobs_active ON jobs (status) WHERE status = 'active';

        CREATE TABLE usage_hourly (
            hour                  TEXT    NOT NULL,
            source                TEXT    NOT NULL,
            model                 TEXT    NOT NULL,
            messages              INTEGER NOT NULL DEFAULT 0,
            input_tokens          INTEGER NOT NULL DEFAULT 0,
            output_tokens         INTEGER NOT NULL DEFAULT 0,
            cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens      INTEGER NOT NULL DEFAULT 0,
            cost_usd              REAL    NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, source, model)
        ) STRICT, WITHOUT ROWID;
        """,
    )
    sums = ", ".join(f"SUM(u.{k})" for k in kinds)
    conn.execute(
        f"INSERT INTO usage_hourly (hour, source, model, {columns}) "
        f"SELECT u.hour, j.source, u.model, {sums} FROM job_usage u "
        "JOIN jobs j ON j.id = u.job_id GROUP BY 1, 2, 3"
    )
    job_rows = "FROM job_usage u WHERE u.job_id = old.id"
    run_script(
        conn,
        f"""
        CREATE TRIGGER usage_hourly_job_delete BEFORE DELETE ON jobs BEGIN
            {upsert("u", "old.source", job_rows, "-")}
            DELETE FROM usage_hourly WHERE source = old.source AND {zero}
                AND (hour, model) IN (SELECT hour, model FROM job_usage WHERE job_id = old.id);
        END;
        CREATE TRIGGER usage_hourly_delete AFTER DELETE ON job_usage
        WHEN EXISTS (SELECT 1 FROM jobs WHERE id = old.job_id) BEGIN
            {upsert("old", "j.source", of_job.format("old"), "-")}
            {prune("old")}
        END;
        CREATE TRIGGER usage_hourly_update AFTER UPDATE ON job_usage BEGIN
            {upsert("old", "j.source", of_job.format("old"), "-")}
            {upsert("new", "j.source", of_job.format("new"))}
            {prune("old")}
        END;
        """,
    )


def m011_usage_keys_in_arrival_order(conn: sqlite3.Connection) -> None:
    """Store `usage_keys` in arrival order, found by an index of each key's 8-byte digest.

    The table was clustered by (message key, session); message ids are random, so every
    message written took its row to a random page of a table that outgrows the writer's page
    cache at a few thousand sessions, and each commit rewrote about one page a message. A
    session's rows now go in together at the end of the table; only the digest index
    (`store/keys.py`, about 20 bytes an entry) takes random inserts, and (session, key)
    stays unique. The rows are copied, so nothing needs a rebuild.
    """
    conn.create_function("jobvault_key_hash", 1, key_hash, deterministic=True)
    run_script(
        conn,
        """
        CREATE TABLE usage_keys_new (
            id                    INTEGER PRIMARY KEY,
            key                   TEXT    NOT NULL,
            key_hash              INTEGER NOT NULL,
            session_id            TEXT    NOT NULL,
            sidechain             INTEGER NOT NULL,
            total                 INTEGER NOT NULL,
            path                  TEXT    NOT NULL,
            offset                INTEGER NOT NULL,
            at                    TEXT    NOT NULL DEFAULT '',
            model                 TEXT    NOT NULL DEFAULT '',
            input_tokens          INTEGER NOT NULL DEFAULT 0,
            output_tokens         INTEGER NOT NULL DEFAULT 0,
            cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
            cost_usd              REAL    NOT NULL DEFAULT 0
        ) STRICT;
        INSERT INTO usage_keys_new (key, key_hash, session_id, sidechain, total, path, offset,
                                    at, model, input_tokens, output_tokens,
                                    cache_creation_tokens, cache_read_tokens, cost_usd)
            SELECT key, jobvault_key_hash(key), session_id, sidechain, total, path, offset,
                   at, model, input_tokens, output_tokens, cache_creation_tokens,
                   cache_read_tokens, cost_usd
            FROM usage_keys ORDER BY session_id, key;
        DROP TABLE usage_keys;
        ALTER TABLE usage_keys_new RENAME TO usage_keys;
        CREATE UNIQUE INDEX usage_keys_session ON usage_keys (session_id, key);
        CREATE INDEX usage_keys_hash ON usage_keys (key_hash);
        """,
    )


MIGRATIONS: list[Migration] = [
    m001_initial,
    m002_analytics,
    m003_list_order_indexes,
    m004_message_usage,
    m005_read_side,
    m006_dashboard,
    m007_sync,
    m008_fidelity,
    m009_ingest_v2,
    m010_search_without_prefix_indexes,
    m011_usage_keys_in_arrival_order,
]


def applied(conn: sqlite3.Connection) -> list[str]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    return [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(conn: sqlite3.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    done = set(applied(conn))
    ran: list[str] = []
    for migration in migrations if migrations is not None else MIGRATIONS:
        name = migration.__name__
        if name in done:
            continue
        transactional = getattr(migration, "transactional", True)
        if transactional:
            conn.execute("BEGIN IMMEDIATE")
            # Re-check under the write lock: another process may have just applied it.
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                conn.execute("ROLLBACK")
                continue
        try:
            migration(conn)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                (name, datetime.now(UTC).isoformat(timespec="seconds")),
            )
        except BaseException:
            if transactional:
                conn.execute("ROLLBACK")
            raise
        if transactional:
            conn.execute("COMMIT")
        ran.append(name)
    return ran
