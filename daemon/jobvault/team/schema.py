"""The team database's schema: named migrations, each in its own transaction.

Everything lives in the `jobvault` schema of a database the team lead creates. A migration is
a function `mNNN_name(conn)`; `migrate` applies those not yet recorded in
`jobvault._migrations`, each with its record in the same transaction and under an advisory
lock, so two machines upgrading at once apply each migration exactly once. Never edit a
released migration: add one. `jobvault team init URL` runs them with the owner's rights; the
role machines push with needs only the rights docs/team.md grants (no DDL), and `check`
refuses to push into a schema that is older or newer than this jobvault's.

Duplicates across machines are settled by the views (`duplicate_usage`, `hourly_usage`), so
the reports, Grafana and any SQL client count a message once by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobvault.errors import TeamSchemaError

if TYPE_CHECKING:
    import psycopg

SCHEMA = "jobvault"
# Advisory lock keys ("jobvault" in ASCII, + 1): migrations; settling shared messages.
MIGRATE_LOCK = 0x6A6F627661756C74
SHARED_LOCK = MIGRATE_LOCK + 1

PgMigration = Callable[["psycopg.Connection[Any]"], None]


def m001_initial(conn: psycopg.Connection[Any]) -> None:
    """Create the machines, job records and their children, the rollup and the views."""
    conn.execute(
        """
        -- One row per machine that pushed: what it last pushed and with which options.
        CREATE TABLE jobvault.machines (
            machine_id     text PRIMARY KEY,
            name           text,
            client_version text,
            includes       text[]      NOT NULL DEFAULT '{}',
            acked_seq      bigint      NOT NULL DEFAULT 0,
            acked_chunk    bigint      NOT NULL DEFAULT 0,
            full_since     timestamptz,
            first_push_at  timestamptz NOT NULL DEFAULT now(),
            last_push_at   timestamptz
        );

        -- The job records of every machine, keyed by (machine_id, job_id). Text a machine did
        -- not opt in to sending (prompt, summary, title, cwd, source_path, git_branch) is NULL.
        CREATE TABLE jobvault.jobs (
            machine_id            text    NOT NULL
                                  REFERENCES jobvault.machines ON DELETE CASCADE,
            job_id                text    NOT NULL,
            source                text    NOT NULL,
            session_id            text    NOT NULL,
            project               text,
            cwd                   text,
            git_branch            text,
            version               text,
            model                 text,
            models                text[]  NOT NULL DEFAULT '{}',
            status                text    NOT NULL,
            started_at            timestamptz,
            ended_at              timestamptz,
            duration_ms           bigint,
            prompt                text,
            summary               text,
            title                 text,
            input_tokens          bigint  NOT NULL DEFAULT 0,
            output_tokens         bigint  NOT NULL DEFAULT 0,
            cache_creation_tokens bigint  NOT NULL DEFAULT 0,
            cache_read_tokens     bigint  NOT NULL DEFAULT 0,
            reasoning_tokens      bigint  NOT NULL DEFAULT 0,
            cost_usd              double precision NOT NULL DEFAULT 0,
            pricing_version       text,
            tool_call_count       bigint  NOT NULL DEFAULT 0,
            failed_tool_calls     bigint  NOT NULL DEFAULT 0,
            primary_tool          text,
            message_count         bigint  NOT NULL DEFAULT 0,
            user_message_count    bigint  NOT NULL DEFAULT 0,
            subagent_count        bigint  NOT NULL DEFAULT 0,
            context_window        bigint,
            context_used_pct      double precision,
            source_path           text,
            record                jsonb   NOT NULL,
            finalized_at          timestamptz,
            updated_at            timestamptz,
            local_seq             bigint  NOT NULL,
            digest                bytea,
            pushed_at             timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (machine_id, job_id)
        );
        CREATE INDEX jobs_job ON jobvault.jobs (job_id);
        CREATE INDEX jobs_project ON jobvault.jobs (project);
        CREATE INDEX jobs_order_started
            ON jobvault.jobs ((COALESCE(started_at, '-infinity')), job_id, machine_id);
        CREATE INDEX jobs_order_ended
            ON jobvault.jobs ((COALESCE(ended_at, '-infinity')), job_id, machine_id);
        CREATE INDEX jobs_order_cost ON jobvault.jobs (cost_usd, job_id, machine_id);
        CREATE INDEX jobs_order_duration
            ON jobvault.jobs ((COALESCE(duration_ms, 0)), job_id, machine_id);

        -- Tokens and cost per job, UTC hour and model (hour NULL: messages without a time).
        CREATE TABLE jobvault.job_usage (
            machine_id            text   NOT NULL,
            job_id                text   NOT NULL,
            hour                  timestamptz,
            model                 text   NOT NULL,
            messages              bigint NOT NULL,
            input_tokens          bigint NOT NULL,
            output_tokens         bigint NOT NULL,
            cache_creation_tokens bigint NOT NULL,
            cache_read_tokens     bigint NOT NULL,
            reasoning_tokens      bigint NOT NULL,
            cost_usd              double precision NOT NULL,
            first_at              text,
            last_at               text,
            FOREIGN KEY (machine_id, job_id) REFERENCES jobvault.jobs ON DELETE CASCADE
        );
        CREATE INDEX job_usage_job ON jobvault.job_usage (machine_id, job_id);
        CREATE INDEX job_usage_hour ON jobvault.job_usage (hour);

        -- Tool calls: names, failures and times; previews only when opted in.
        CREATE TABLE jobvault.tool_calls (
            machine_id     text    NOT NULL,
            job_id         text    NOT NULL,
            seq            bigint  NOT NULL,
            tool_use_id    text,
            name           text    NOT NULL,
            agent_id       text,
            is_error       boolean NOT NULL,
            called_at      timestamptz,
            input_preview  text,
            output_preview text,
            PRIMARY KEY (machine_id, job_id, seq),
            FOREIGN KEY (machine_id, job_id) REFERENCES jobvault.jobs ON DELETE CASCADE
        );
        CREATE INDEX tool_calls_name ON jobvault.tool_calls (name);

        CREATE TABLE jobvault.subagents (
            machine_id            text   NOT NULL,
            job_id                text   NOT NULL,
            agent_id              text   NOT NULL,
            agent_type            text,
            description           text,
            layout                text   NOT NULL,
            started_at            timestamptz,
            ended_at              timestamptz,
            message_count         bigint NOT NULL,
            tool_call_count       bigint NOT NULL,
            input_tokens          bigint NOT NULL,
            output_tokens         bigint NOT NULL,
            cache_creation_tokens bigint NOT NULL,
            cache_read_tokens     bigint NOT NULL,
            cost_usd              double precision NOT NULL,
            PRIMARY KEY (machine_id, job_id, agent_id),
            FOREIGN KEY (machine_id, job_id) REFERENCES jobvault.jobs ON DELETE CASCADE
        );

        -- Files modified: one row per (path, tool) with file_paths opted in; otherwise one row
        -- per tool with path NULL and `files` the number of distinct paths.
        CREATE TABLE jobvault.files_modified (
            machine_id text   NOT NULL,
            job_id     text   NOT NULL,
            tool       text   NOT NULL,
            path       text,
            files      bigint NOT NULL,
            count      bigint NOT NULL,
            FOREIGN KEY (machine_id, job_id) REFERENCES jobvault.jobs ON DELETE CASCADE
        );
        CREATE INDEX files_modified_job ON jobvault.files_modified (machine_id, job_id);
        CREATE INDEX files_modified_path ON jobvault.files_modified (path);

        -- Every message a job counts (Claude Code), keyed by a 16-byte digest of its local key
        -- (message id and request id): what settles a message present on several machines.
        CREATE TABLE jobvault.usage_keys (
            machine_id            text    NOT NULL,
            job_id                text    NOT NULL,
            source                text    NOT NULL,
            key                   bytea   NOT NULL,
            sidechain             boolean NOT NULL,
            total                 bigint  NOT NULL,
            hour                  timestamptz,
            model                 text    NOT NULL,
            input_tokens          bigint  NOT NULL,
            output_tokens         bigint  NOT NULL,
            cache_creation_tokens bigint  NOT NULL,
            cache_read_tokens     bigint  NOT NULL,
            cost_usd              double precision NOT NULL,
            PRIMARY KEY (machine_id, job_id, key),
            FOREIGN KEY (machine_id, job_id) REFERENCES jobvault.jobs ON DELETE CASCADE
        );
        CREATE INDEX usage_keys_key ON jobvault.usage_keys (key);

        -- Messages (keys) and Codex rollouts (job ids) seen on more than one machine: the only
        -- ones the views must settle. An entry may outlive its second copy (harmless).
        CREATE TABLE jobvault.shared_keys (key bytea PRIMARY KEY);
        CREATE TABLE jobvault.shared_jobs (job_id text PRIMARY KEY);

        -- Every machine's usage per UTC hour, source and model, kept by each push in the
        -- same transaction as the rows it adds or replaces (before settling duplicates).
        CREATE TABLE jobvault.usage_hourly (
            hour                  timestamptz NOT NULL,
            source                text   NOT NULL,
            model                 text   NOT NULL,
            messages              bigint NOT NULL DEFAULT 0,
            input_tokens          bigint NOT NULL DEFAULT 0,
            output_tokens         bigint NOT NULL DEFAULT 0,
            cache_creation_tokens bigint NOT NULL DEFAULT 0,
            cache_read_tokens     bigint NOT NULL DEFAULT 0,
            reasoning_tokens      bigint NOT NULL DEFAULT 0,
            cost_usd              double precision NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, source, model)
        );

        -- The raw archive, only from machines that opted in (`include = ["archive"]`).
        CREATE TABLE jobvault.archive_files (
            machine_id text   NOT NULL REFERENCES jobvault.machines ON DELETE CASCADE,
            file_id    bigint NOT NULL,
            source     text   NOT NULL,
            job_key    text,
            role       text   NOT NULL,
            agent_id   text,
            rel_path   text   NOT NULL,
            path       text,
            generation bigint NOT NULL,
            state      text   NOT NULL,
            size       bigint NOT NULL,
            PRIMARY KEY (machine_id, file_id)
        );
        CREATE TABLE jobvault.archive_chunks (
            machine_id text   NOT NULL,
            file_id    bigint NOT NULL,
            "offset"   bigint NOT NULL,
            length     bigint NOT NULL,
            line_count bigint NOT NULL,
            codec      text   NOT NULL,
            data       bytea  NOT NULL,
            PRIMARY KEY (machine_id, file_id, "offset"),
            FOREIGN KEY (machine_id, file_id) REFERENCES jobvault.archive_files
                ON DELETE CASCADE
        );

        -- What team totals subtract: each copy of a shared message but the one that counts
        -- (non-sidechain first, then the largest total, then the machine whose id sorts
        -- first), and every copy of a shared Codex rollout but the largest.
        CREATE VIEW jobvault.duplicate_usage AS
        WITH copies AS (
            SELECT k.*, first_value(k.machine_id) OVER (
                PARTITION BY k.key ORDER BY k.sidechain, k.total DESC, k.machine_id
            ) AS counted_on
            FROM jobvault.usage_keys k JOIN jobvault.shared_keys s ON s.key = k.key
        ), rollouts AS (
            SELECT j.machine_id, j.job_id, j.source, first_value(j.machine_id) OVER (
                PARTITION BY j.job_id ORDER BY j.input_tokens + j.output_tokens
                    + j.cache_creation_tokens + j.cache_read_tokens DESC, j.machine_id
            ) AS counted_on
            FROM jobvault.jobs j JOIN jobvault.shared_jobs s ON s.job_id = j.job_id
        )
        SELECT c.machine_id, c.job_id, c.source, c.hour, c.model, 1::bigint AS messages,
               c.input_tokens, c.output_tokens, c.cache_creation_tokens, c.cache_read_tokens,
               0::bigint AS reasoning_tokens, c.cost_usd, c.counted_on
        FROM copies c WHERE c.machine_id <> c.counted_on
        UNION ALL
        SELECT u.machine_id, u.job_id, r.source, u.hour, u.model, u.messages, u.input_tokens,
               u.output_tokens, u.cache_creation_tokens, u.cache_read_tokens,
               u.reasoning_tokens, u.cost_usd, r.counted_on
        FROM rollouts r JOIN jobvault.job_usage u USING (machine_id, job_id)
        WHERE r.machine_id <> r.counted_on;

        -- Team usage per UTC hour, source and model, each message counted once.
        CREATE VIEW jobvault.hourly_usage AS
        SELECT hour, source, model, SUM(messages)::bigint AS messages,
               SUM(input_tokens)::bigint AS input_tokens,
               SUM(output_tokens)::bigint AS output_tokens,
               SUM(cache_creation_tokens)::bigint AS cache_creation_tokens,
               SUM(cache_read_tokens)::bigint AS cache_read_tokens,
               SUM(reasoning_tokens)::bigint AS reasoning_tokens,
               SUM(cost_usd) AS cost_usd
        FROM (
            SELECT hour, source, model, messages, input_tokens, output_tokens,
                   cache_creation_tokens, cache_read_tokens, reasoning_tokens, cost_usd
            FROM jobvault.usage_hourly
            UNION ALL
            SELECT d.hour, d.source, d.model, -d.messages, -d.input_tokens, -d.output_tokens,
                   -d.cache_creation_tokens, -d.cache_read_tokens, -d.reasoning_tokens,
                   -d.cost_usd
            FROM jobvault.duplicate_usage d
            WHERE d.hour IS NOT NULL
        ) t
        GROUP BY hour, source, model;
        """
    )


MIGRATIONS: list[PgMigration] = [
    m001_initial,
]


def _lock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))


def applied(conn: psycopg.Connection[Any]) -> list[str]:
    """Names of the migrations recorded in the team database (empty: no schema yet)."""
    row = conn.execute("SELECT to_regclass('jobvault._migrations')").fetchone()
    if row is None or row[0] is None:
        return []
    return [r[0] for r in conn.execute("SELECT name FROM jobvault._migrations ORDER BY name")]


def migrate(
    conn: psycopg.Connection[Any], migrations: list[PgMigration] | None = None
) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction; return them."""
    todo = migrations if migrations is not None else MIGRATIONS
    have = set(applied(conn))
    if all(m.__name__ in have for m in todo):
        return []  # up to date: no DDL, so a role without those rights may ask too
    with conn.transaction():
        _lock(conn)
        conn.execute("CREATE SCHEMA IF NOT EXISTS jobvault")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS jobvault._migrations ("
            "name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
    ran: list[str] = []
    for migration in todo:
        name = migration.__name__
        with conn.transaction():
            _lock(conn)  # re-checked under the lock: another machine may have just applied it
            done = conn.execute(
                "SELECT 1 FROM jobvault._migrations WHERE name = %s", (name,)
            ).fetchone()
            if done:
                continue
            migration(conn)
            conn.execute("INSERT INTO jobvault._migrations (name) VALUES (%s)", (name,))
        ran.append(name)
    return ran


def check(conn: psycopg.Connection[Any]) -> None:
    """Refuse a team database whose schema is missing, older or newer than this jobvault's."""
    have = applied(conn)
    known = [m.__name__ for m in MIGRATIONS]
    newer = [name for name in have if name not in known]
    if newer:
        raise TeamSchemaError(
            f"the team database has a newer schema ({newer[-1]}) than this jobvault: "
            "upgrade jobvault on this machine"
        )
    missing = [name for name in known if name not in have]
    if missing:
        what = "has no jobvault schema" if not have else f"lacks migration {missing[0]}"
        raise TeamSchemaError(
            f"the team database {what}: its owner runs `jobvault team init URL` (see docs/team.md)"
        )
