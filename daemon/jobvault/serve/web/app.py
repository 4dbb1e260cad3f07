"""The live dashboard: an aiohttp application served by the daemon in its own event loop.

Read-only. Pages are rendered on the socket server's reader threads (read-only connections,
a deadline per request, `views.py`), so a slow page never blocks the loop or the writer; live
updates come from the same notifications as `subscribe` (`live.py`). Bound to 127.0.0.1 only
and guarded by `security.py`. Start-up and shutdown follow the socket server's (see
`service/daemon.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import structlog
from aiohttp import web

from jobvault.errors import UsageError
from jobvault.paths import local_zone_name
from jobvault.serve import methods
from jobvault.serve.protocol import NOT_FOUND, RpcError
from jobvault.serve.server import Hub, Reader
from jobvault.serve.web import live, pages, security, views
from jobvault.store import queries, stats
from jobvault.store.db import BUSY_TIMEOUT_MS

log = structlog.get_logger("jobvault.web")
T = TypeVar("T")
STATIC = Path(__file__).parent / "static"
HOST = "127.0.0.1"  # never another interface: see security.py
READ_TIMEOUT = 10.0


def plotly_js() -> Path | None:
    """plotly.min.js as the installed `plotly` package ships it (never fetched, never copied
    into this repository); None when the package is missing (the pages keep their tables)."""
    spec = find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def asset_path(name: str) -> Path | None:
    """An asset the pages load: our own files, and plotly.js from its package."""
    if name == "plotly.min.js":
        return plotly_js()
    path = STATIC / name
    return path if name in {p.name for p in STATIC.iterdir()} and path.is_file() else None


class State:
    """What the handlers share: the database, the readers, the hub, the replay cache."""

    def __init__(self, db: Path, reader: Reader, hub: Hub, version: str) -> None:
        self.db = db
        self.reader = reader
        self.hub = hub
        self.version = version
        self.cache = views.ReplayCache()
        self.urls = pages.Urls(live=True, version=version)
        self.closing = asyncio.Event()
        self.timezone = local_zone_name()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a reader thread under the request deadline (errors become RpcError)."""
        value: T = await self.reader.run(
            lambda conn: methods.run_read(lambda c, _p: fn(c), conn, {}, READ_TIMEOUT)
        )
        return value

    def context(self, page: str, timezone: str | None = None) -> dict[str, Any]:
        zone = timezone or self.timezone
        return {
            "urls": self.urls,
            "page": page,
            "version": self.version,
            "timezone": zone,
            "when": pages.When(zone),
            "live": True,
        }


STATE = web.AppKey("state", State)


def _state(request: web.Request) -> State:
    state: State = request.app[STATE]
    return state


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _error_page(state: State, status: int, title: str, message: str) -> web.Response:
    text = pages.render("error.html", **state.context("error"), title=title, message=message)
    return _html(text, status)


STATUS = {"not_found": 404, "invalid_params": 400, "timeout": 503}


@web.middleware
async def errors(request: web.Request, handler: security.Handler) -> web.StreamResponse:
    """Bad parameters, unknown jobs and timeouts become pages saying so; a bug is logged."""
    state = _state(request)
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except UsageError as exc:
        return _error_page(state, 400, "Bad request", str(exc))
    except RpcError as exc:
        status = STATUS.get(exc.kind, 500)
        if status == 500:
            log.error("page_failed", path=request.path, error=str(exc))
        return _error_page(
            state,
            status,
            {404: "Not found", 400: "Bad request", 503: "Too slow"}.get(status, "Error"),
            str(exc),
        )
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception as exc:
        log.exception("page_failed", path=request.path)
        return _error_page(state, 500, "Error", f"{type(exc).__name__}: {exc}")


async def overview(request: web.Request) -> web.Response:
    state = _state(request)
    zone = request.query.get("tz", "").strip() or state.timezone
    today = datetime.now(UTC).astimezone(stats.zone(zone)).date()
    query = views.OverviewQuery.parse(request.query, state.timezone, today)
    reads = views.overview_reads(query)
    answers = await asyncio.gather(*(state.read(read) for read in reads.values()))
    data = views.assemble(query, dict(zip(reads, answers, strict=True)))
    context = {**state.context("overview", query.timezone), "o": data, "uses_charts": True}
    if request.headers.get("X-Jobvault-Part") == "main":
        return _html(pages.render_block("overview.html", "main", **context))
    return _html(pages.render("overview.html", **context))


async def jobs(request: web.Request) -> web.Response:
    state = _state(request)
    query = views.JobsQuery.parse(request.query)
    context = {**state.context("jobs"), "q": query, "orders": views.ORDER_LABELS}
    try:
        data = await state.read(lambda conn: views.jobs(conn, query))
    except (UsageError, RpcError) as exc:
        if isinstance(exc, RpcError) and exc.kind != "invalid_params":
            raise
        empty: views.JobsPage = {
            "query": query,
            "mode": "list",
            "rows": [],
            "next_query": None,
            "prev_query": None,
            "fts_query": None,
        }
        return _html(pages.render("jobs.html", **context, page_data=empty, error=str(exc)), 400)
    return _html(pages.render("jobs.html", **context, page_data=data, error=None))


async def job(request: web.Request) -> web.StreamResponse:
    """The record and the first page of the replay, streamed: the head goes out first."""
    state = _state(request)
    ident = request.match_info["id"]
    if request.query.get("part") == "record":
        data = await state.read(lambda conn: views.job_page(conn, ident, limit=1))
        return _html(pages.render("_record.html", **state.context("job"), p=data))
    data = await state.read(lambda conn: views.job_page(conn, ident, cache=state.cache))
    return _html(pages.render("job.html", **state.context("job"), p=data))


async def replay(request: web.Request) -> web.Response:
    """A page of replayed events as HTML list items (the job page appends them)."""
    state = _state(request)
    ident = request.match_info["id"]
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", str(views.REPLAY_PAGE)))
    except ValueError:
        raise UsageError("offset and limit must be whole numbers") from None
    if offset < 0 or not 0 <= limit <= 5000:
        raise UsageError("offset must be 0 or more, limit 0 (to the end) to 5000")
    data = await state.read(lambda conn: views.replay_page(conn, ident, offset, limit, state.cache))
    text = pages.render("_page.html", **state.context("job"), items=data["events"])
    response = _html(text)
    response.headers["X-Total"] = str(data["total"])
    response.headers["X-Next-Offset"] = (
        "" if data["next_offset"] is None else str(data["next_offset"])
    )
    return response


async def export(request: web.Request) -> web.StreamResponse:
    """The session's main transcript, byte for byte as the agent wrote it (`jobvault export`)."""
    state = _state(request)
    ident = request.match_info["id"]

    def main_file(conn: sqlite3.Connection) -> tuple[str, Any]:
        job_id, files = queries.job_files(conn, ident)
        main = next((f for f in files if f.role == "main"), None)
        if main is None:
            raise RpcError(NOT_FOUND, "not_found", f"job {job_id} has no main file archived")
        return job_id, main

    _, main = await state.read(main_file)
    name = Path(queries.restored_name(main, main.path)).name or "transcript.jsonl"
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        }
    )
    await response.prepare(request)
    # A connection of its own, used by one thread at a time: a large transcript streams chunk
    # by chunk without holding a reader thread (or memory) for its whole length.
    conn = sqlite3.connect(
        f"{state.db.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False
    )
    loop = asyncio.get_running_loop()
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        chunks = queries.archived_bytes(conn, main.id)
        while True:
            data = await loop.run_in_executor(None, next, chunks, None)
            if data is None:
                break
            await response.write(data)
    finally:
        await loop.run_in_executor(None, conn.close)
    await response.write_eof()
    return response


async def choices(request: web.Request) -> web.Response:
    """Suggestions for the filter fields: projects, models and tools seen in the last year."""
    state = _state(request)

    def read(conn: sqlite3.Connection) -> dict[str, list[str]]:
        since = stats.parse_local_time("365d", stats.zone("UTC"))
        by = {key: stats.usage(conn, key, since=since)["rows"] for key in ("project", "model")}
        tools = stats.tools(conn, since=since, limit=200)["rows"]
        return {
            "project": [r["project"] for r in by["project"] if r["project"]][:500],
            "model": [r["model"] for r in by["model"] if r["model"]][:200],
            "tool": [r["tool"] for r in tools],
        }

    return web.json_response(await state.read(read))


async def events(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    return await live.events(request, state.hub, state.closing)


async def static(request: web.Request) -> web.StreamResponse:
    path = asset_path(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound()
    response = web.FileResponse(path)
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response


def build(
    db: Path, reader: Reader, hub: Hub, token: str, port: Callable[[], int], version: str
) -> web.Application:
    """The application: routes behind the Host and token checks."""
    app = web.Application(middlewares=[security.guard(token, port), errors])
    state = State(db, reader, hub, version)
    app[STATE] = state
    app.on_response_prepare.append(security.add_headers)
    app.router.add_get("/", overview)
    app.router.add_get("/jobs", jobs)
    app.router.add_get("/jobs/{id}", job)
    app.router.add_get("/jobs/{id}/replay", replay)
    app.router.add_get("/jobs/{id}/export", export)
    app.router.add_get("/api/choices", choices)
    app.router.add_get("/events", events)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/favicon.ico", favicon)
    return app


async def favicon(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/static/favicon.svg")


class WebServer:
    """The dashboard's HTTP server on 127.0.0.1, inside the daemon's event loop."""

    def __init__(self, db: Path, port: int, reader: Reader, hub: Hub, version: str) -> None:
        self.requested_port = port
        self.port = port
        self.token = security.load_token(db)
        self.app = build(db, reader, hub, self.token, lambda: self.port, version)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The address to open, with the install's secret (`jobvault dashboard`)."""
        return f"http://{HOST}:{self.port}/?token={self.token}"

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, pages.warm)
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await runner.setup()
        site = web.TCPSite(runner, HOST, self.requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # aiohttp has no public accessor for the bound port
        if isinstance(server, asyncio.base_events.Server) and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Close the live streams, stop accepting, wait a moment for pages in flight."""
        self.app[STATE].closing.set()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cleanup(), 5.0)
            self._runner = None
