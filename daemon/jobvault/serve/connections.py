"""Who is connected, and whom to let go when the connection limit is reached.

A new connection is never refused while an idle one could make room: at the limit, the
connection that has been idle longest is closed first (one that never completed a request,
such as a half-sent line, is idle since it connected), then the oldest subscriber. A
connection with a request in progress is never closed for another; only when every
connection is busy is the newcomer refused (`too_many_connections`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass(eq=False)
class Peer:
    """One client connection and what it is doing."""

    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    opened: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    busy: int = 0  # requests in progress
    subscribed: bool = False
    requests: int = 0

    def started(self) -> None:
        self.busy += 1
        self.requests += 1

    def finished(self) -> None:
        self.busy -= 1
        self.last_active = time.monotonic()


@dataclass
class Registry:
    """The open connections, within `limit`."""

    limit: int
    peers: set[Peer] = field(default_factory=set)
    evicted: int = 0
    refused: int = 0

    def admit(self, peer: Peer) -> Peer | None:
        """Register `peer`; return the connection to close to make room (None if room).

        Raises `Full` when every connection has a request in progress.
        """
        victim = None
        if len(self.peers) >= self.limit:
            idle = [p for p in self.peers if not p.busy]
            if not idle:
                self.refused += 1
                raise Full
            victim = min(idle, key=lambda p: (p.subscribed, p.last_active))
            self.peers.discard(victim)
            self.evicted += 1
        self.peers.add(peer)
        return victim

    def leave(self, peer: Peer) -> None:
        self.peers.discard(peer)


class Full(Exception):
    """Every connection is busy."""
