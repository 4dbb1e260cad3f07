"""Compressed Codex rollouts (`rollout-*.jsonl.zst`, Codex CLI 0.137+) as first-class files.

The home (tests/fixtures/compressed/home, written by tests/fixtures/make_compressed_fixtures.py
and committed) holds eight rollouts: half only compressed, a quarter in both forms (one
materialised for a resume, one resumed and appended), a quarter plain. Its totals are checked
against the generator's own sums (expected.json) and against ccusage 20.0.24 on a decompressed
copy (ccusage does not read `.zst`), with `jobvault import` and with the daemon. The life of
one rollout (archived plain, compressed, resumed) is followed step by step, and a large
compressed rollout is read with bounded memory.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from benchmarks.compare_ccusage import ccusage, installed_ccusage, plain_copy

from jobvault.config import Config
from jobvault.service.daemon import run_daemon
from jobvault.sources import ADAPTERS
from jobvault.sources.codex import CodexAdapter
from tests.helpers import run, run_json
from tests.test_daemon import eventually

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compressed"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
FIELDS = ("input_tokens", "cache_read_tokens", "output_tokens", "reasoning_tokens")
R1 = "0199c001-0000-7000-8000-000000000001"


def _home(tmp_path: Path) -> Path:
    """A copy of the home, its files last modified days ago (a checkout makes them new)."""
    home = tmp_path / "codex-home"
    shutil.copytree(FIXTURES / "home", home)
    for path in home.rglob("rollout-*"):
        os.utime(path, (1765497600, 1765497600))  # 2025-12-12
    return home


def _roots(home: Path) -> tuple[Path, Path]:
    return home / "sessions", home / "archived_sessions"


def _import(capsys: pytest.CaptureFixture[str], db: Path, home: Path) -> Any:
    return run_json(capsys, "import", *map(str, _roots(home)), "--db", str(db), "--no-progress")


def _query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _sessions(db: Path) -> dict[str, list[int]]:
    cols = ", ".join(FIELDS)
    return {r[0]: list(r[1:]) for r in _query(db, f"SELECT session_id, {cols} FROM jobs")}


def _days(db: Path) -> dict[str, list[Any]]:
    """Per UTC day: the four token figures and the cost, from the hourly usage rows."""
    sums = ", ".join(f"SUM({c})" for c in FIELDS)
    sql = f"SELECT substr(hour, 1, 10), {sums}, SUM(cost_usd) FROM job_usage GROUP BY 1"
    rows = _query(db, sql)
    return {r[0]: list(r[1:]) for r in rows}


def _decompress(path: Path) -> bytes:
    return zstandard.ZstdDecompressor().decompress(path.read_bytes())


def _content(home: Path) -> int:
    """Bytes of distinct rollout content: a rollout in both forms holds its compressed
    content as a prefix of the plain file, so it counts once."""
    total = 0
    for path in home.rglob("rollout-*"):
        if path.name.endswith(".zst"):
            if not path.with_name(path.name[: -len(".zst")]).exists():
                total += len(_decompress(path))
        else:
            total += path.stat().st_size
    return total


def _archived_bytes(db: Path) -> int:
    return int(_query(db, "SELECT COALESCE(SUM(length), 0) FROM chunks")[0][0])


def test_classify_claims_compressed_rollouts() -> None:
    adapter = CodexAdapter()
    name = f"rollout-2025-12-01T08-00-00-{R1}.jsonl"
    for folder in ("/h/.codex/sessions/2025/12/01", "/h/.codex/archived_sessions", "/anywhere"):
        plain = adapter.classify(Path(folder) / name)
        compressed = adapter.classify(Path(folder) / (name + ".zst"))
        assert plain is not None and compressed == plain and compressed.job_key == R1
    assert adapter.classify(Path("/h/.codex/sessions/2025/01/01/rollout-odd.jsonl.zst"))
    others = ("/anywhere/rollout-odd.jsonl.zst", f"/h/.codex/sessions/{name}.zst.tmp",
              f"/h/.codex/sessions/{name}.gz", "/h/.codex/sessions/notes.jsonl.zst")  # fmt: skip
    for path in others:
        assert adapter.classify(Path(path)) is None, path
    # Claude Code never compresses: its adapter does not claim a `.zst`.
    assert ADAPTERS["claude"].classify(Path(f"/h/.claude/projects/-w/{R1}.jsonl.zst")) is None


async def _daemon_import(home: Path, db: Path) -> None:
    """The daemon's start-up backfill of the home, until every session is final."""
    config = Config(watch=_roots(home), db=db, idle_timeout=0.5, rescan_interval=0.2,
                    batch_interval=0.01, dashboard=False)  # fmt: skip
    want = len(EXPECTED["sessions"])

    def all_final() -> bool:
        if not db.exists():
            return False
        done = _query(db, "SELECT COUNT(*) FROM jobs WHERE finalized_at IS NOT NULL")[0][0]
        return bool(done == want)

    async with run_daemon(config):
        await eventually(all_final, 30)


@pytest.fixture(params=["import", "daemon"])
async def vault(
    request: pytest.FixtureRequest, tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, Path]:
    """The compressed home read by `jobvault import` or by the daemon: (home, database)."""
    home = _home(tmp_path)
    if request.param == "import":
        summary = _import(capsys, db, home)
        assert summary["bad_lines"] == 0 and summary["jobs"] == len(EXPECTED["sessions"])
    else:
        await _daemon_import(home, db)
    return home, db


def test_every_rollout_counted_once(
    vault: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every rollout is a job whatever its form, with the generator's totals; the content of
    a rollout in both forms is archived once; `rebuild` gives the same records."""
    home, db = vault
    assert _sessions(db) == EXPECTED["sessions"]
    assert {d: v[:4] for d, v in _days(db).items()} == EXPECTED["days"]
    assert _archived_bytes(db) == _content(home)
    assert not _query(db, "SELECT * FROM bad_lines")
    jobs = [f"codex:{s}" for s in EXPECTED["sessions"]]
    before = {j: run_json(capsys, "show", j, "--db", str(db)) for j in jobs}
    code, _ = run(capsys, "rebuild", "--db", str(db))
    assert code == 0
    assert {j: run_json(capsys, "show", j, "--db", str(db)) for j in jobs} == before


def test_totals_equal_ccusage_on_a_decompressed_copy(
    vault: tuple[Path, Path], tmp_path: Path
) -> None:
    """Per UTC day, tokens and cost equal `ccusage codex daily --offline` on a copy of the
    home with each compressed rollout decompressed (ccusage 20.0.24 reads no `.zst`)."""
    cmd = installed_ccusage()
    if cmd is None:
        pytest.skip("ccusage 20.0.24 is not installed in .bench/ccusage (make test installs it "
                    "with npm; npm or the registry was not available)")  # fmt: skip
    home, db = vault
    plain = plain_copy(home, tmp_path / "plain")
    assert not list(plain.rglob("*.zst"))
    empty = tmp_path / "empty-home"
    empty.mkdir()
    theirs = ccusage(cmd, "codex", "daily", {"CODEX_HOME": str(plain), "HOME": str(empty)})
    days = {
        d["date"]: [d["inputTokens"], d["cacheReadTokens"], d["outputTokens"],
                    d["reasoningOutputTokens"], d["costUSD"]]
        for d in theirs["daily"]  # type: ignore[attr-defined]
    }  # fmt: skip
    ours = _days(db)
    assert sorted(ours) == sorted(days)
    for day, figures in days.items():
        assert ours[day][:4] == figures[:4], day
        assert ours[day][4] == pytest.approx(figures[4], abs=1e-6), day


def test_export_writes_the_decompressed_rollout(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The archive keeps a rollout's content, not the compressed bytes: `export` writes the
    JSONL, and `--dir` names it `x.jsonl` (`zstd -3` makes the other form again)."""
    home = _home(tmp_path)
    _import(capsys, db, home)
    compressed = next(home.rglob(f"rollout-*-{R1}.jsonl.zst"))
    content = _decompress(compressed)
    out = tmp_path / "out.jsonl"
    code, _ = run(capsys, "export", f"codex:{R1}", "--db", str(db), "-o", str(out))
    assert code == 0 and out.read_bytes() == content
    code, listing = run(capsys, "export", f"codex:{R1}", "--db", str(db), "--dir",
                        str(tmp_path / "dir"))  # fmt: skip
    assert code == 0
    [written] = [Path(line) for line in listing.splitlines()]
    assert written.name == compressed.name.removesuffix(".zst")
    assert written.read_bytes() == content


# -- one rollout's life: archived plain, compressed, resumed ---------------------------------

R6 = "0199c001-0000-7000-8000-000000000006"


def _r6() -> tuple[str, bytes, bytes]:
    """R6's name, its content when Codex compressed it (two turns) and after its resume."""
    folder = FIXTURES / "home" / "sessions" / "2025" / "12" / "03"
    plain = next(folder.glob(f"rollout-*-{R6}.jsonl"))
    head = _decompress(plain.with_name(plain.name + ".zst"))
    full = plain.read_bytes()
    assert full.startswith(head) and len(full) > len(head)
    return plain.name, head, full


def _compress(path: Path) -> None:
    """As Codex does: zstd level 3 into a temp file, the mtime kept, renamed; the plain file
    is deleted after the rename (`path` still exists when this returns)."""
    target = path.with_name(path.name + ".zst")
    temp = path.with_name("." + path.name + ".zst.tmp")
    temp.write_bytes(zstandard.ZstdCompressor(level=3).compress(path.read_bytes()))
    st = path.stat()
    os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns))
    temp.rename(target)


def _materialise(path: Path, upto: int | None = None) -> None:
    """As Codex resumes a compressed session: the plain file written from the compressed one
    (`upto`: only its first bytes so far, as if caught mid-write)."""
    data = _decompress(path.with_name(path.name + ".zst"))
    path.write_bytes(data if upto is None else data[:upto])


def _life(folder: Path) -> list[tuple[str, Callable[[], object]]]:
    """The steps of R6's life, each followed by a look at the files."""
    name, head, full = _r6()
    path = folder / name
    zst = path.with_name(name + ".zst")
    return [
        ("written plain", lambda: path.write_bytes(head)),
        ("compressed, both there", lambda: _compress(path)),
        ("plain deleted", path.unlink),
        ("materialising, half written", lambda: _materialise(path, len(head) // 2 + 7)),
        ("materialised, both there", lambda: _materialise(path)),
        ("compressed form deleted", zst.unlink),
        ("resumed: a turn appended", lambda: _append(path, full[len(head) :])),
        ("idle again: compressed, both there", lambda: _compress(path)),
        ("plain deleted again", path.unlink),
    ]


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def _assert_one_rollout(db: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """R6 is one job with its whole content counted once, one file row archived once, and
    `export` gives the rollout's content (decompressed) byte for byte."""
    _name, _head, full = _r6()
    assert _sessions(db) == {R6: EXPECTED["sessions"][R6]}
    job = run_json(capsys, "show", f"codex:{R6}", "--db", str(db))
    assert job["user_message_count"] == 3 and job["status"] == "completed"
    rows = _query(db, "SELECT id, path, codec, offset FROM files WHERE job_key = ?", R6)
    assert len(rows) == 1, rows
    assert rows[0][1].endswith(".jsonl.zst") and rows[0][2:] == ("zstd", len(full))
    assert _archived_bytes(db) == len(full)
    out = tmp_path / "export.jsonl"
    code, _ = run(capsys, "export", f"codex:{R6}", "--db", str(db), "-o", str(out))
    assert code == 0 and out.read_bytes() == full


def test_rollout_life_is_one_job_with_import(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jobvault import` run after every step of the rollout's life."""
    home = tmp_path / "codex"
    folder = home / "sessions" / "2025" / "12" / "03"
    folder.mkdir(parents=True)
    (home / "archived_sessions").mkdir()
    for step, act in _life(folder):
        act()
        summary = _import(capsys, db, home)
        assert summary["bad_lines"] == 0, step
        assert len(_sessions(db)) == 1, step
    _assert_one_rollout(db, capsys, tmp_path)


async def test_rollout_life_is_one_job_in_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon watching while the rollout lives: after every step it is made to look (a
    rescan on its engine thread), so it sees each brief overlap of both forms too."""
    home = tmp_path / "codex"
    folder = home / "sessions" / "2025" / "12" / "03"
    folder.mkdir(parents=True)
    (home / "archived_sessions").mkdir()
    db = tmp_path / "vault" / "j.db"
    config = Config(watch=_roots(home), db=db, idle_timeout=0.3, rescan_interval=0.2,
                    batch_interval=0.01, dashboard=False)  # fmt: skip
    async with run_daemon(config) as daemon:
        engine = daemon.engine
        assert engine is not None
        for step, act in _life(folder):
            act()
            await daemon.on_worker(engine.rescan, list(config.watch))
            tracked = await daemon.on_worker(lambda: sorted(engine.by_path))
            assert len(tracked) == 1, (step, tracked)
            assert len(_query(db, "SELECT id FROM files")) == 1, step
        await eventually(lambda: _query(db, "SELECT COUNT(*) FROM jobs WHERE finalized_at "
                                            "IS NOT NULL")[0][0] == 1)  # fmt: skip
    _assert_one_rollout(db, capsys, tmp_path)


async def test_daemon_hears_of_a_compressed_rollout(tmp_path: Path) -> None:
    """A rollout that appears compressed (a temp file renamed, as Codex writes it) is read on
    the watcher's hint, not only at the next rescan (an hour away here)."""
    home = tmp_path / "codex"
    folder = home / "sessions" / "2025" / "12" / "03"
    folder.mkdir(parents=True)
    db = tmp_path / "vault" / "j.db"
    config = Config(watch=_roots(home), db=db, idle_timeout=0.3, rescan_interval=3600,
                    batch_interval=0.01, watch_events=True, dashboard=False)  # fmt: skip
    name, _head, full = _r6()
    async with run_daemon(config):
        await eventually(db.exists)
        temp = folder / f".{name}.zst.tmp"  # (no name the adapters claim)
        temp.write_bytes(zstandard.ZstdCompressor(level=3).compress(full))
        temp.rename(folder / f"{name}.zst")
        done = await eventually(lambda: _sessions(db).get(R6), 10)
    assert done == EXPECTED["sessions"][R6]


# -- large compressed rollouts ---------------------------------------------------------------


def _bytes_read() -> int:
    """Bytes this process has read through read(2) and the like so far (Linux)."""
    with open("/proc/self/io", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def _line_run(n: int, size: int) -> bytes:
    """`n` Codex lines of about `size` bytes of little-compressible text each."""
    import random

    rng = random.Random(n)
    out = []
    for i in range(n):
        text = rng.randbytes(size // 2).hex()
        obj = {"timestamp": "2025-12-01T08:00:00.000Z", "type": "event_msg",
               "payload": {"type": "agent_message", "message": f"{i} {text}"}}  # fmt: skip
        out.append(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    return b"".join(out)


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc")
def test_reading_a_compressed_file_in_rounds_decompresses_it_once(tmp_path: Path) -> None:
    """A large rollout is read a budget at a time, each read ending at the last complete line
    (the partial line after it is read again next time): the stream goes on from where it
    was, never decompressing the file again from its start."""
    from jobvault.ingest.reader import ZstdSource, read_lines

    data = _line_run(400, 50_000)  # 20 MB of lines of 50 kB
    path = tmp_path / "big.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        source = ZstdSource(fd)
        before = _bytes_read()
        offset, rounds, pieces = 0, 0, []
        while True:
            result = read_lines(source, offset, False, 256 * 1024, 1 << 24, block=64 * 1024)
            pieces += [s.data for s in result.segments]
            if result.eof and result.offset == offset:
                break
            offset, rounds = result.offset, rounds + 1
        read = _bytes_read() - before
        source.close()
    finally:
        os.close(fd)
    assert b"".join(pieces) == data
    assert rounds > 60
    compressed = path.stat().st_size
    # Read once (a few blocks of slack); from the start every round would be ~rounds / 2 times.
    assert read < compressed + 4 * 1024 * 1024, (read, compressed)


def test_compressed_source_reads_like_the_plain_bytes(tmp_path: Path) -> None:
    """Any sequence of reads (forward, stepping back a little or a lot, past the end) gives
    the bytes a plain file would."""
    import random

    from jobvault.ingest import reader

    data = _line_run(300, 40_000)  # 12 MB, more than the look-behind
    path = tmp_path / "x.jsonl.zst"
    # Several frames, as a file compressed in pieces would hold.
    cctx = zstandard.ZstdCompressor(level=3)
    third = len(data) // 3
    path.write_bytes(
        b"".join(cctx.compress(data[i : i + third]) for i in range(0, len(data), third))
    )
    rng = random.Random(7)
    fd = os.open(path, os.O_RDONLY)
    try:
        source = reader.ZstdSource(fd)
        offset = 0
        for _ in range(300):
            step = rng.choice([0, 1, 4096, 1 << 20])
            move = rng.choice(["on", "on", "back", "far back", "jump"])
            if move == "back":
                offset = max(0, offset - rng.randrange(1, reader.LOOK_BEHIND))
            elif move == "far back":
                offset = rng.randrange(0, max(1, offset))
            elif move == "jump":
                offset = rng.randrange(0, len(data) + 1000)
            size = rng.choice([1, 100, 65536, 1 << 20, 3 << 20])
            assert source.pread(size, offset) == data[offset : offset + size], (move, offset)
            offset += size + step
            if offset > len(data):
                offset = rng.randrange(0, len(data))
        source.close()
    finally:
        os.close(fd)
