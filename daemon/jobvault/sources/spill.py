"""Per-message state of very long sessions, moved out of memory into a scratch database.

A session's accumulator keeps one small entry per message and per tool call (to count
each streamed message once and to pair tool calls with their results). That is about a
tenth of a megabyte per megabyte of transcript: fine for ordinary sessions, too much for a
multi-gigabyte one. A `SpillMap` is a dict while it is small; once its session has more
than `SPILL_AFTER` entries, every map of the session moves to a private scratch SQLite file
next to the database, and new entries are merged into it in batches with the same
"which copy wins" rule. Reading back (`values`, `ordered`) streams from the file, so
memory stays bounded whatever the session's length, and the record built is the same.

Scratch files are deleted when their session's accumulator is dropped, and left-overs of a
killed process are removed by `remove_stale` at the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import marshal
import os
import sqlite3
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog

from jobvault.errors import StoreError

SPILL_AFTER = 10_000  # entries held by a session (about 4 MB) before its maps move to disk
FLUSH_EVERY = 1024  # entries buffered in memory per spilled map between merges
PREFIX = "jobvault-spill-"  # without a database: scratch files in the system's temp dir

Order = tuple[str, int, int]  # (timestamp, file_id, offset): every entry's line
V = TypeVar("V")

_spill_dir: Path | None = None
_prefix = PREFIX
log = structlog.get_logger("jobvault.spill")


def open_scratch() -> Scratch | None:
    """A new scratch database, or None when it cannot be made (the state then stays in
    memory: a full or read-only disk costs memory, never a record)."""
    try:
        return Scratch()
    except (OSError, sqlite3.Error) as exc:
        log.warning("spill_unavailable", directory=str(_spill_dir), error=str(exc))
        return None


def set_spill_dir(directory: Path | None, owner: str = "") -> None:
    """Where scratch files go: beside the database `owner` (its file name); None: /tmp."""
    global _spill_dir, _prefix
    _spill_dir = directory
    _prefix = prefix_of(owner)


def prefix_of(owner: str) -> str:
    """Scratch files carry their database's name: another database's are never touched."""
    return f"{owner}-spill-" if owner else PREFIX


def spill_dir() -> Path | None:
    return _spill_dir


def spill_prefix() -> str:
    return _prefix


def remove_stale(directory: Path, owner: str) -> int:
    """Delete the scratch databases a killed writer of `owner` left behind.

    Call it holding the database's writer lock: no other process can be using them.
    """
    removed = 0
    with contextlib.suppress(OSError):
        for path in directory.glob(f"{glob.escape(prefix_of(owner))}*.db"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


class Scratch:
    """One session's scratch database: a file deleted when the session lets go of it."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix=_prefix, suffix=".db", dir=_spill_dir)
        os.close(fd)
        self.path = name
        self.conn = sqlite3.connect(name, isolation_level=None, check_same_thread=False)
        self._closer = weakref.finalize(self, _close, self.conn, name)
        for pragma in (
            "journal_mode = OFF",  # scratch: a crash throws it away anyway
            "synchronous = OFF",
            "locking_mode = EXCLUSIVE",
            "cache_size = -2048",  # 2 MB
            "temp_store = FILE",  # the sorts of `ordered` go to disk too
        ):
            self.conn.execute(f"PRAGMA {pragma}")
        self.conn.execute(
            "CREATE TABLE kv (map INTEGER NOT NULL, key TEXT NOT NULL, ts TEXT NOT NULL, "
            "file_id INTEGER NOT NULL, offset INTEGER NOT NULL, value BLOB NOT NULL, "
            "PRIMARY KEY (map, key)) WITHOUT ROWID"
        )
        self._maps = 0

    def new_map_id(self) -> int:
        self._maps += 1
        return self._maps

    def close(self) -> None:
        self._closer()


def _close(conn: sqlite3.Connection, path: str) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


class Codec(Generic[V]):
    """Turns a value into bytes and back (marshal: fast, for str/int/float/bool/bytes/None)."""

    def __init__(self, pack: Callable[[V], bytes], unpack: Callable[[bytes], V]) -> None:
        self.pack = pack
        self.unpack = unpack

    @staticmethod
    def of_dataclass(cls: type[V]) -> Codec[V]:
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

        def pack(value: V) -> bytes:
            return marshal.dumps(tuple(getattr(value, n) for n in names))

        def unpack(data: bytes) -> V:
            return cls(*marshal.loads(data))

        return Codec(pack, unpack)


MARK: Codec[bool] = Codec(lambda _v: b"", lambda _b: True)  # for sets


def no_order(_value: object) -> Order:
    """For maps that are only looked up by key."""
    return ("", 0, 0)


def always(_new: object, _old: object) -> bool:
    """`prefer` of maps whose entries are updated: the latest value is kept."""
    return True


class SpillMap(Generic[V]):
    """key → value, keeping the preferred copy; a dict until its session spills.

    `prefer(new, old)` says whether a new copy replaces the kept one; it must be a strict
    order (ties keep the old copy) so the result does not depend on the order of arrival.
    `order_of` gives the (timestamp, file_id, offset) that `ordered` sorts by.
    """

    def __init__(
        self,
        codec: Codec[V],
        order_of: Callable[[V], Order],
        prefer: Callable[[V, V], bool] | None = None,
    ) -> None:
        self._codec = codec
        self._order_of = order_of
        self._prefer = prefer
        self._hot: dict[str, V] = {}
        self._scratch: Scratch | None = None
        self._id = 0
        self._stored = 0  # keys in the scratch table
        self._flush_at = FLUSH_EVERY  # entries held in memory before the next merge

    def __len__(self) -> int:
        self._sync()
        return self._stored + len(self._hot)

    def offer(self, key: str, value: V) -> None:
        old = self._hot.get(key)
        if old is None:
            if self._scratch is not None and len(self._hot) >= self._flush_at:
                self._flush()
            self._hot[key] = value
        elif self._prefer is not None and self._prefer(value, old):
            self._hot[key] = value

    def put(self, key: str, value: V) -> None:
        """Hold `value` for `key`, replacing what is kept (needs `prefer` to say yes).

        The value stays in memory until the next merge, so the caller may still change it
        (`get` then `put` is how a spilled entry is updated).
        """
        if self._scratch is not None and key not in self._hot and len(self._hot) >= self._flush_at:
            self._flush()
        self._hot[key] = value

    def get(self, key: str) -> V | None:
        value = self._hot.get(key)
        if value is not None or self._scratch is None:
            return value
        row = self._scratch.conn.execute(
            "SELECT value FROM kv WHERE map = ? AND key = ?", (self._id, key)
        ).fetchone()
        return self._codec.unpack(row[0]) if row else None

    def items(self) -> Iterator[tuple[str, V]]:
        """Every (key, value), in key order once spilled (unordered before)."""
        if self._scratch is None:
            yield from list(self._hot.items())
            return
        self._sync()
        unpack = self._codec.unpack
        for key, data in self._scratch.conn.execute(
            "SELECT key, value FROM kv WHERE map = ? ORDER BY key", (self._id,)
        ):
            yield key, unpack(data)

    def sorted_items(self) -> Iterator[tuple[str, V]]:
        """Every (key, value) in key order."""
        if self._scratch is None:
            yield from sorted(self._hot.items(), key=lambda kv: kv[0])
        else:
            yield from self.items()

    def values(self) -> Iterator[V]:
        for _, value in self.items():
            yield value

    def spill(self, scratch: Scratch) -> None:
        """Move every entry to `scratch`; from now on only a batch is held in memory."""
        if self._scratch is not None:
            return
        self._scratch = scratch
        self._id = scratch.new_map_id()
        self._flush()

    def _flush(self) -> None:
        """Merge the entries held in memory into the scratch table."""
        if self._scratch is None or not self._hot:
            return
        try:
            self._merge(self._scratch.conn)
        except sqlite3.Error as exc:  # (disk full): keep them in memory, try again later
            with contextlib.suppress(sqlite3.Error):
                self._scratch.conn.execute("ROLLBACK")
            self._flush_at = len(self._hot) + FLUSH_EVERY
            log.warning("spill_failed", held=len(self._hot), error=str(exc))
            return
        self._hot.clear()
        self._flush_at = FLUSH_EVERY

    def _sync(self) -> None:
        """Merge before reading the table; a merge that fails again is the store's fault."""
        self._flush()
        if self._scratch is not None and self._hot:
            raise StoreError(f"cannot write the scratch file {self._scratch.path}")

    def _merge(self, conn: sqlite3.Connection) -> None:
        codec = self._codec
        kept: dict[str, V] = {}
        if self._stored:
            keys = list(self._hot)
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                marks = ",".join("?" * len(part))
                for key, data in conn.execute(
                    f"SELECT key, value FROM kv WHERE map = ? AND key IN ({marks})",
                    (self._id, *part),
                ):
                    kept[key] = codec.unpack(data)
        rows = []
        new = 0  # counted only once the merge is committed
        for key, value in self._hot.items():
            old = kept.get(key)
            if old is None:
                new += 1
            elif self._prefer is None or not self._prefer(value, old):
                continue
            ts, file_id, offset = self._order_of(value)
            rows.append((self._id, key, ts, file_id, offset, codec.pack(value)))
        conn.execute("BEGIN")
        conn.executemany("INSERT OR REPLACE INTO kv VALUES (?,?,?,?,?,?)", rows)
        conn.execute("COMMIT")
        self._stored += new


class Spiller:
    """When a session's maps move to disk: the policy the adapters share.

    The adapter adds the entries it offers to `offers` (an attribute: cheap per line) and
    calls `check` with its maps when there are more than SPILL_AFTER; `check` then counts the
    entries really held (streamed copies of a message share one) and moves every map of the
    session to one scratch file when they are too many. Maps made afterwards join it through
    `adopt`. With no room for a scratch file the state stays in memory and is checked again
    later. (It holds no reference to its session, so a dropped session is freed, and its
    scratch file deleted, at once.)
    """

    def __init__(self) -> None:
        self.offers = 0
        self.scratch: Scratch | None = None

    def check(self, session_maps: Iterable[SpillMap[Any]]) -> None:
        if self.scratch is not None or self.offers <= SPILL_AFTER:
            return
        maps = list(session_maps)
        held = sum(len(m) for m in maps)
        if held <= SPILL_AFTER:
            self.offers = held // 2  # check again after as many new entries
            return
        self.scratch = open_scratch()
        if self.scratch is None:  # no room on disk: stay in memory, try again later
            self.offers = 0
            return
        for m in maps:
            m.spill(self.scratch)

    def adopt(self, maps: Iterable[SpillMap[Any]]) -> None:
        """Maps made after the move go to the same scratch file."""
        if self.scratch is not None:
            for m in maps:
                m.spill(self.scratch)


def ordered(maps: list[SpillMap[Any]]) -> Iterator[tuple[int, str, Any]]:
    """(map index, key, value) of several maps of one session by (order, key)."""
    spilled = [m for m in maps if m._scratch is not None]
    if not spilled:
        items = [(m._order_of(v), k, i, v) for i, m in enumerate(maps) for k, v in m._hot.items()]
        # By (order, key): no two items share those and their map, so a tuple's value is
        # never compared (a plain sort: no key made per item).
        items.sort()
        for _, key, i, value in items:
            yield i, key, value
        return
    scratch = spilled[0]._scratch
    assert scratch is not None and all(m._scratch is scratch for m in maps)
    for m in maps:
        m._sync()
    position = {m._id: i for i, m in enumerate(maps)}
    marks = ",".join("?" * len(maps))
    for map_id, key, data in scratch.conn.execute(
        f"SELECT map, key, value FROM kv WHERE map IN ({marks}) ORDER BY ts, file_id, offset, key",
        list(position),
    ):
        i = position[map_id]
        yield i, key, maps[i]._codec.unpack(data)
