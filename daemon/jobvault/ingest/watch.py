"""Filesystem events as hints: which paths changed, told to the event loop. The periodic
rescan remains the source of truth, so a lost event only delays ingestion until the next
rescan.

On Linux the kernel's inotify queue is read on the event loop itself (`InotifyWatcher`, with
inotify_simple for the system calls): an appended line wakes only the loop. Elsewhere
watchdog's observer (FSEvents, kqueue) runs in its own threads and hands each path to the
loop (`WatchdogWatcher`). `open_watcher` picks one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

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
        if _wanted(text):
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


class Watching(Protocol):
    """Watches the roots that exist; `refresh` adds roots that appeared since."""

    # Every directory under the roots is watched and no event was lost: changes are seen
    # as they happen, so a full rescan is a safety net, not the way changes are found.
    healthy: bool

    def refresh(self, roots: list[Path]) -> bool:
        """Watch the roots not watched yet that exist now; return whether any was added."""

    def retain(self, roots: list[Path]) -> None:
        """Stop watching roots no longer configured, start on new ones (SIGHUP reload)."""

    def stop(self) -> None: ...


def _wanted(path: str) -> bool:
    return path.endswith((".jsonl", ".jsonl.zst"))  # (a compressed Codex rollout too)


class WatchdogWatcher:
    """watchdog's observer: its threads read the platform's events and hint the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notify: Callable[[str], None]) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        self._handler = _Handler(loop, notify)
        self._watched: dict[str, ObservedWatch] = {}
        self._started = False
        self.healthy = False  # (what it misses is not known: rescans stay as configured)

    def refresh(self, roots: list[Path]) -> bool:
        added = False
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
            added = True
            log.info("watching", root=key)
        if not self._started:
            self._observer.start()
            self._started = True
        return added

    def retain(self, roots: list[Path]) -> None:
        """Stop watching roots no longer configured, start on new ones (SIGHUP reload)."""
        keep = {os.path.abspath(str(r)) for r in roots}
        for key in [k for k in self._watched if k not in keep]:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(self._watched[key])
            del self._watched[key]
            log.info("unwatching", root=key)
        self.refresh(roots)

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(5.0)


class InotifyWatcher:
    """Linux: one inotify descriptor read by the event loop (`loop.add_reader`), no thread.

    Every directory under a root is watched (inotify is not recursive), symbolic links to
    directories inside a root are not followed (as the scan does not walk them), and a
    directory created or moved in is watched at once and hinted with a sentinel (a path
    ending in the separator) so its files are scanned, whatever arrived before its watch.
    A full event queue (overflow) hints every root the same way. A rename is two hints,
    its source and its destination, with no wait to pair them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, notify: Callable[[str], None]) -> None:
        import inotify_simple  # (Linux only)

        self._loop = loop
        self._notify = notify
        flags = inotify_simple.flags
        self._ino = inotify_simple.INotify(nonblocking=True)
        self._dirs: dict[int, str] = {}  # watch descriptor -> the directory it watches
        self._watched: dict[str, int] = {}  # root -> its watch descriptor
        # ATTRIB too (a chmod, never a read): a file or directory made readable is read at
        # once rather than at the next full rescan.
        self._mask = int(
            flags.CREATE | flags.MODIFY | flags.MOVED_FROM | flags.MOVED_TO | flags.DELETE
            | flags.ATTRIB | flags.MOVE_SELF | flags.ONLYDIR
        )  # fmt: skip
        self._attrib = int(flags.ATTRIB)
        self._moved_self = int(flags.MOVE_SELF)
        self._warned = False
        self.healthy = True  # until a directory cannot be watched or events are lost
        self._no_follow = int(flags.DONT_FOLLOW)
        self._dir_flag, self._overflow = int(flags.ISDIR), int(flags.Q_OVERFLOW)
        self._ignored = int(flags.IGNORED)
        self._arrived = int(flags.CREATE | flags.MOVED_TO)
        self._left = int(flags.MOVED_FROM)
        loop.add_reader(self._ino.fileno(), self._on_events)

    def refresh(self, roots: list[Path]) -> bool:
        added = False
        for root in roots:
            key = os.path.abspath(str(root))
            if key in self._watched:
                continue
            if not os.path.isdir(key):
                if os.path.lexists(key):  # a file given as a root: only rescans look at it
                    self.healthy = False
                continue
            wd = self._watch(key, follow=True)  # (a root may itself be a link)
            if wd is None:
                continue
            self._watched[key] = wd
            self._watch_below(key)
            added = True
            log.info("watching", root=key)
        return added

    def retain(self, roots: list[Path]) -> None:
        keep = {os.path.abspath(str(r)) for r in roots}
        for key in [k for k in self._watched if k not in keep]:
            del self._watched[key]
            for wd, path in list(self._dirs.items()):
                if _under(path, key) and not any(_under(path, k) for k in self._watched):
                    self._unwatch(wd)
            log.info("unwatching", root=key)
        self.refresh(roots)

    def stop(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # (closed already)
            self._loop.remove_reader(self._ino.fileno())
        self._ino.close()
        self._dirs.clear()
        self._watched.clear()

    def _watch(self, path: str, follow: bool = False) -> int | None:
        try:
            wd: int = self._ino.add_watch(path, self._mask | (0 if follow else self._no_follow))
        except OSError as exc:  # gone already, a link, or the watch limit: the rescan still works
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                self.healthy = False  # (changes below it are found by rescans only)
                if not self._warned:  # (once: past the limit, every directory would say it)
                    self._warned = True
                    log.warning("watch_failed", path=path, error=str(exc))
            return None
        self._dirs[wd] = path
        return wd

    def _watch_below(self, top: str) -> None:
        for parent, subdirs, _files in os.walk(top, onerror=lambda _exc: None):
            for name in subdirs:  # (os.walk lists a link to a directory here, never enters it)
                path = os.path.join(parent, name)
                if not os.path.islink(path):
                    self._watch(path)

    def _forget_tree(self, top: str) -> None:
        """Stop watching `top` and everything below it (moved away: the paths are stale)."""
        for wd, path in list(self._dirs.items()):
            if _under(path, top):
                self._unwatch(wd)
        for root in [r for r in self._watched if _under(r, top)]:
            del self._watched[root]

    def _unwatch(self, wd: int) -> None:
        self._dirs.pop(wd, None)
        with contextlib.suppress(OSError):  # (the kernel dropped it already)
            self._ino.rm_watch(wd)

    def _on_events(self) -> None:
        try:
            events = self._ino.read(timeout=0)
        except OSError as exc:  # (closed under us at shutdown; never fatal)
            log.warning("watch_read_failed", error=str(exc))
            return
        for wd, mask, _cookie, name in events:
            if mask & self._overflow:  # events were lost: rescan everything
                self.healthy = False  # (and keep rescanning as configured: it may recur)
                for root in self._watched:
                    self._notify(root + os.sep)
                continue
            if mask & self._ignored:  # the watch is gone (its directory deleted or moved)
                self._dirs.pop(wd, None)
                for root, root_wd in list(self._watched.items()):
                    if root_wd == wd:
                        del self._watched[root]  # watched again by `refresh` if it comes back
                continue
            parent = self._dirs.get(wd)
            if parent is None:
                continue
            if mask & self._moved_self:  # (a root moved away: watched again when back)
                self._forget_tree(parent)
                continue
            if not name:
                continue
            path = os.path.join(parent, name)
            if mask & self._dir_flag:
                if mask & self._left:  # its watches would go on naming the old path
                    self._forget_tree(path)
                elif mask & self._arrived and self._watch(path) is not None:
                    self._watch_below(path)
                    self._notify(path + os.sep)  # (files may be in it already)
                elif mask & self._attrib:  # (made listable, say: what it holds is scanned)
                    if self._watch(path) is not None:
                        self._watch_below(path)
                    self._notify(path + os.sep)
                continue
            if _wanted(path):
                self._notify(path)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + os.sep)


def open_watcher(
    loop: asyncio.AbstractEventLoop, notify: Callable[[str], None], kind: str = "auto"
) -> Watching:
    """The watcher for this platform (`kind`: "auto", "inotify" or "watchdog")."""
    if kind == "inotify" or (kind == "auto" and sys.platform.startswith("linux")):
        try:
            return InotifyWatcher(loop, notify)
        except (ImportError, OSError) as exc:  # (no inotify_simple, or no inotify instance)
            if kind == "inotify":
                raise
            log.warning("inotify_unavailable", error=str(exc))
    return WatchdogWatcher(loop, notify)
