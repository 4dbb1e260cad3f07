"""`jobvault export`: a session's archived files, byte for byte, private and never clobbered.

Exported transcripts are as private as the vault: files 0600, directories created 0700. An
existing file is never overwritten unless `--force` is given (and then it is replaced in one
step, through a temporary file beside it). With `--dir`, every file of the session goes to
its original place under DIR (relative to the agent's projects folder); when the same file
was archived from two roots (one session in `~/.claude` and `~/.config/claude`, say), the
second copy goes under a folder named after its root, so no target is written twice.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jobvault.errors import NotFoundError, UsageError
from jobvault.store.db import umask


def layout(files: Sequence[Any]) -> list[tuple[Any, Path]]:
    """Relative paths that reproduce the original layout, one distinct path per file."""
    from jobvault.store.queries import restored_name

    main = next((f for f in files if f.role == "main"), None)
    base = Path(main.path).parent.parent if main is not None else None
    out: list[tuple[Any, Path]] = []
    used: set[Path] = set()
    for row in files:
        # A compressed rollout is restored under its uncompressed name (`restored_name`).
        path = Path(restored_name(row, row.path))
        if base is not None and path.is_relative_to(base):
            rel = path.relative_to(base)
        else:
            rel = Path(restored_name(row, row.rel_path))
        if rel in used:  # the same file archived from another root: keep both
            rel = Path(_root_label(row.root)) / restored_name(row, row.rel_path)
        if rel in used:
            rel = rel.with_name(f"{rel.stem}.file-{row.id}{rel.suffix}")
        used.add(rel)
        out.append((row, rel))
    return out


def _root_label(root: str) -> str:
    """A folder name for a watched root: its path with separators as dashes, as Claude names
    project folders (`/home/me/.config/claude/projects` → `-home-me-.config-claude-projects`)."""
    return root.replace(os.sep, "-") or "-"


def _private_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents 0700 (existing ones are left as they are)."""
    with umask(0o077):
        directory.mkdir(parents=True, exist_ok=True)


def write_private(target: Path, chunks: Iterable[bytes], *, force: bool) -> None:
    """Write `target` 0600; refuse an existing file unless `force` (then replace it whole)."""
    if force:
        temp = target.with_name(f".{target.name}.jobvault-{os.getpid()}")
        with umask(0o077):
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                for data in chunks:
                    fh.write(data)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return
    try:
        with umask(0o077):
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise UsageError(f"{target} exists: use --force to overwrite it") from None
    with os.fdopen(fd, "wb") as fh:
        for data in chunks:
            fh.write(data)


def export(
    db: Path, ident: str, *, output: Path | None, directory: Path | None, force: bool
) -> list[Path]:
    """Restore a job's files; return what was written (nothing when writing to stdout)."""
    from jobvault.store import queries
    from jobvault.store.db import open_reader

    conn = open_reader(db)
    try:
        job_id, files = queries.job_files(conn, ident)
        if not files:
            raise NotFoundError(f"job {job_id} has no archived files")
        if directory is not None:
            top = directory.absolute()
            targets = [(row, top / rel) for row, rel in layout(files)]
            existing = [str(t) for _, t in targets if t.exists()]
            if existing and not force:
                more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
                raise UsageError(
                    f"{existing[0]} exists{more}: use --force to overwrite, or another --dir"
                )
            for row, target in targets:
                _private_dirs(target.parent)
                write_private(target, queries.archived_bytes(conn, row.id), force=force)
            return [t for _, t in targets]
        main = next((f for f in files if f.role == "main"), None)
        if main is None:
            raise NotFoundError(f"job {job_id} has no main file archived (try --dir)")
        if output is not None:
            write_private(output, queries.archived_bytes(conn, main.id), force=force)
            return [output]
        out = sys.stdout.buffer
        for data in queries.archived_bytes(conn, main.id):
            out.write(data)
        out.flush()
        return []
    finally:
        conn.close()
