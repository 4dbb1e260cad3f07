"""Filesystem events as hints: watchdog's observer thread tells the event loop which paths
changed. The periodic rescan remains the source of truth, so a lost event only delays
ingestion until the next rescan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_OPENED,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

log = structlog.get_logger("jobvault.watch")
# Events that never mean new bytes. Reading a file opens and closes it, so reacting to these
# made every read schedule another one (a storm of wake-ups under a trickle of appends).
IGNORED = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE, EVENT_TYPE_ATTRIB})
# What the kernel is asked for at all (inotify's mask, on Linux): without it every read of
# ours came back as two events (open, close) for watchdog's three threads to handle, about a
# fifth of the daemon's CPU under a trickle of appends. Closes after a write are left out
# too: the writes themselves (modified) say it first.
WANTED: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent,
    DirCreatedEvent, DirMovedEvent, DirDeletedEvent,
]  # fmt: skip


class _Handler(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, notify: Callable[[str], None]) -> None:
        self._loop = loop
        self._notify = notify

    def _hint(self, path: str | bytes) -> None:
        text = os.fsdecode(path)
        if text.endswith((".jsonl", ".jsonl.zst")):  # (a compressed Codex rollout too)
            # RuntimeError: the loop is closed, we are shutting down.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._notify, text)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED:
            return  # our own reads open and close the files: no change to read
        if event.is_directory:
            if event.event_type in ("created", "moved"):
                # A new directory (a subagents/ folder, say) may arrive with files already in
                # it; ask for a rescan of it through a sentinel hint.
                dest = getattr(event, "dest_path", "") or event.src_path
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._notify, os.fsdecode(dest) + os.sep)
            return
        self._hint(event.src_path)
        dest = getattr(event, "dest_path", None)
        if dest:
            self._hint(dest)


class Watcher:
    """Watches the roots that exist; `refresh` adds roots that appeared since."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notify: Callable[[str], None]) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        self._handler = _Handler(loop, notify)
        self._watched: dict[str, ObservedWatch] = {}
        self._started = False

    def refresh(self, roots: list[Path]) -> None:
        for root in roots:
            key = os.path.abspath(str(root))
            if key in self._watched or not os.path.isdir(key):
                continue
            try:
                watch = self._observer.schedule(
                    self._handler, key, recursive=True, event_filter=WANTED
                )
            except OSError as exc:  # e.g. inotify watch limit reached: the rescan still works
                log.warning("watch_failed", root=key, error=str(exc))
                continue
            self._watched[key] = watch
            log.info("watching", root=key)
        if not self._started:
            self._observer.start()
            self._started = True

    def retain(self, roots: list[Path]) -> None:
        """Stop watching roots no longer configured, start on new ones (SIGHUP reload)."""
        keep = {os.path.abspath(str(r)) for r in roots}
        for key in [k for k in self._watched if k not in keep]:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(self._watched[key])
            del self._watched[key]
            log.info("unwatching", root=key)
        self.refresh(roots)

    def stop(self, timeout: float = 5.0) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout)
