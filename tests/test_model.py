"""A model-based property test of the tailer, archive and job records (hypothesis stateful).

Random sequences of file operations (append a line, append a copy of an earlier message,
append half a line, finish it, truncate,
replace in place or by a new inode, rename inside the tree, move out of the tree, delete) are
applied to real files, interleaved with what the daemon does (a rescan), a clean restart and a
crash (the engine dropped mid-flight without finalizing or closing, as kill -9 leaves it: only
committed transactions survive). A reference model tracks what each file generation held and
what the engine must have been able to read. After quiescence (a final rescan and
finalization), the archive and the job records must agree with the model exactly:

* every file still present is archived byte for byte, in its current generation;
* every generation's archive is a prefix of what that generation held (nothing doubled, nothing
  invented), and all of it when the engine held the file open when it disappeared;
* each job counts one tool call per complete line in its current archive;
* each job's token totals equal an independent recount of its archive (tests/recount.py:
  ccusage's rule for copies of a message, which the model appends within and across sessions),
  and no job is left active after the final finalization.

The engine is the daemon's core driven synchronously (the daemon calls these same methods from
its worker thread), which keeps examples fast and deterministic; test_crash.py and
test_service.py kill and restart the real daemon process.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from jobvault.config import Config
from jobvault.ingest.engine import Engine
from jobvault.store.db import open_writer
from jobvault.store.writer import Store
from tests.helpers import archived
from tests.recount import mismatches, recorded

NAMES = [f"{i:08d}-0000-4000-8000-00000000000{i}" for i in range(4)]


def _line(n: int, session: str) -> bytes:
    tool = f"toolu_{n:06d}"
    obj = {
        "type": "assistant", "sessionId": session, "uuid": f"u{n}",
        "timestamp": f"2025-10-01T10:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
        "message": {"id": f"msg_{n}", "role": "assistant", "model": "claude-sonnet-4-20250514",
                    "content": [{"type": "tool_use", "id": tool, "name": "Bash",
                                 "input": {"command": "é" * (n % 7)}}],
                    "usage": {"input_tokens": 1, "output_tokens": n}},
        "requestId": f"req_{n}",
    }  # fmt: skip
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _copy_line(n: int, session: str, of: int, output: int, sidechain: bool) -> bytes:
    """Another copy of message `of` (a streamed block, or history a resumed session copied)
    with its own output count: ccusage's rule decides which copy counts, and where."""
    obj = {
        "type": "assistant", "sessionId": session, "uuid": f"c{n}", "isSidechain": sidechain,
        "timestamp": f"2025-10-01T11:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
        "message": {"id": f"msg_{of}", "role": "assistant", "model": "claude-sonnet-4-20250514",
                    "content": [{"type": "text", "text": f"copy {n}"}],
                    "usage": {"input_tokens": 1, "output_tokens": output}},
        "requestId": f"req_{of}",
    }  # fmt: skip
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


@dataclass
class Generation:
    """One identity of a file: what it held, and whether the engine could drain it."""

    name: str  # session id (the job): the name it was created under
    content: bytearray = field(default_factory=bytearray)
    path: Path | None = None  # None once deleted or moved out
    seen: bool = False  # the engine tracked it (it existed at a rescan)
    open_in_engine: bool = False  # the engine holds a descriptor (drains it if it vanishes)
    # What it held when it disappeared while the engine held it open: drained completely
    # once the engine notices (a rescan, or a clean stop); a crash before that loses it.
    final: bytes | None = None
    final_due: bool = False


class FileModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="jvmodel-"))
        self.root = self.tmp / "projects"
        (self.root / "-p" / "sub").mkdir(parents=True)
        self.outside = self.tmp / "outside"
        self.outside.mkdir()
        self.db = self.tmp / "vault" / "j.db"
        self.config = Config(watch=(self.root,), db=self.db, max_open_files=64,
                             synchronous="NORMAL")  # fmt: skip
        self.store = Store(open_writer(self.db))
        self.engine = Engine(self.config, self.store, job_write_interval=0)
        self.generations: list[Generation] = []
        self.counter = 0
        self.partial: dict[int, bytes] = {}  # generation index -> the missing half

    # -- helpers -----------------------------------------------------------------------------

    def _live(self) -> list[int]:
        return [i for i, g in enumerate(self.generations) if g.path is not None]

    def _next_line(self, gen: Generation) -> bytes:
        self.counter += 1
        return _line(self.counter, gen.name)

    def _write(self, gen: Generation, data: bytes) -> None:
        assert gen.path is not None
        with gen.path.open("ab") as fh:
            fh.write(data)
        gen.content += data

    def _vanish(self, index: int, drainable: bool = True) -> None:
        """The generation is gone from its path; with its inode intact (deleted, moved away,
        replaced by another inode) an engine holding it open still drains it completely."""
        gen = self.generations[index]
        gen.final = bytes(gen.content) if gen.open_in_engine and drainable else None
        gen.path = None
        self.partial.pop(index, None)

    # -- file operations ---------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES))
    def create(self, name: str) -> None:
        if any(g.path is not None and g.name == name for g in self.generations):
            return
        gen = Generation(name, path=self.root / "-p" / f"{name}.jsonl")
        if gen.path is not None and gen.path.exists():
            return
        gen.path.write_bytes(b"")  # type: ignore[union-attr]
        self.generations.append(gen)
        self._write(gen, self._next_line(gen))

    @precondition(lambda self: self._live())
    @rule(data=st.data(), count=st.integers(1, 4))
    def append_lines(self, data: st.DataObject, count: int) -> None:
        index = data.draw(st.sampled_from(self._live()))
        gen = self.generations[index]
        if index in self.partial:
            return
        for _ in range(count):
            self._write(gen, self._next_line(gen))

    @precondition(lambda self: self._live() and self.counter)
    @rule(data=st.data(), output=st.integers(0, 40), sidechain=st.booleans())
    def append_copy(self, data: st.DataObject, output: int, sidechain: bool) -> None:
        """A copy of an earlier message, into this session or another one."""
        index = data.draw(st.sampled_from(self._live()))
        if index in self.partial:
            return
        gen = self.generations[index]
        of = data.draw(st.integers(1, self.counter))
        self.counter += 1
        self._write(gen, _copy_line(self.counter, gen.name, of, output, sidechain))

    @precondition(lambda self: self._live())
    @rule(data=st.data(), cut=st.integers(1, 60))
    def append_partial(self, data: st.DataObject, cut: int) -> None:
        index = data.draw(st.sampled_from(self._live()))
        if index in self.partial:
            return
        gen = self.generations[index]
        line = self._next_line(gen)
        cut = min(cut, len(line) - 2)
        self._write(gen, line[:cut])
        self.partial[index] = line[cut:]

    @precondition(lambda self: self.partial)
    @rule(data=st.data())
    def finish_partial(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.partial)))
        self._write(self.generations[index], self.partial.pop(index))

    @precondition(lambda self: self._live())
    @rule(data=st.data(), keep_lines=st.integers(0, 2))
    def truncate(self, data: st.DataObject, keep_lines: int) -> None:
        index = data.draw(st.sampled_from(self._live()))
        old = self.generations[index]
        assert old.path is not None
        lines = bytes(old.content).split(b"\n")
        keep = b"".join(line + b"\n" for line in lines[:keep_lines] if line)
        if len(keep) >= len(old.content):
            return
        os.truncate(old.path, len(keep))
        # A new generation (same inode, shorter); the old one's archive stays what it was.
        new = Generation(old.name, bytearray(keep), old.path)
        self._vanish(index, drainable=False)  # its bytes past the cut are gone for good
        self.generations.append(new)
        self._write(new, self._next_line(new))

    @precondition(lambda self: self._live())
    @rule(data=st.data(), in_place=st.booleans())
    def replace(self, data: st.DataObject, in_place: bool) -> None:
        index = data.draw(st.sampled_from(self._live()))
        old = self.generations[index]
        path = old.path
        assert path is not None
        new = Generation(old.name, path=path)
        first = self._next_line(new)
        if in_place:  # same inode, different first bytes
            with path.open("r+b") as fh:
                fh.truncate(0)
                fh.write(first)
        else:  # an atomic rewrite: a new inode at the same path
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(first)
            os.replace(tmp, path)
        new.content += first
        self._vanish(index, drainable=not in_place)
        self.generations.append(new)

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def rename_inside(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(self._live()))
        gen = self.generations[index]
        assert gen.path is not None
        target = (
            self.root / "-p" / "sub" / gen.path.name
            if gen.path.parent.name != "sub"
            else self.root / "-p" / gen.path.name
        )
        if target.exists():
            return
        gen.path.rename(target)
        gen.path = target

    @precondition(lambda self: self._live())
    @rule(data=st.data(), move_out=st.booleans())
    def delete(self, data: st.DataObject, move_out: bool) -> None:
        index = data.draw(st.sampled_from(self._live()))
        gen = self.generations[index]
        assert gen.path is not None
        if move_out:
            gen.path.rename(self.outside / f"{self.counter}-{gen.path.name}")
        else:
            gen.path.unlink()
        self._vanish(index)

    # -- what the daemon does ----------------------------------------------------------------

    def _noticed(self) -> None:
        """The engine looked: vanished files it held open are now drained."""
        for gen in self.generations:
            if gen.final is not None:
                gen.final_due = True
            gen.open_in_engine = False

    @rule()
    def rescan(self) -> None:
        self.engine.rescan([self.root])
        self._noticed()
        for gen in self.generations:
            if gen.path is not None:
                gen.seen = gen.open_in_engine = True

    @rule()
    def restart(self) -> None:
        """A clean stop (finalize with what was read, close) and a new start."""
        self.engine.stopping.set()
        self.engine.drain_vanished()
        self.engine.finalize_all()
        self.engine.close()
        self.store.close()
        self._noticed()
        self._start()

    @rule()
    def kill(self) -> None:
        """kill -9: nothing but committed transactions survive; descriptors are gone."""
        for tracked in self.engine.by_id.values():  # the process's descriptors die with it
            if tracked.fd is not None:
                os.close(tracked.fd)
                tracked.fd = None
        self.store.conn.close()
        for gen in self.generations:  # vanished before the engine looked: lost with it
            if not gen.final_due:
                gen.final = None
        self._start()

    def _start(self) -> None:
        self.store = Store(open_writer(self.db))
        self.engine = Engine(self.config, self.store, job_write_interval=0)
        self.engine.recover()
        for gen in self.generations:
            gen.open_in_engine = False

    # -- checks ------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self._final_check()
        finally:
            self.engine.close()
            self.store.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _final_check(self) -> None:
        self.engine.rescan([self.root])
        for gen in self.generations:
            if gen.path is not None:
                gen.seen = True
        self.engine.stopping.clear()
        self.engine.finalize_all()
        conn = sqlite3.connect(self.db)
        try:
            files = conn.execute("SELECT id, path, state FROM files ORDER BY id").fetchall()
            tool_calls = dict(conn.execute("SELECT session_id, tool_call_count FROM jobs"))
        finally:
            conn.close()
        # Files present now: archived byte for byte.
        for gen in self.generations:
            if gen.path is not None:
                assert archived(self.db, gen.path) == bytes(gen.content), gen.path
        # Every archived generation is a prefix of a generation of the model; vanished files
        # the engine held open were drained completely.
        archives = [_archive(self.db, file_id) for file_id, _, _ in files]
        for gen in self.generations:
            if gen.path is None and gen.final_due and gen.final:
                assert bytes(gen.final) in archives, f"{gen.name}: not drained completely"
        for data in archives:
            assert any(bytes(g.content).startswith(data) for g in self.generations), (
                "archived bytes that no generation held (doubled or invented)"
            )
        # Jobs: one tool call per distinct complete line (each carries its own tool_use id) in
        # the archives the job is made of: the current generation of each of its paths, and
        # files deleted (or moved away) with their history, which exists nowhere else.
        current: dict[str, set[bytes]] = {}
        for (_file_id, path, state), data in zip(files, archives, strict=True):
            if state not in ("active", "deleted"):
                continue
            lines = current.setdefault(Path(path).stem, set())
            lines.update(line for line in data.split(b"\n")
                         if line.endswith(b"}") and b'"tool_use"' in line)  # fmt: skip
        for name, lines in current.items():
            assert tool_calls.get(name, 0) == len(lines), (name, tool_calls.get(name), len(lines))
        # Tokens: each job's totals equal a recount of its archived lines with ccusage's rule
        # for copies of a message (within the job and across jobs), and no job is left active.
        assert mismatches(self.db) == []
        assert "active" not in {status for status, _tokens in recorded(self.db).values()}


def _archive(db: Path, file_id: int) -> bytes:
    from jobvault.store.archive import iter_chunks

    conn = sqlite3.connect(db)
    try:
        return b"".join(data for _, data in iter_chunks(conn, file_id))
    finally:
        conn.close()


FileModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("JOBVAULT_MODEL_EXAMPLES", "40")),
    stateful_step_count=int(os.environ.get("JOBVAULT_MODEL_STEPS", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestFileModel = FileModel.TestCase
