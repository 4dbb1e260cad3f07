"""The daemon's part in the dashboard and the statusline: the web server's life, and the two
socket methods the daemon answers itself.

* `dashboard.url`: the dashboard's address with the install's secret (for `jobvault dashboard`;
  the socket is private to this user, so handing it the secret reveals nothing).
* `rate_limits.record`: a statusLine reading (`jobvault statusline`), written on the engine's
  thread, the one writer (`store/samples.py`).

A dashboard that cannot start (the port is taken, aiohttp is missing) is logged and the daemon
runs on without it: it is a view, never a reason to stop archiving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from jobvault.config import Config
from jobvault.errors import UsageError
from jobvault.serve.protocol import UNAVAILABLE, RpcError, invalid_params
from jobvault.serve.server import Hub, LoopMethod, Server
from jobvault.store import samples

if TYPE_CHECKING:
    from jobvault.serve.web.app import WebServer as WebServer
    from jobvault.service.daemon import Daemon
    from jobvault.store.writer import Store

log = structlog.get_logger("jobvault.service")
STARTUP_WAIT = 30.0  # seconds `dashboard.url` waits for a daemon still starting


async def start(config: Config, server: Server, hub: Hub) -> WebServer | None:
    """Start the dashboard on 127.0.0.1 when the configuration asks for it."""
    if not config.dashboard:
        return None
    try:
        from jobvault.serve.web.app import WebServer
    except ImportError as exc:  # an install without the web dependencies
        log.error("dashboard_unavailable", error=str(exc))
        return None
    import jobvault

    try:
        web = WebServer(config.db, config.dashboard_port, server.reader, hub, jobvault.__version__)
        await web.start()
    except OSError as exc:
        log.error("dashboard_unavailable", port=config.dashboard_port, error=str(exc))
        return None
    log.info("dashboard_started", url=f"http://127.0.0.1:{web.port}/")
    return web


def socket_methods(
    daemon: Daemon, store: Callable[[], Store | None], web: Callable[[], WebServer | None]
) -> dict[str, LoopMethod]:
    """The methods answered by the daemon itself (see the module docstring)."""

    async def dashboard_url(raw: dict[str, Any] | list[Any]) -> dict[str, Any]:
        if raw:
            raise invalid_params("dashboard.url takes no parameters")
        if daemon.config.dashboard and not daemon.ready.is_set():
            # The socket answers before the dashboard has started: wait for the start-up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(daemon.ready.wait(), STARTUP_WAIT)
        server = web()
        if server is None:
            reason = (
                "disabled (dashboard = false)"
                if not daemon.config.dashboard
                else ("not running: see the daemon's log (is the port in use?)")
            )
            raise RpcError(UNAVAILABLE, "unavailable", f"the dashboard is {reason}")
        return {"url": server.url, "port": server.port}

    async def record_rate_limits(raw: dict[str, Any] | list[Any]) -> dict[str, Any]:
        params = raw if isinstance(raw, dict) else {}
        unknown = sorted(set(params) - {"session_id", "rate_limits"})
        if unknown or not isinstance(raw, dict):
            raise invalid_params(
                f"unknown parameter(s): {', '.join(unknown) or 'positional'} "
                "(known: session_id, rate_limits)"
            )
        session = params.get("session_id")
        if session is not None and not (isinstance(session, str) and len(session) <= 200):
            raise invalid_params("session_id must be a string (at most 200 characters)")
        try:
            readings = samples.parse_rate_limits(params.get("rate_limits"))
        except UsageError as exc:
            raise invalid_params(str(exc)) from None
        writer = store()
        if writer is None:
            raise RpcError(UNAVAILABLE, "unavailable", "the database is not open yet")
        stored = await daemon.on_worker(
            lambda: samples.record(writer.conn, readings, session_id=session)
        )
        return {"readings": len(readings), "stored": stored}

    return {"dashboard.url": dashboard_url, "rate_limits.record": record_rate_limits}
