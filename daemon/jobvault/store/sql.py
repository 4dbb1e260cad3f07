"""The `sql` method: one read-only SELECT from a power user, bounded in what it may do and cost.

What a query may do is decided by SQLite itself, never by reading the SQL text:

* **Reads only.** The authorizer allows reading tables, SELECT and recursive CTEs, the
  functions in `ALLOWED_FUNCTIONS`, and nothing else: no write, ATTACH, PRAGMA (but the
  `data_version` FTS5 asks for itself), `load_extension`, `fts3_tokenizer` (whose two-argument
  form overwrites a tokenizer pointer and one-argument form leaks an address), nor a function
  that makes large values out of nothing (`zeroblob`, `randomblob`) or changes or reports the
  connection's state. The connection is read-only besides (`mode=ro`, `query_only`).
* **Small values.** The connection's `SQLITE_LIMIT_LENGTH` is `MAX_VALUE_BYTES`: no string or
  blob a query reads or builds can be larger (`SELECT zeroblob(900000000)` is an error at
  once, not 900 MB of memory); other limits bound columns, expression depth and the like.
* **A bounded result.** Rows are encoded one at a time as they are read; past `max_rows`
  rows the result is truncated (`truncated: true`), past `max_bytes` of JSON the query stops
  with `ResultTooLarge`, which says how to page. BLOBs come as `{"blob_bytes": N}`.
* **A bounded time.** A progress handler interrupts the query once its time limit passes.
"""

from __future__ import annotations

import sqlite3
import time

from jobvault.errors import UsageError

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any, Final

MAX_VALUE_BYTES: Final = 1024 * 1024
# The limits a `sql` connection runs under; SQLite's defaults are in parentheses.
CONNECTION_LIMITS: Final = {
    sqlite3.SQLITE_LIMIT_LENGTH: MAX_VALUE_BYTES,  # (1 GB) any string, blob or row
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 1024 * 1024,  # (1 GB) the query text
    sqlite3.SQLITE_LIMIT_COLUMN: 100,  # (2000) columns of a result, GROUP BY terms
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 200,  # (1000)
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 50,  # (500) terms of a UNION
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 32,  # (127)
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,  # (10) no ATTACH, whatever the authorizer says
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 10_000,  # (50000)
    sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER: 1000,  # (32766) bound parameters
    sqlite3.SQLITE_LIMIT_WORKER_THREADS: 0,  # (0) no helper threads for sorting
}

# Every function a query may call: pure computations on the values it reads. Functions not
# listed (zeroblob, randomblob, load_extension, fts3_tokenizer, fts5, optimize, sqlite_log,
# changes, last_insert_rowid, total_changes, the rtree and compile-option helpers, …) are
# refused, and so is any function a later SQLite adds until it is reviewed here.
ALLOWED_FUNCTIONS: Final = frozenset(
    (
        # scalar
        "abs", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "if",
        "ifnull", "iif", "instr", "length", "like", "likelihood", "likely", "lower", "ltrim",
        "max", "min", "nullif", "octet_length", "printf", "quote", "random", "replace", "round",
        "rtrim", "sign", "soundex", "substr", "substring", "trim", "typeof", "unhex", "unicode",
        "unistr", "unistr_quote", "unlikely", "upper", "sqlite_version", "sqlite_source_id",
        # dates
        "date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff",
        "current_date", "current_time", "current_timestamp",
        # math
        "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos",
        "cosh", "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow",
        "power", "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
        # aggregates and windows
        "avg", "count", "group_concat", "string_agg", "sum", "total", "row_number", "rank",
        "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value",
        "last_value", "nth_value",
        # JSON
        "json", "jsonb", "json_array", "jsonb_array", "json_array_length",
        "json_error_position", "json_extract", "jsonb_extract", "json_insert", "jsonb_insert",
        "json_object", "jsonb_object", "json_patch", "jsonb_patch", "json_pretty", "json_quote",
        "json_remove", "jsonb_remove", "json_replace", "jsonb_replace", "json_set", "jsonb_set",
        "json_type", "json_valid", "json_group_array", "jsonb_group_array", "json_group_object",
        "jsonb_group_object", "->", "->>",
        # full-text search
        "match", "bm25", "highlight", "snippet",
    )
)  # fmt: skip
_ALLOWED_ACTIONS: Final = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
)


class SqlRefused(UsageError):
    """The query is not a single read-only SELECT."""


class ResultTooLarge(UsageError):
    """The query's result is larger than a reply may be."""

    def __init__(self, message: str, rows: int, max_bytes: int) -> None:
        super().__init__(message)
        self.rows = rows
        self.max_bytes = max_bytes


def prepare_connection(conn: sqlite3.Connection) -> None:
    """Put a reader connection under the limits `sql` runs with (see `CONNECTION_LIMITS`)."""
    for limit, value in CONNECTION_LIMITS.items():
        conn.setlimit(limit, value)


def _authorizer(refused: list[str]) -> Any:
    def authorize(
        action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None
    ) -> int:
        if action in _ALLOWED_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in ALLOWED_FUNCTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 == "data_version" and arg2 is None:
            return sqlite3.SQLITE_OK  # FTS5 reads it to know whether its index changed
        if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master":
            # Asked while SQLite sets up a table-valued function such as json_each; IGNORE
            # lets it build the table and changes nothing (the connection is read-only).
            return sqlite3.SQLITE_IGNORE
        if action == sqlite3.SQLITE_FUNCTION:
            refused.append(f"the function {arg2}()")
        else:
            refused.append(_ACTION_NAMES.get(action, f"action {action}"))
        return sqlite3.SQLITE_DENY

    return authorize


_ACTION_NAMES = {
    getattr(sqlite3, name): name.removeprefix("SQLITE_").lower().replace("_", " ")
    for name in dir(sqlite3)
    if name.startswith("SQLITE_")
    and not name.startswith(("SQLITE_LIMIT", "SQLITE_DBCONFIG"))
    and isinstance(getattr(sqlite3, name), int)
    and name not in ("SQLITE_OK", "SQLITE_DENY", "SQLITE_IGNORE")
}


def _blob(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"blob_bytes": len(value)}
    raise TypeError


def run_sql(
    conn: sqlite3.Connection,
    query: str,
    params: list[Any] | dict[str, Any] | None = None,
    *,
    max_rows: int = 10_000,
    max_bytes: int = 8 * 1024 * 1024,
    time_limit: float = 5.0,
) -> dict[str, Any]:
    """Run one read-only SELECT under the authorizer, a time limit and a size bound.

    The rows come back as one already encoded JSON array (`orjson.Fragment`), so a large
    result is held once, as bytes, never as millions of Python objects.
    """
    import orjson  # here: the CLI's other commands import this module but never run SQL

    if not sqlite3.complete_statement(query.strip().rstrip(";") + ";"):
        raise SqlRefused("the query is not one complete SQL statement")
    refused: list[str] = []
    deadline = time.monotonic() + time_limit
    conn.set_authorizer(_authorizer(refused))
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    parts: list[bytes] = []
    size = 2
    truncated = False
    try:
        try:
            cur = conn.execute(query, params or ())
            columns = [d[0] for d in cur.description or ()]
            while True:
                row = cur.fetchone()
                if row is None:
                    break
                if len(parts) == max_rows:
                    truncated = True
                    break
                encoded = orjson.dumps(row, default=_blob)
                size += len(encoded) + 1
                if size > max_bytes:
                    raise ResultTooLarge(
                        f"result too large: the first {len(parts) + 1} rows are more than "
                        f"{max_bytes:,} bytes of JSON; page with LIMIT and OFFSET (or "
                        "WHERE rowid > the last one seen), select fewer or shorter columns "
                        "(substr(), length()), or aggregate in SQL",
                        len(parts),
                        max_bytes,
                    )
                parts.append(encoded)
        except sqlite3.ProgrammingError as exc:
            raise SqlRefused(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            if refused:
                raise SqlRefused(
                    f"{refused[0]} is not allowed: `sql` runs one read-only SELECT "
                    "(see docs/protocol.md for what it may call)"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"the query ran longer than {time_limit:g}s") from None
            if "too big" in str(exc):
                raise sqlite3.DataError(
                    f"a value is larger than the {MAX_VALUE_BYTES:,} bytes `sql` reads or "
                    "builds (SQLITE_LIMIT_LENGTH): select length() of it, or read the job "
                    "with jobs.get"
                ) from None
            raise
    finally:
        conn.set_progress_handler(None, 0)
        conn.set_authorizer(None)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    return {
        "columns": columns,
        "rows": orjson.Fragment(b"[" + b",".join(parts) + b"]"),
        "truncated": truncated,
    }
