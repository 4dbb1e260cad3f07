"""File identity for the engine: new files, renames, truncation, replacement, deletion.

A tracked file is a device + inode, the hash of its first bytes and its last archived bytes;
descriptors are held open (within the process's limit) so a file deleted mid-read is still
drained to its end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from jobvault.errors import StoreError
from jobvault.ingest.engine_base import TAIL_CHECK, EngineBase, Tracked, log
from jobvault.ingest.tail import fingerprint
from jobvault.sources import ADAPTERS, Adapter, FileInfo
from jobvault.store.archive import FileRow
from jobvault.store.writer import Batch


class FileTracking(EngineBase):
    """Which file is which, and what to do when one moves, shrinks or disappears."""

    def _load_files(self) -> None:
        """Restore the tracked files from the database."""
        for row in self.store.load_files():
            tracked = self._restore(row)
            if tracked is None:
                continue
            if row.state == "active":
                self.by_path[row.path] = tracked
                self.by_id[row.id] = tracked
                self.by_inode[(row.dev, row.ino)] = tracked
            else:
                self.deleted_by_inode[(row.dev, row.ino)] = tracked
        self.stats.files_tracked = len(self.by_path)

    def _restore(self, row: FileRow) -> Tracked | None:
        adapter = ADAPTERS.get(row.source)
        if adapter is None:
            return None
        info = adapter.classify(Path(row.path))
        if info is None:
            return None
        return Tracked(row, info, adapter)

    def classify(self, path: Path) -> tuple[Adapter, FileInfo] | None:
        for adapter in self._adapters:
            info = adapter.classify(path)
            if info is not None:
                return adapter, info
        return None

    def scan(self, roots: Iterable[Path]) -> list[str]:
        """Walk `roots` (files or directories); return the paths of every transcript found."""
        found: list[str] = []
        for root in roots:
            root_s = os.path.abspath(str(root))
            if os.path.isfile(root_s):
                if self.classify(Path(root_s)) is not None:
                    found.append(root_s)
                continue
            for dirpath, dirnames, filenames in os.walk(root_s, followlinks=False):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.endswith(".jsonl"):
                        found.append(os.path.join(dirpath, name))
        return found

    def root_of(self, path: str, roots: Iterable[Path]) -> tuple[str, str]:
        """Return (root, path relative to it) for `path` under the first matching root."""
        for root in roots:
            root_s = os.path.abspath(str(root))
            if os.path.isfile(root_s):
                if root_s == path:
                    return os.path.dirname(root_s), os.path.basename(root_s)
                continue
            if path.startswith(root_s.rstrip(os.sep) + os.sep):
                return root_s, os.path.relpath(path, root_s)
        return os.path.dirname(path), os.path.basename(path)

    def track(self, path: str, roots: Iterable[Path]) -> Tracked | None:
        """Stat `path` and make sure the tracked state matches the file now at that path.

        Detects new files, renames (same device+inode and first bytes), replacement (another
        inode, or the same inode with different first bytes) and truncation.
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.gone(path)
            return None
        except OSError as exc:
            log.warning("stat_failed", file=path, error=str(exc))
            return None
        return self.track_stat(path, st, roots)

    def track_stat(self, path: str, st: os.stat_result, roots: Iterable[Path]) -> Tracked | None:
        """`track` with the file's stat already taken (a rescan stats each path once)."""
        tracked = self.by_path.get(path)
        if tracked is not None:
            row = tracked.row
            same_inode = (row.dev, row.ino) == (st.st_dev, st.st_ino)
            unchanged = st.st_size == row.size and st.st_mtime_ns == row.mtime_ns
            if (
                same_inode
                and st.st_size >= row.offset
                and (unchanged or self._fingerprint_ok(tracked))
            ):
                row.size = st.st_size
                if tracked.fd is None and self._open_count < self.max_open:
                    # Hold every tracked file open while descriptors allow, so one deleted
                    # right after an append is still drained to its end.
                    self._open(tracked)
                return tracked
            reason = "truncated" if same_inode and st.st_size < row.offset else "replaced"
            # Another inode at the path: the old one still holds its bytes, drain it. The same
            # inode rewritten in place holds only the new content: nothing left to drain.
            self._supersede(tracked, reason, st.st_size, drain=not same_inode)
        else:
            moved = self._find_moved(path, st)
            if moved is not None:
                moved.row.size = st.st_size  # it may have grown since: read on
                if moved.fd is None and self._open_count < self.max_open:
                    self._open(moved)
                return moved
        return self._track_new(path, st, roots)

    def _track_new(self, path: str, st: os.stat_result, roots: Iterable[Path]) -> Tracked | None:
        classified = self.classify(Path(path))
        if classified is None:
            return None
        adapter, info = classified
        # Open it before recording it: if the database refuses the row (full, read-only),
        # the descriptor is kept so the file can still be drained if it is deleted meanwhile.
        pending = self._pending.pop(path, None)
        fd = None
        if pending is not None:
            if (pending[1].st_dev, pending[1].st_ino) == (st.st_dev, st.st_ino):
                fd = pending[0]
            else:  # another file took the path meanwhile
                os.close(pending[0])
        if fd is None and self._open_count < self.max_open:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (st.st_dev, st.st_ino):
                    os.close(fd)
                    fd = None
        root, rel = self.root_of(path, roots)
        row = FileRow(
            id=0,
            source=adapter.name,
            path=path,
            root=root,
            rel_path=rel,
            generation=self.store.next_generation(root, rel),
            dev=st.st_dev,
            ino=st.st_ino,
            fp_len=0,
            fp_hash=None,
            offset=0,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            in_long_line=False,
            partial_tail=False,
            state="active",
            job_key=info.job_key,
            role=info.role,
            agent_id=info.agent_id,
            line_count=0,
            bad_lines=0,
            lost_bytes=0,
        )
        try:
            row.id = self.store.insert_file(row)
        except StoreError:
            if fd is not None:
                self._pending[path] = (fd, st, list(roots))
            raise
        tracked = Tracked(row, info, adapter, last_activity=time.monotonic())
        if fd is not None:
            tracked.fd = fd
            self._open_count += 1
        self.by_path[path] = tracked
        self.by_id[row.id] = tracked
        self.by_inode[(row.dev, row.ino)] = tracked
        self.stats.files_tracked = len(self.by_path)
        log.debug("file_tracked", file=path, file_id=row.id, job=info.job_key)
        return tracked

    def _find_moved(self, path: str, st: os.stat_result) -> Tracked | None:
        """A tracked file renamed inside the tree: same device, inode and first bytes."""
        key = (st.st_dev, st.st_ino)
        tracked = self.by_inode.get(key)
        if tracked is not None:
            row = tracked.row
            old_path = row.path
            if old_path == path or os.path.exists(old_path):
                return None
            if st.st_size < row.offset or not self._fingerprint_ok(tracked, path):
                # Moved and then cut or rewritten in place: that generation is over.
                reason = "truncated" if st.st_size < row.offset else "replaced"
                self._supersede(tracked, reason, st.st_size, drain=False)
                return None
            self.store.write_file_path(row.id, path, "active")
            del self.by_path[old_path]
            row.path = path
            self.by_path[path] = tracked
            log.info("file_moved", file=path, old=old_path, file_id=row.id)
            return tracked
        tracked = self.deleted_by_inode.get(key)
        if tracked is not None:
            row = tracked.row
            if st.st_size < row.offset or not self._fingerprint_ok(tracked, path):
                return None
            # Taken for deleted (its old name vanished before the new one was seen): the
            # same file, so continue it instead of archiving its bytes a second time.
            self.store.write_file_path(row.id, path, "active")
            del self.deleted_by_inode[key]
            old_path, row.path, row.state = row.path, path, "active"
            self.by_path[path] = tracked
            self.by_id[row.id] = tracked
            self.by_inode[key] = tracked
            log.info("file_reappeared", file=path, old=old_path, file_id=row.id)
            return tracked
        return None

    def _forget_inode(self, tracked: Tracked) -> None:
        key = (tracked.row.dev, tracked.row.ino)
        if self.by_inode.get(key) is tracked:
            del self.by_inode[key]

    def _close(self, tracked: Tracked) -> None:
        if tracked.fd is not None:
            os.close(tracked.fd)
            tracked.fd = None
            self._open_count -= 1

    def _open(self, tracked: Tracked, path: str | None = None) -> int | None:
        if tracked.fd is not None:
            return tracked.fd
        if self._open_count >= self.max_open:
            self._limit_open_files()
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path or tracked.row.path, flags)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return None  # gone or unreadable: the rescan will tell which
            # Out of descriptors (another part of the process, or a low limit): close idle
            # files and try once more rather than skipping this one.
            self._limit_open_files(force=True)
            try:
                fd = os.open(path or tracked.row.path, flags)
            except OSError as again:
                log.warning("open_failed", file=tracked.row.path, error=str(again))
                return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (tracked.row.dev, tracked.row.ino):
            os.close(fd)
            return None
        tracked.fd = fd
        self._open_count += 1
        return fd

    def _limit_open_files(self, force: bool = False) -> None:
        """Close descriptors of fully read, idle files beyond `max_open_files`."""
        open_files = [t for t in self.by_id.values() if t.fd is not None]
        # Close down to three quarters of the limit (half when the process ran out) so this
        # sort runs rarely.
        keep = self.max_open // 2 if force else (self.max_open * 3) // 4
        excess = len(open_files) - keep
        open_files.sort(key=lambda t: t.last_activity)
        for tracked in open_files:
            if excess <= 0:
                break
            if tracked.pending == 0 and tracked.row.offset >= tracked.row.size:
                self._close(tracked)
                excess -= 1

    def _fingerprint_ok(self, tracked: Tracked, path: str | None = None) -> bool:
        row = tracked.row
        if row.fp_len == 0 or row.fp_hash is None:
            return True
        fd = tracked.fd if path is None else None
        own = fd is None
        if own:
            try:
                fd = os.open(path or row.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return False
        assert fd is not None
        try:
            if fingerprint(fd, row.fp_len) != row.fp_hash:
                return False
            # The first bytes match; so must the last bytes we archived, or the file was cut
            # and rewritten past its start (a truncation that grew back beyond our offset).
            tail = self._archived_tail(tracked)
            return not tail or os.pread(fd, len(tail), row.offset - len(tail)) == tail
        finally:
            if own:
                os.close(fd)

    def _archived_tail(self, tracked: Tracked) -> bytes:
        """The last archived bytes of the file (kept in memory, else read from the archive)."""
        if tracked.tail is None:
            tracked.tail = self.store.archived_tail(tracked.row.id, TAIL_CHECK)
        return tracked.tail

    def _supersede(self, tracked: Tracked, reason: str, new_size: int, drain: bool) -> None:
        """Retire a file generation: drain what its descriptor still holds, then mark it."""
        row = tracked.row
        log.info("file_" + reason, file=row.path, file_id=row.id, offset=row.offset, size=new_size)
        if drain and tracked.fd is not None and self._fingerprint_ok(tracked):
            self._drain([tracked], final=True, force=True)
        self._close(tracked)
        row.state = reason
        self.store.write_file_state(row.id, reason)
        self.by_path.pop(row.path, None)
        self.by_id.pop(row.id, None)
        self._forget_inode(tracked)
        if row.job_key is not None:
            self._invalidate(row.job_key, tracked.adapter)

    def gone(self, path: str) -> None:
        """The file at `path` was deleted (or moved out of the watched tree)."""
        if path in self._pending and path not in self.by_path:
            # Seen while the database refused writes; it holds a descriptor: record it now.
            _fd, st, roots = self._pending[path]
            if self._track_new(path, st, roots) is None:
                return
        tracked = self.by_path.get(path)
        if tracked is None or tracked.row.state != "active":
            return
        row = tracked.row
        if tracked.fd is not None and self._fingerprint_ok(tracked):
            # Its bytes exist nowhere else now: drain it even while shutting down. (If the
            # inode was rewritten in place under another name, it is not ours to drain.)
            self._drain([tracked], final=True, force=True)
        elif row.offset < row.size:
            row.lost_bytes = row.size - row.offset
            self.stats.lost_bytes += row.lost_bytes
            log.warning("file_lost_bytes", file=path, file_id=row.id, lost_bytes=row.lost_bytes)
        self._close(tracked)
        self.store.commit(Batch(files={row.id: replace(row, state="deleted")}), stale_jobs=set())
        row.state = "deleted"
        del self.by_path[path]
        del self.by_id[row.id]
        self._forget_inode(tracked)
        self.deleted_by_inode[(row.dev, row.ino)] = tracked
        log.info("file_deleted", file=path, file_id=row.id, offset=row.offset)
        if row.job_key is not None and row.role == "main":
            self.finalize(row.job_key)

    def retry_pending(self) -> None:
        """Record the files first seen while the database refused writes (whatever became of
        their paths since: a deleted one is drained through the descriptor kept for it)."""
        for path in list(self._pending):
            if os.path.exists(path):
                _fd, _st, roots = self._pending[path]
                self.poll([path], roots)
            else:
                self.gone(path)

    def drain_vanished(self) -> None:
        """Drain the files that disappeared since the last look (at shutdown: their bytes
        exist nowhere else, while files still present can be read at the next start)."""
        for path, tracked in list(self.by_path.items()):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self.gone(path)
                continue
            if tracked.fd is not None and (st.st_dev, st.st_ino) != (
                tracked.row.dev,
                tracked.row.ino,
            ):
                self._supersede(tracked, "replaced", st.st_size, drain=True)
