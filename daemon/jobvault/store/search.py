"""Full-text search over job records: SQLite FTS5, bm25 ranking, snippets, jobs.list filters.

Each job has one document in `search_fts` (written with its record by `store/writer.py`):
its title, first prompt, summary, and the first 32 KiB of its prompts and assistant text,
taken from the archive by the source adapter, so `jobvault rebuild` reproduces the index and
it keeps working after the transcripts are deleted. Ranking is bm25 with the title weighted
most, then the prompt and summary, then the message text.

The query is FTS5 syntax (`word`, `"a phrase"`, `prefix*`, `a OR b`, `NOT c`,
`prompt:word`). Text that is not valid FTS5 syntax (stray quotes, `-`, `:`) is searched as
plain words instead of failing, each word quoted (a trailing `*` still means a prefix).
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import orjson

from jobvault.store.queries import file_condition, job_filters

WEIGHTS = (4.0, 2.0, 2.0, 1.0)  # title, prompt, summary, body
MARK_OPEN, MARK_CLOSE = "«", "»"
SNIPPET_TOKENS = 16
MAX_LIMIT = 200
_WORD = re.compile(r"\w+\*?", re.UNICODE)


def plain_query(text: str) -> str:
    """The words of `text` as an FTS5 query that cannot be a syntax error (all must match)."""
    terms = []
    for word in _WORD.findall(text):
        star = word.endswith("*")
        core = word.rstrip("*")
        if core:
            terms.append(f'"{core}"' + ("*" if star else ""))
    return " ".join(terms)


def search(
    conn: sqlite3.Connection,
    query: str,
    filters: dict[str, Any] | None = None,
    *,
    limit: int = 20,
    offset: int = 0,
) -> dict[str, Any]:
    """Jobs matching `query` (best first) and the `jobs.list` filters, with snippets.

    An empty query lists the jobs matching the filters, newest first: a search by file or by
    tool alone.
    """
    filters = {k: v for k, v in (filters or {}).items() if v is not None}
    where, params = job_filters(filters)
    limit = max(1, min(limit, MAX_LIMIT))
    offset = max(0, offset)
    text = query.strip()
    if text:
        try:
            hits = _match(conn, text, where, params, limit, offset)
            used = text
        except sqlite3.OperationalError as exc:
            if "interrupt" in str(exc):
                raise  # the request's deadline, not the query's syntax
            used = plain_query(text)
            hits = _match(conn, used, where, params, limit, offset) if used else []
    else:
        used = ""
        sql = "SELECT jobs.id, jobs.record, jobs.status, NULL, NULL FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY COALESCE(jobs.started_at, '') DESC, jobs.id DESC LIMIT ? OFFSET ?"
        hits = conn.execute(sql, (*params, limit + 1, offset)).fetchall()
    more = len(hits) > limit
    results = []
    for job_id, record_json, status, snippet, score in hits[:limit]:
        record: dict[str, Any] = orjson.loads(record_json)
        record["status"] = status
        item = {"job": record, "snippet": snippet, "score": score}
        if any(k in filters for k in ("file", "file_prefix", "file_glob")):
            item["matched_files"] = _matched_files(conn, job_id, filters)
        results.append(item)
    return {
        "query": query,
        "fts_query": used,
        "results": results,
        "next_offset": offset + limit if more else None,
    }


def _match(
    conn: sqlite3.Connection,
    fts_query: str,
    where: list[str],
    params: list[Any],
    limit: int,
    offset: int,
) -> list[Any]:
    weights = ", ".join(str(w) for w in WEIGHTS)
    sql = (
        "SELECT jobs.id, jobs.record, jobs.status, "
        f"snippet(search_fts, -1, '{MARK_OPEN}', '{MARK_CLOSE}', '…', {SNIPPET_TOKENS}), "
        f"bm25(search_fts, {weights}) AS score "
        "FROM search_fts JOIN search_docs d ON d.id = search_fts.rowid "
        "JOIN jobs ON jobs.id = d.job_id WHERE search_fts MATCH ?"
    )
    if where:
        sql += " AND " + " AND ".join(where)
    sql += " ORDER BY score, COALESCE(jobs.started_at, '') DESC, jobs.id LIMIT ? OFFSET ?"
    return conn.execute(sql, (fts_query, *params, limit + 1, offset)).fetchall()


def _matched_files(conn: sqlite3.Connection, job_id: str, filters: dict[str, Any]) -> list[str]:
    condition = file_condition(filters)
    if condition is None:
        return []
    sql, params = condition
    rows = conn.execute(
        f"SELECT DISTINCT m.path FROM files_modified m WHERE m.job_id = ? AND {sql} "
        "ORDER BY m.path LIMIT 20",
        (job_id, *params),
    )
    return [r[0] for r in rows]
