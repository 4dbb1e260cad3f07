"""Order never changes a total (issue 14): a property test over generated Claude Code histories.

Hypothesis draws a small history: assistant messages (streamed as several lines whose early
copies carry partial usage, some without a requestId, some without a message id), prompts,
and sessions in two project directories whose files copy those messages and prompts, as
Claude Code does when a session is resumed under a new sessionId or forked, as a sidechain
replays them, as a subagent file repeats them, and as a whole session file is copied into
another project with a new sessionId. Copies may be partial (only the first, partial line of
a streamed message) and may carry other timestamps. The files are written in a drawn order,
each in one to three appends cut at any byte.

The same history is then read four ways, each into its own database:

* `once`: `jobvault import` of the finished tree;
* `steps`: the tree written in the drawn order with `jobvault import` after some appends;
* `engine`: the daemon's engine (the same methods its thread calls) reading the file a hint
  names or rescanning after some appends, and finalizing idle sessions at drawn moments
  (later lines resume them);
* `rebuild`: `jobvault rebuild` of the engine's database.

All four must give identical job rows, hourly usage rows and daily totals, and they must
equal a recount written here from the generated lines with ccusage's rule (FORMATS.md,
docs/architecture.md "Counting tokens like ccusage"): usage is keyed by (message.id,
requestId), falling back to message.id; each key counts once, its best copy anywhere (not a
sidechain copy, then the largest input + output + cache write + cache read, then the
smallest (path, offset)) in the job of the file holding it; a line without message.id
always counts. Costs use the public per-million prices written below.

`make test` runs JOBVAULT_ORDER_EXAMPLES (default 20) examples, and 8 more with every cold
session read by the worker processes; `make soak` runs 300.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobvault.cli import main
from jobvault.config import Config
from jobvault.ingest.engine import Engine
from jobvault.store.db import open_writer
from jobvault.store.writer import Store

EXAMPLES = int(os.environ.get("JOBVAULT_ORDER_EXAMPLES", "20"))
# Dollars per million input / output / cache-write / cache-read tokens (Anthropic's list).
PRICES = {
    "claude-sonnet-4-20250514": (3.0, 15.0, 3.75, 0.30),
    "claude-3-5-haiku-20241022": (0.8, 4.0, 1.0, 0.08),
}
PROJECTS = ("-home-dev-shop", "-home-dev-shop-fork")
BASE = 1764576000  # 2025-12-01T08:00:00Z
Usage = tuple[int, int, int, int]  # input, output, cache write, cache read


@dataclass(frozen=True)
class Message:
    id: str | None  # None: no message.id (such a line always counts)
    request: str | None
    model: str
    usage: Usage
    ms: int  # milliseconds after BASE
    parts: int  # streamed lines; all but the last carry output_tokens 1


@dataclass(frozen=True)
class Copy:
    message: int
    form: Literal["all", "first", "last"]
    sidechain: bool
    shift: int  # milliseconds added to its timestamps (0: as the original)


@dataclass(frozen=True)
class Prompt:
    uuid: str
    text: str
    ms: int


@dataclass(frozen=True)
class FileSpec:
    rel: str  # under the projects root
    session: str  # the job it belongs to
    subagent: bool
    entries: tuple[Copy | Prompt, ...]


@dataclass(frozen=True)
class History:
    messages: tuple[Message, ...]
    files: tuple[FileSpec, ...]
    cuts: tuple[tuple[int, ...], ...]  # per file: where its appends end (fractions of 1000)
    order: tuple[int, ...]  # the files' appends, in the order they happen
    # After each append: 0 nothing; else `steps` imports, and `engine` reads the file (1),
    # rescans (2), or rescans and finalizes every idle session (3).
    looks: tuple[int, ...]


def _sid(n: int) -> str:
    return f"{n:08d}-aaaa-4bbb-8ccc-{n:012d}"


def _ts(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(BASE + ms // 1000)) + f".{ms % 1000:03d}Z"


messages_st = st.lists(
    st.builds(
        Message,
        id=st.sampled_from([True] * 7 + [False]),
        request=st.sampled_from([True] * 3 + [False]),
        model=st.sampled_from(sorted(PRICES)),
        usage=st.tuples(
            st.integers(0, 5000), st.integers(1, 3000), st.integers(0, 20000), st.integers(0, 90000)
        ),
        ms=st.integers(0, 40).map(lambda h: h * 1800_000),
        parts=st.integers(1, 3),
    ),
    min_size=2,
    max_size=7,
)


@st.composite
def histories(draw: st.DrawFn) -> History:
    raw = draw(messages_st)
    messages = tuple(
        Message(f"msg_{i:02d}" if m.id else None, f"req_{i:02d}" if m.request else None,
                m.model, m.usage, m.ms + 1000 * i, m.parts)
        for i, m in enumerate(raw)
    )  # fmt: skip
    prompts = [Prompt(f"p{i}", f"prompt number {i}", 500 * i) for i in range(4)]
    copies = st.builds(
        Copy,
        message=st.integers(0, len(messages) - 1),
        form=st.sampled_from(["all", "all", "first", "last"]),
        sidechain=st.sampled_from([False, False, False, True]),
        shift=st.sampled_from([0, 0, 3600_000, 86400_000]),
    )
    entries = st.lists(st.one_of(copies, st.sampled_from(prompts)), min_size=1, max_size=7)
    files: list[FileSpec] = []
    for n in range(draw(st.integers(2, 4))):  # sessions: the first one, its resumes and forks
        session = _sid(n + 1)
        project = PROJECTS[draw(st.integers(0, 1))]
        files.append(FileSpec(f"{project}/{session}.jsonl", session, False, tuple(draw(entries))))
        if draw(st.integers(0, 3)) == 0:  # a subagent repeating and adding messages
            sub = tuple(e for e in draw(entries) if isinstance(e, Copy))
            if sub:
                rel = f"{project}/{session}/subagents/agent-a{n}.jsonl"
                files.append(FileSpec(rel, session, True, sub))
    if draw(st.booleans()):  # a session file copied into the other project, a new sessionId
        src = draw(st.sampled_from([f for f in files if not f.subagent]))
        other = PROJECTS[1] if src.rel.startswith(PROJECTS[0] + "/") else PROJECTS[0]
        session = _sid(99)
        files.append(FileSpec(f"{other}/{session}.jsonl", session, False, src.entries))
    cuts = tuple(
        tuple(sorted(draw(st.lists(st.integers(1, 999), max_size=2, unique=True)))) for _ in files
    )
    appends = [i for i, c in enumerate(cuts) for _ in range(len(c) + 1)]
    order = tuple(draw(st.permutations(appends)))
    looks = tuple(draw(st.lists(st.integers(0, 3), min_size=len(order), max_size=len(order))))
    return History(messages, tuple(files), cuts, order, looks)


# -- writing the files -----------------------------------------------------------------------


def _lines(history: History, spec: FileSpec) -> Iterator[dict[str, Any]]:
    common = {"sessionId": spec.session, "cwd": "/home/dev/shop", "version": "2.0.37",
              "userType": "external", "parentUuid": None}  # fmt: skip
    for entry in spec.entries:
        if isinstance(entry, Prompt):
            yield {**common, "type": "user", "isSidechain": spec.subagent, "uuid": entry.uuid,
                   "timestamp": _ts(entry.ms),
                   "message": {"role": "user", "content": entry.text}}  # fmt: skip
            continue
        m = history.messages[entry.message]
        parts = list(range(m.parts))
        parts = (
            parts[:1] if entry.form == "first" else parts[-1:] if entry.form == "last" else parts
        )
        for part in parts:
            inp, out, write, read = m.usage
            message: dict[str, Any] = {
                "type": "message", "role": "assistant", "model": m.model,
                "content": [{"type": "text", "text": f"part {part} of {m.id}"}],
                "usage": {"input_tokens": inp, "output_tokens": out if part == m.parts - 1 else 1,
                          "cache_creation_input_tokens": write, "cache_read_input_tokens": read},
            }  # fmt: skip
            if m.id is not None:
                message["id"] = m.id
            line = {**common, "type": "assistant", "uuid": f"a{entry.message}-{part}",
                    "isSidechain": entry.sidechain or spec.subagent,
                    "timestamp": _ts(m.ms + entry.shift + part), "message": message}  # fmt: skip
            if m.request is not None:
                line["requestId"] = m.request
            yield line


def _content(history: History, spec: FileSpec) -> bytes:
    return b"".join(
        json.dumps(obj, separators=(",", ":")).encode() + b"\n" for obj in _lines(history, spec)
    )


def _pieces(history: History) -> Iterator[tuple[int, bytes]]:
    """(file index, bytes to append), in the drawn order."""
    contents = [_content(history, f) for f in history.files]
    ends = [
        [len(data) * c // 1000 for c in cuts] + [len(data)]
        for data, cuts in zip(contents, history.cuts, strict=True)
    ]
    done = [0] * len(contents)
    nth = [0] * len(contents)
    for i in history.order:
        end = ends[i][nth[i]]
        nth[i] += 1
        yield i, contents[i][done[i] : end]
        done[i] = end


# -- reading them four ways ------------------------------------------------------------------


def _quiet(*args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(args))
    assert code == 0, args


def _import(root: Path, db: Path) -> None:
    _quiet("import", str(root), "--db", str(db), "--no-progress", "--json")


def _append(root: Path, history: History, i: int, data: bytes) -> None:
    path = root / history.files[i].rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        fh.write(data)


def _read_once(tmp: Path, history: History) -> Path:
    root, db = tmp / "once" / "projects", tmp / "once" / "j.db"
    for i, data in _pieces(history):
        _append(root, history, i, data)
    _import(root, db)
    return db


def _read_steps(tmp: Path, history: History) -> Path:
    root, db = tmp / "steps" / "projects", tmp / "steps" / "j.db"
    for (i, data), look in zip(_pieces(history), history.looks, strict=True):
        _append(root, history, i, data)
        if look:
            _import(root, db)
    _import(root, db)
    return db


def _read_engine(tmp: Path, history: History) -> Path:
    root, db = tmp / "engine" / "projects", tmp / "engine" / "j.db"
    root.mkdir(parents=True)
    store = Store(open_writer(db))
    engine = Engine(Config(watch=(root,), db=db), store, job_write_interval=0)
    try:
        for (i, data), look in zip(_pieces(history), history.looks, strict=True):
            _append(root, history, i, data)
            if look == 1:  # the watcher's hint: only the file appended to
                engine.poll([str(root / history.files[i].rel)], [root])
            elif look >= 2:
                engine.rescan([root])
            if look == 3:
                engine.finalize_idle(0)  # every session finalized: later lines resume them
        engine.rescan([root])
        engine.finalize_all()
    finally:
        engine.close()
        store.close()
    return db


# -- what a database says --------------------------------------------------------------------

VOLATILE = {"record", "finalized_at", "updated_at", "machine_id"}


def _results(db: Path, root: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        jobs = {}
        for row in conn.execute("SELECT * FROM jobs ORDER BY id"):
            job = {k: row[k] for k in row.keys() if k not in VOLATILE}  # noqa: SIM118
            job["source_path"] = (job["source_path"] or "").replace(str(root), "<root>")
            jobs[row["id"]] = job
        usage = [tuple(r) for r in conn.execute("SELECT * FROM job_usage ORDER BY 1, 2, 3")]
        # Daily totals are kept by adding and subtracting jobs' rows as they change: their
        # costs are float sums in another order, equal to a billionth of a dollar.
        daily = [
            tuple(round(v, 9) if isinstance(v, float) else v for v in r)
            for r in conn.execute("SELECT * FROM daily_metrics ORDER BY 1, 2, 3")
        ]
    finally:
        conn.close()
    return {"jobs": jobs, "usage": usage, "daily": daily}


# -- the recount -----------------------------------------------------------------------------


def _cost(model: str, usage: Usage) -> float:
    prices = PRICES[model]
    return sum(n * p for n, p in zip(usage, prices, strict=True)) / 1e6


def _recount(history: History, root: Path) -> dict[str, dict[str, Any]]:
    """Per job: tokens, cost, message counts and hourly rows, by ccusage's rule."""
    best: dict[str, tuple[tuple[bool, int, str, int], str, dict[str, Any]]] = {}
    counted: list[tuple[str, dict[str, Any]]] = []  # (job, assistant line)
    ids: dict[str, set[str]] = {}
    user_lines: dict[str, int] = {}
    prompts: dict[str, set[str]] = {}
    for spec in history.files:
        path = str(root / spec.rel)
        job = f"claude:{spec.session}"
        offset = 0
        for obj in _lines(history, spec):
            size = len(json.dumps(obj, separators=(",", ":"))) + 1
            if obj["type"] == "user":
                user_lines[job] = user_lines.get(job, 0) + 1
                if not obj["isSidechain"]:
                    prompts.setdefault(job, set()).add(obj["uuid"])
            else:
                message = obj["message"]
                u = message["usage"]
                total = sum(u.values())
                if "id" not in message:
                    counted.append((job, obj))
                    ids.setdefault(job, set()).add(f"{path}:{offset}")
                else:
                    ids.setdefault(job, set()).add(message["id"])
                    key = message["id"] + (":" + obj["requestId"] if "requestId" in obj else "")
                    rank = (obj["isSidechain"], -total, path, offset)
                    if key not in best or rank < best[key][0]:
                        best[key] = (rank, job, obj)
            offset += size
    counted += [(job, obj) for _, job, obj in best.values()]
    out: dict[str, dict[str, Any]] = {}
    for job in sorted({f"claude:{f.session}" for f in history.files}):
        out[job] = {"tokens": [0, 0, 0, 0], "cost": 0.0, "rows": {},
                    "message_count": len(ids.get(job, ())) + user_lines.get(job, 0),
                    "user_message_count": len(prompts.get(job, ()))}  # fmt: skip
    for job, obj in counted:
        u = obj["message"]["usage"]
        usage: Usage = (u["input_tokens"], u["output_tokens"], u["cache_creation_input_tokens"],
                        u["cache_read_input_tokens"])  # fmt: skip
        model = obj["message"]["model"]
        cost = _cost(model, usage)
        rec = out[job]
        rec["tokens"] = [a + b for a, b in zip(rec["tokens"], usage, strict=True)]
        rec["cost"] += cost
        row = rec["rows"].setdefault((obj["timestamp"][:13], model), [0, 0, 0, 0, 0, 0.0])
        for n, value in enumerate((1, *usage, cost)):
            row[n] += value
    return out


def _assert_recount(results: dict[str, Any], recount: dict[str, dict[str, Any]]) -> None:
    jobs = results["jobs"]
    assert sorted(jobs) == sorted(recount)
    for job_id, want in recount.items():
        job = jobs[job_id]
        got = [job["input_tokens"], job["output_tokens"], job["cache_creation_tokens"],
               job["cache_read_tokens"]]  # fmt: skip
        assert got == want["tokens"], job_id
        assert job["cost_usd"] == pytest.approx(want["cost"], abs=1e-6), job_id
        assert job["message_count"] == want["message_count"], job_id
        assert job["user_message_count"] == want["user_message_count"], job_id
        rows = {
            (r[1], r[2]): [r[3], r[4], r[5], r[6], r[7], r[9]]
            for r in results["usage"]
            if r[0] == job_id
        }
        assert sorted(rows) == sorted(want["rows"]), job_id
        for key, row in want["rows"].items():
            assert rows[key][:5] == row[:5], (job_id, key)
            assert rows[key][5] == pytest.approx(row[5], abs=1e-6), (job_id, key)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(history=histories())
def test_order_never_changes_a_total(history: History) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="jvorder-"))
    try:
        once = _results(_read_once(tmp, history), tmp / "once" / "projects")
        steps = _results(_read_steps(tmp, history), tmp / "steps" / "projects")
        engine_db = _read_engine(tmp, history)
        engine = _results(engine_db, tmp / "engine" / "projects")
        _quiet("rebuild", "--db", str(engine_db), "--no-progress")
        rebuilt = _results(engine_db, tmp / "engine" / "projects")
        _assert_recount(once, _recount(history, tmp / "once" / "projects"))
        assert steps == once
        assert engine == once
        assert rebuilt == once
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
