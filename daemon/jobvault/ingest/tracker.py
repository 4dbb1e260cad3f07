"""File identity: which tracked file a path holds now, decided from its bytes.

The tracker holds the tracked files (their stored rows, descriptors and what lives only in
memory) and answers `look(path)` with *actions* for the engine to apply: read on, create a
row, continue a row under another path, retire a generation, note a deletion, skip. It never
reads lines, writes to the database or finalizes a session; the engine applies its actions
in one batch per round and calls back into it only to change what is tracked.

Identity is content lineage, never (device, inode) alone. A file at a path *continues* a
tracked file when its content begins with what was archived of it: the hash of its first
bytes and the last archived bytes at the committed offset. So:

* a rename (same inode, new path), a rewrite that kept and extended the content (new inode,
  same path), a rollout Codex compressed to `.jsonl.zst` or materialised back to `.jsonl`:
  the same file, read on from its offset, nothing archived twice;
* the same path with other first bytes (rewritten, or an inode handed to another file):
  a new generation ("replaced"); the same first bytes but shorter: "truncated";
* a tracked file with nothing archived yet is a rename target only for a file of its name;
* a path that no longer exists is "deleted": its job keeps counting (its history exists
  nowhere else), and if its inode and bytes reappear under another name it continues.

Only regular files are read: a path is opened `O_NONBLOCK` (a FIFO never blocks the open)
and `fstat`ed; FIFOs, devices, sockets and directories are skipped and counted, as are
symlinks inside the roots unless `follow_symlinks` is set (a root that is itself a symlink is
fine: the walk starts from it).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from jobvault.ingest.reader import Source, codec_of, fingerprint, open_source
from jobvault.sources import ADAPTERS, Adapter, FileInfo
from jobvault.store.archive import FileRow

log = structlog.get_logger("jobvault.tracker")

TAIL_CHECK = 64  # archived bytes before the offset compared with the file to detect rewrites
SUFFIXES = (".jsonl", ".jsonl.zst")
Lineage = Literal["continues", "unknown", "truncated", "differs"]


@dataclass(slots=True)
class Tracked:
    """A file being tailed: its stored row plus what only lives in memory."""

    row: FileRow
    info: FileInfo
    adapter: Adapter
    fd: int | None = None
    source: Source | None = None  # reads through `fd` (a zstd stream keeps its position)
    last_activity: float = 0.0
    pending: int = 0  # bytes of an incomplete last line seen after the offset
    tail: bytes | None = None  # the last archived bytes (None: not loaded yet)

    def unread(self) -> bool:
        """Does the file (as last looked at) hold bytes past the committed offset?"""
        row = self.row
        if row.codec == "zstd":
            return row.disk_size == 0 or row.in_long_line  # 0: not read to its end yet
        return row.size > row.offset or row.in_long_line


@dataclass(frozen=True, slots=True)
class Read:
    """Read the file on from its offset."""

    tracked: Tracked


@dataclass(frozen=True, slots=True)
class Create:
    """A file (or a new generation of a path) to track from byte 0."""

    path: str
    st: os.stat_result
    adapter: Adapter
    info: FileInfo
    fd: int
    source: Source
    gone: bool = False  # its path vanished already: only the kept descriptor holds it


@dataclass(frozen=True, slots=True)
class Continue:
    """A tracked file found under another path, inode or compression: read on from its offset."""

    tracked: Tracked
    path: str
    st: os.stat_result
    fd: int
    source: Source


@dataclass(frozen=True, slots=True)
class Retire:
    """A generation is over; `drain`: its old descriptor may still hold unread bytes."""

    tracked: Tracked
    reason: Literal["replaced", "truncated"]
    drain: bool


@dataclass(frozen=True, slots=True)
class Vanish:
    """The path of a tracked file no longer exists (deleted, or moved out of the tree)."""

    tracked: Tracked


@dataclass(frozen=True, slots=True)
class Skip:
    """A path that is not read, and why (counted in `status`)."""

    path: str
    reason: str


Action = Read | Create | Continue | Retire | Vanish | Skip


class NotRegular(OSError):
    """The path is not a regular file."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, follow_symlinks: bool) -> tuple[int, os.stat_result]:
    """Open a regular file for reading without ever blocking; raise NotRegular otherwise."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegular(errno.ELOOP, "a symlink (not followed)") from None
        if exc.errno == errno.ENXIO:  # a socket (or a FIFO with no reader, for writing)
            raise NotRegular(errno.ENXIO, "a socket") from None
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(errno.EINVAL, _kind(st.st_mode))
    return fd, st


def sibling(path: str) -> str:
    """The other form of a rollout: `x.jsonl` ↔ `x.jsonl.zst`."""
    return path[: -len(".zst")] if path.endswith(".zst") else path + ".zst"


def _stem(path: str) -> str:
    return os.path.basename(path).removesuffix(".zst")


class FileTracker:
    """The tracked files, their descriptors, and identity decisions for paths."""

    def __init__(
        self,
        archived_tail: Callable[[int, int], bytes],
        *,
        max_open: int,
        follow_symlinks: bool = False,
    ) -> None:
        self._archived_tail = archived_tail
        self.max_open = max_open
        self.follow_symlinks = follow_symlinks
        self.adapters: list[Adapter] = list(ADAPTERS.values())
        self.by_path: dict[str, Tracked] = {}
        self.by_id: dict[int, Tracked] = {}
        # Files whose row may have changed since `Engine.snapshot` last looked (added,
        # grown, or given a round's new state): what it counts as unread is found among
        # these and the ones it found unread, not by a walk over every file each round.
        self.changed: set[int] = set()
        self.by_inode: dict[tuple[int, int], Tracked] = {}
        # Deleted files whose inode and bytes may reappear under another name (a move whose
        # events were lost, a compressed rollout) continue rather than being archived again.
        self.deleted_by_inode: dict[tuple[int, int], Tracked] = {}
        self.deleted_by_path: dict[str, Tracked] = {}
        self.open_count = 0
        self.skipped: dict[str, str] = {}  # path -> why it is not read (current)
        self.unlisted: dict[str, str] = {}  # directories the last walk could not list, and why
        # New files whose row the database refused (full, read-only): their descriptors are
        # kept, so one deleted before the database recovers is still drained through it.
        self.limbo: dict[str, tuple[int, os.stat_result]] = {}

    # -- what is tracked -----------------------------------------------------------------

    def load(self, rows: Iterable[FileRow]) -> None:
        """Restore the tracked files from their stored rows."""
        for row in rows:
            tracked = self._restore(row)
            if tracked is None:
                continue
            if row.state == "active":
                self.add(tracked)
            else:
                self._remember_deleted(tracked)

    def _restore(self, row: FileRow) -> Tracked | None:
        adapter = ADAPTERS.get(row.source)
        info = adapter.classify(Path(row.path)) if adapter is not None else None
        if adapter is None or info is None:
            return None
        return Tracked(row, info, adapter)

    def classify(self, path: str) -> tuple[Adapter, FileInfo] | None:
        p = Path(path)
        for adapter in self.adapters:
            info = adapter.classify(p)
            if info is not None:
                return adapter, info
        return None

    def add(self, tracked: Tracked) -> None:
        row = tracked.row
        self.changed.add(row.id)
        self.by_path[row.path] = tracked
        self.by_id[row.id] = tracked
        self.by_inode[(row.dev, row.ino)] = tracked

    def remove(self, tracked: Tracked) -> None:
        """Stop tracking a file (retired, or deleted); its descriptor stays with it."""
        row = tracked.row
        if self.by_path.get(row.path) is tracked:
            del self.by_path[row.path]
        self.by_id.pop(row.id, None)
        key = (row.dev, row.ino)
        if self.by_inode.get(key) is tracked:
            del self.by_inode[key]

    def _remember_deleted(self, tracked: Tracked) -> None:
        row = tracked.row
        self.deleted_by_inode[(row.dev, row.ino)] = tracked
        self.deleted_by_path[row.path] = tracked

    def _forget_deleted(self, tracked: Tracked) -> None:
        row = tracked.row
        if self.deleted_by_inode.get((row.dev, row.ino)) is tracked:
            del self.deleted_by_inode[(row.dev, row.ino)]
        if self.deleted_by_path.get(row.path) is tracked:
            del self.deleted_by_path[row.path]

    def mark_deleted(self, tracked: Tracked) -> None:
        self.remove(tracked)
        self._remember_deleted(tracked)

    def revive(self, tracked: Tracked) -> None:
        """A deleted file continues under a new path (the engine updated its row)."""
        self._forget_deleted(tracked)
        self.add(tracked)

    def move(self, tracked: Tracked, path: str, st: os.stat_result, fd: int, src: Source) -> None:
        """Track `tracked` at `path` (a new name, inode or compression) with a new descriptor."""
        self.remove(tracked)
        self._forget_deleted(tracked)
        self.close(tracked)
        row = tracked.row
        row.path, row.dev, row.ino, row.state = path, st.st_dev, st.st_ino, "active"
        row.codec = codec_of(path)
        if row.codec == "zstd":
            row.disk_size = 0  # to be read to its end
        tracked.info = self._info_for(tracked, path)
        self._attach(tracked, fd, src)
        self.add(tracked)

    def _info_for(self, tracked: Tracked, path: str) -> FileInfo:
        info = tracked.adapter.classify(Path(path))
        return info if info is not None else tracked.info

    # -- descriptors ---------------------------------------------------------------------

    def _attach(self, tracked: Tracked, fd: int, src: Source) -> None:
        tracked.fd, tracked.source = fd, src
        self.open_count += 1

    def close(self, tracked: Tracked) -> None:
        if tracked.fd is not None:
            if tracked.source is not None:
                tracked.source.close()
            os.close(tracked.fd)
            self.open_count -= 1
        tracked.fd = tracked.source = None

    def close_all(self) -> None:
        for tracked in [*self.by_id.values(), *self.deleted_by_inode.values()]:
            self.close(tracked)
        for fd, _st in self.limbo.values():
            os.close(fd)
        self.limbo.clear()

    def source(self, tracked: Tracked) -> Source | None:
        """The file's reader, opening its descriptor if needed (None: gone or unreadable)."""
        try:
            return self.open_source(tracked)
        except OSError:
            return None

    def open_source(self, tracked: Tracked) -> Source | None:
        """The file's reader, opening its descriptor if needed; None if its path holds
        another inode now; OSError if it cannot be opened."""
        if tracked.source is not None:
            return tracked.source
        if self.open_count >= self.max_open:
            self.limit_open_files()
        fd, st = self._open_regular(tracked.row.path)
        if (st.st_dev, st.st_ino) != (tracked.row.dev, tracked.row.ino):
            os.close(fd)
            return None
        src = open_source(fd, tracked.row.codec)
        self._attach(tracked, fd, src)
        return src

    def limit_open_files(self, force: bool = False) -> None:
        """Close descriptors of fully read, idle files beyond `max_open`."""
        open_files = [t for t in self.by_id.values() if t.fd is not None]
        # Close down to three quarters of the limit (half when the process ran out) so this
        # sort runs rarely.
        keep = self.max_open // 2 if force else (self.max_open * 3) // 4
        excess = len(open_files) - keep
        open_files.sort(key=lambda t: t.last_activity)
        for tracked in open_files:
            if excess <= 0:
                break
            if tracked.pending == 0 and not tracked.unread():
                self.close(tracked)
                excess -= 1

    # -- walking the roots ---------------------------------------------------------------

    def scan(self, roots: Iterable[Path]) -> list[str]:
        """Every candidate transcript path under `roots` (files or directories), sorted."""
        found: list[str] = []
        unlisted: dict[str, str] = {}

        def unlistable(exc: OSError) -> None:
            # A directory that cannot be listed hides its sessions: counted in `status`.
            if exc.filename is not None and os.path.lexists(exc.filename):
                unlisted[os.fsdecode(exc.filename)] = f"unreadable: {exc.strerror}"

        for root in roots:
            root_s = os.path.abspath(str(root))
            if os.path.isfile(root_s):
                if self.classify(root_s) is not None:
                    found.append(root_s)
                continue
            for dirpath, dirnames, filenames in os.walk(
                root_s, onerror=unlistable, followlinks=False
            ):
                dirnames.sort()
                found.extend(
                    os.path.join(dirpath, name) for name in sorted(filenames)
                    if name.endswith(SUFFIXES)
                )  # fmt: skip
        for path, reason in unlisted.items():
            if self.unlisted.get(path) != reason:
                log.warning("directory_skipped", directory=path, reason=reason)
        self.unlisted = unlisted
        return found

    @staticmethod
    def root_of(path: str, roots: Iterable[Path]) -> tuple[str, str]:
        """Return (root, path relative to it) for `path` under the first matching root."""
        for root in roots:
            root_s = os.path.abspath(str(root))
            if root_s == path:
                return os.path.dirname(root_s), os.path.basename(root_s)
            if path.startswith(root_s.rstrip(os.sep) + os.sep):
                return root_s, os.path.relpath(path, root_s)
        return os.path.dirname(path), os.path.basename(path)

    # -- identity ------------------------------------------------------------------------

    def look(self, path: str) -> list[Action]:
        """What to do about the file now at `path` (it may be new, moved, grown or gone)."""
        tracked = self.by_path.get(path)
        held = self.limbo.pop(path, None)
        try:
            lst = os.lstat(path)
        except FileNotFoundError:
            self.skipped.pop(path, None)  # a skipped path that is gone is no longer skipped
            if held is not None and tracked is None:
                create = self._create(path, held[1], held[0], codec_of(path), gone=True)
                if create is not None:
                    return [create]
            if held is not None:
                os.close(held[0])
            return [Vanish(tracked)] if tracked is not None else []
        except OSError as exc:
            if held is not None:
                self.limbo[path] = held
            return [Skip(path, f"cannot stat: {exc.strerror}")]
        if held is not None:
            os.close(held[0])  # still there: opened again below
        if tracked is not None and self._unchanged(tracked, lst):
            if tracked.source is None and (self.open_count < self.max_open or tracked.unread()):
                # Hold every tracked file open while descriptors allow, so one deleted right
                # after an append is still drained to its end. One that cannot be opened
                # (its mode changed: that leaves its size and time alone) is reported.
                try:
                    self.open_source(tracked)
                except FileNotFoundError:
                    pass  # gone since the lstat: the next look says so
                except OSError as exc:
                    return [Skip(path, f"unreadable: {exc.strerror}")]
            self.skipped.pop(path, None)
            return [Read(tracked)] if tracked.unread() else []
        try:
            fd, st = self._open_regular(path)
        except FileNotFoundError:
            return [Vanish(tracked)] if tracked is not None else []
        except NotRegular as exc:
            gone: list[Action] = [Vanish(tracked)] if tracked is not None else []
            return [*gone, Skip(path, exc.strerror or "not a regular file")]
        except OSError as exc:
            return [Skip(path, f"unreadable: {exc.strerror}")]
        self.skipped.pop(path, None)  # a regular file, readable now: no longer skipped
        kept = False  # did the descriptor go to an action or to the tracked file?
        try:
            actions, kept = self._identify(path, tracked, fd, st)
        finally:
            if not kept:
                os.close(fd)
        return actions

    def _open_regular(self, path: str) -> tuple[int, os.stat_result]:
        try:
            return open_regular(path, self.follow_symlinks)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        # Out of descriptors (another part of the process, or a low limit): close idle
        # files and try once more rather than skipping this one.
        self.limit_open_files(force=True)
        return open_regular(path, self.follow_symlinks)

    @staticmethod
    def _unchanged(tracked: Tracked, lst: os.stat_result) -> bool:
        row = tracked.row
        if (lst.st_dev, lst.st_ino) != (row.dev, row.ino) or not stat.S_ISREG(lst.st_mode):
            return False
        size = row.disk_size if row.codec == "zstd" else row.size
        return lst.st_size == size and lst.st_mtime_ns == row.mtime_ns

    def _identify(
        self, path: str, tracked: Tracked | None, fd: int, st: os.stat_result
    ) -> tuple[list[Action], bool]:
        """The actions for the file open as `fd`; and whether `fd` was handed on."""
        codec = codec_of(path)
        src = open_source(fd, codec)
        if tracked is not None:
            row = tracked.row
            same_inode = (row.dev, row.ino) == (st.st_dev, st.st_ino)
            verdict = self._lineage(tracked, src, st, codec)
            if verdict in ("continues", "unknown"):
                if not same_inode:  # a new inode with the old content: the same file
                    return [Continue(tracked, path, st, fd, src)], True
                self._grow(tracked, st)
                read: list[Action] = [Read(tracked)] if tracked.unread() else []
                if tracked.source is None and self.open_count < self.max_open:
                    # Hold it open while descriptors allow, so that a file deleted right
                    # after an append is still drained to its end.
                    self._attach(tracked, fd, src)
                    return read, True
                src.close()
                return read, False
            src.close()
            cut = same_inode and codec == "plain" and st.st_size < row.offset
            reason: Literal["replaced", "truncated"] = (
                "truncated" if verdict == "truncated" or cut else "replaced"
            )
            # Another inode at the path: the old one still holds its bytes, drain it. The same
            # inode rewritten in place holds only the new content: nothing left to drain.
            actions: list[Action] = [Retire(tracked, reason, drain=not same_inode)]
            create = self._create(path, st, fd, codec)
            return ([*actions, create], True) if create is not None else (actions, False)
        if codec == "zstd" and self._is_regular(sibling(path)):
            # A compressed copy of a rollout whose plain form is there to be read (tracked, or
            # met in the same walk): a shadow. Both forms exist only while Codex compresses
            # (the same content) or materialises a session to resume it (the plain file
            # then extends it); the plain form is read, the content archived once.
            src.close()
            return [], False
        for candidate in self._candidates(path, st):
            verdict = self._lineage(candidate, src, st, codec)
            if verdict == "continues" or (
                verdict == "unknown" and _stem(candidate.row.path) == _stem(path)
            ):
                return [Continue(candidate, path, st, fd, src)], True
            if verdict == "truncated" and self._materialising(candidate, path):
                src.close()
                return [], False  # looked at again once it holds what was archived
        src.close()
        create = self._create(path, st, fd, codec)
        return ([create], True) if create is not None else ([], False)

    def _candidates(self, path: str, st: os.stat_result) -> Iterator[Tracked]:
        """Tracked files that the new file at `path` may continue."""
        key = (st.st_dev, st.st_ino)
        moved = self.by_inode.get(key)
        if moved is not None and moved.row.path != path and not os.path.exists(moved.row.path):
            yield moved
        deleted = self.deleted_by_inode.get(key)
        if deleted is not None:
            yield deleted
        other = sibling(path)
        for candidate in (self.by_path.get(other), self.deleted_by_path.get(other)):
            if (
                candidate is not None
                and candidate is not moved
                and candidate is not deleted
                and (
                    candidate.row.state != "active"
                    or not os.path.exists(candidate.row.path)
                    # Codex materialised a compressed rollout to resume it: the plain file
                    # continues it even while the compressed one is still there.
                    or candidate.row.codec == "zstd"
                )
            ):
                yield candidate

    def _materialising(self, tracked: Tracked, path: str) -> bool:
        """Is the plain file at `path`, shorter than what was archived of the compressed
        rollout `tracked` that is still there, being written from it?"""
        return (
            tracked.row.codec == "zstd"
            and tracked.row.state == "active"
            and not path.endswith(".zst")
            and os.path.exists(tracked.row.path)
        )

    def _is_regular(self, path: str) -> bool:
        try:
            st = os.stat(path) if self.follow_symlinks else os.lstat(path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode)

    def _lineage(self, tracked: Tracked, src: Source, st: os.stat_result, codec: str) -> Lineage:
        """Does the content read through `src` begin with what was archived of `tracked`?"""
        row = tracked.row
        if row.offset == 0 and not row.in_long_line:
            return "unknown"  # nothing archived: the bytes cannot tell
        if row.fp_len and fingerprint(src, row.fp_len) != row.fp_hash:
            return "differs"
        if codec == "plain" and st.st_size < row.offset:
            return "truncated"
        tail = self.archived_tail(tracked)
        if not tail:
            return "continues"
        got = src.pread(len(tail), row.offset - len(tail))
        if got == tail:
            return "continues"
        # The first bytes match but not the last archived ones: cut (and perhaps grown back
        # past the offset with other bytes) or rewritten past its start.
        return "truncated" if len(got) < len(tail) else "differs"

    def archived_tail(self, tracked: Tracked) -> bytes:
        """The last archived bytes of the file (kept in memory, else read from the archive)."""
        if tracked.tail is None:
            tracked.tail = self._archived_tail(tracked.row.id, TAIL_CHECK)
        return tracked.tail

    def _grow(self, tracked: Tracked, st: os.stat_result) -> None:
        row = tracked.row
        self.changed.add(row.id)
        if row.codec == "zstd":
            if (st.st_size, st.st_mtime_ns) != (row.disk_size, row.mtime_ns):
                row.disk_size = 0  # changed since it was read to its end: read it again
        else:
            row.size = max(row.size, st.st_size)

    def _create(
        self, path: str, st: os.stat_result, fd: int, codec: str, gone: bool = False
    ) -> Create | None:
        classified = self.classify(path)
        if classified is None:
            return None
        adapter, info = classified
        return Create(path, st, adapter, info, fd, open_source(fd, codec), gone)

    def attach(self, tracked: Tracked, fd: int, src: Source) -> None:
        """Give a tracked file the descriptor an action carried."""
        self.close(tracked)
        self._attach(tracked, fd, src)


def now() -> float:
    return time.monotonic()
