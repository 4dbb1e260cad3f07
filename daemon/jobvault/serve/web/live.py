"""Live updates: server-sent events fed by the notifications `subscribe` gets.

Each stream is a subscriber of the daemon's `Hub` (a bounded queue, never blocking the
publisher); it forwards `job.updated` / `job.finalized` as `event: job` with the job's id and
status, optionally only for one job. The page then re-reads what it shows (the record, the
replay's tail, the overview) through the ordinary routes, so an update can never show a figure
the page itself would not. A stream that falls behind is dropped and the browser's
EventSource reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from jobvault.serve.server import EVENTS, Hub, Subscription

KEEPALIVE = 15.0  # seconds: a comment line, so proxies and the browser keep the stream open
QUEUE = 1000


async def events(request: web.Request, hub: Hub, closing: asyncio.Event) -> web.StreamResponse:
    """`GET /events[?job=ID]`: a text/event-stream of job notifications."""
    only = request.query.get("job") or None
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    sub = Subscription(asyncio.Queue(QUEUE), frozenset(EVENTS))
    hub.subscribers.add(sub)
    stop = asyncio.ensure_future(closing.wait())
    try:
        await response.write(b"retry: 1000\n: connected\n\n")
        while not sub.dropped or not sub.queue.empty():
            get = asyncio.ensure_future(sub.queue.get())
            done, _ = await asyncio.wait(
                {get, stop}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED
            )
            if get not in done:
                get.cancel()
                if stop in done:
                    break
                await response.write(b": keepalive\n\n")
                continue
            message = orjson.loads(get.result())
            params = message.get("params") or {}
            if only is not None and params.get("id") != only:
                continue
            data = {
                "event": message.get("method"),
                "id": params.get("id"),
                "status": params.get("status"),
            }
            await response.write(b"event: job\ndata: " + orjson.dumps(data) + b"\n\n")
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        stop.cancel()
        hub.subscribers.discard(sub)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response
