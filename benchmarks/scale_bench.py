"""Ingest at the scale of a real user's history, and the daemon's steady and burst costs.

* **import of ordinary histories** (`corpus.ordinary_history`: 3,000 and 10,000 sessions of a
  median of ~50 lines, every 100th with one 2 MB tool output, 3 % resumed): `jobvault import`
  against bare `orjson.loads` over the same lines and `ccusage claude daily --json --offline`
  on the same files, interleaved, median of the runs. Peak memory is the largest process's own
  peak (`wait4`'s `ru_maxrss`, which covers the worker processes the import waited for) and
  the whole process tree's peak resident total, sampled every 20 ms.
* **the daemon's trickle**: one session appended to at 5 lines a second; CPU (user + system)
  of the daemon per second of wall time.
* **a burst**: 50,000 lines in 100 new files written at once; the time until every byte is
  archived (committed), and the daemon's peak RSS.
* **a backfill**: the daemon started on an already imported 10,000-session database watching
  those 10,000 sessions; the time until `status` first answers, and its latencies while the
  start-up rescan runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks import corpus
from benchmarks.daemon import JOBVAULT, Daemon, sandbox_env
from benchmarks.import_bench import baseline, ccusage_bin, ccusage_daily, db_bytes
from benchmarks.latency import _line
from benchmarks.measure import cpu_seconds, percentile
from benchmarks.rpc import Client

SESSION = "5ca1ab1e-0000-4000-8000-00000000beef"


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def sampled(cmd: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """Run `cmd`; its wall time, its largest process's peak RSS and the tree's peak total."""
    peak_tree = 0
    done = threading.Event()
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE, stderr=err)

        def sample() -> None:
            nonlocal peak_tree
            while not done.is_set():
                peak_tree = max(peak_tree, sum(_rss_kib(p) for p in _tree(proc.pid)))
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd[0]} exited {code}: {err.read().decode()[-2000:]}")
    return {
        "wall": seconds,
        "rss_mb": usage.ru_maxrss / 1024,
        "tree_mb": peak_tree / 1024,
        "stdout": out.decode(),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    pick = dict(sorted(runs, key=lambda r: r["wall"])[len(runs) // 2])
    pick["walls"] = [round(r["wall"], 3) for r in runs]
    for key in ("rss_mb", "tree_mb"):
        if key in pick:
            pick[key] = max(r[key] for r in runs)
    pick.pop("stdout", None)
    return pick


def import_history(
    root: Path, tmp: Path, cache: Path, repeats: int, keep_db: Path | None = None
) -> dict[str, Any]:
    """orjson, jobvault import and ccusage on one ordinary history, interleaved."""
    projects = root / "claude" / "projects"
    files = corpus.iter_jsonl(projects)
    listed = list(files)
    exe = ccusage_bin(cache)
    runs: dict[str, list[dict[str, Any]]] = {}
    for i in range(repeats):
        runs.setdefault("orjson", []).append(baseline(listed))
        db = tmp / f"scale-{i}.db"
        cmd = [*JOBVAULT, "import", str(projects), "--db", str(db), "--no-progress", "--json"]
        run = sampled(cmd, sandbox_env(tmp))
        run["summary"] = orjson.loads(run["stdout"])
        run["db_bytes"] = db_bytes(db)
        runs.setdefault("import", []).append(run)
        if exe:
            runs.setdefault("ccusage", []).append(ccusage_daily(exe, root / "claude", tmp))
        for path in tmp.glob(f"scale-{i}.db*"):
            if keep_db is not None and i == 0:
                path.rename(keep_db.with_name(path.name.replace(f"scale-{i}.db", keep_db.name)))
            else:
                path.unlink()
    out: dict[str, Any] = {name: _median(measured) for name, measured in runs.items()}
    out.setdefault("ccusage", None)
    out["files"] = len(listed)
    out["bytes"] = sum(p.stat().st_size for p in listed)
    return out


def trickle(tmp: Path, seconds: float, rate: float = 5.0) -> dict[str, Any]:
    """CPU of the daemon while one session is appended to at `rate` lines a second."""
    live = tmp / "trickle"
    folder = live / "projects" / "-home-dev-live"
    folder.mkdir(parents=True)
    path = folder / f"{SESSION}.jsonl"
    with Daemon(tmp, tmp / "trickle.db", [live]) as daemon, path.open("ab") as out:
        for i in range(60):  # a session with some history first
            out.write(_line("assistant", i))
        out.flush()
        time.sleep(3)
        cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
        n = 60
        while time.monotonic() - wall0 < seconds:
            out.write(_line("assistant" if n % 3 else "user", n))
            out.flush()
            n += 1
            time.sleep(1 / rate)
        cpu1, wall1 = cpu_seconds(daemon.pid), time.monotonic()
    lines = n - 60
    return {
        "lines": lines,
        "seconds": wall1 - wall0,
        "cpu_pct": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "cpu_ms_per_line": 1000 * (cpu1 - cpu0) / lines,
    }


def _archived(client: Client) -> int:
    rows = client.call("sql", {"query": "SELECT COALESCE(SUM(length), 0) FROM chunks"})["rows"]
    return int(rows[0][0])


def burst(tmp: Path, files: int = 100, lines: int = 500) -> dict[str, Any]:
    """50,000 lines in 100 new files at once: time until all is archived; peak RSS."""
    staging = tmp / "burst-staging"
    corpus.ordinary_history(staging, files, seed=13)
    sources = sorted((staging / "claude" / "projects").rglob("*.jsonl"))
    # Trim or repeat each session to `lines` lines, so the burst has exactly files × lines.
    payloads = []
    for src in sources:
        raw = src.read_bytes().splitlines(keepends=True)
        body = (raw * (lines // max(1, len(raw)) + 1))[:lines]
        payloads.append((src.relative_to(staging / "claude" / "projects"), b"".join(body)))
    total = sum(len(data) for _, data in payloads)
    live = tmp / "burst"
    (live / "projects").mkdir(parents=True)
    with Daemon(tmp, tmp / "burst.db", [live]) as daemon, Client(daemon.socket) as client:
        start = time.monotonic()
        for rel, data in payloads:
            target = live / "projects" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        written = time.monotonic() - start
        while _archived(client) < total:
            if time.monotonic() - start > 300:
                raise TimeoutError("the burst was never archived")
            time.sleep(0.01)
        archived = time.monotonic() - start
        peak = _hwm_mb(daemon.pid)
    shutil.rmtree(staging, ignore_errors=True)
    return {
        "files": files,
        "lines": files * lines,
        "bytes": total,
        "written_seconds": written,
        "archived_seconds": archived,
        "peak_rss_mb": peak,
    }


def backfill_status(tmp: Path, db: Path, root: Path) -> dict[str, Any]:
    """The daemon on an imported history, watching it: first `status`, then its latencies."""
    socket = tmp / "bf.sock"
    env = sandbox_env(tmp)
    cmd = [*JOBVAULT, "run", "--db", str(db), "--socket", str(socket), "--log-level",
           "warning", "--watch", str(root / "claude" / "projects")]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    latencies: list[float] = []
    try:
        while time.monotonic() - start < 120:
            try:
                with Client(socket, timeout=5.0) as client:
                    t0 = time.monotonic()
                    client.call("status")
                    first = time.monotonic() - start
                    latencies.append(time.monotonic() - t0)
                    while time.monotonic() - start < first + 10:
                        t0 = time.monotonic()
                        client.call("status")
                        latencies.append(time.monotonic() - t0)
                        time.sleep(0.05)
                    break
            except (OSError, ValueError):
                time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(90)
    return {
        "first_status_seconds": first,
        "status_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "status_p99_ms": 1000 * percentile(latencies, 99) if latencies else None,
        "probes": len(latencies),
    }


def measure(tmp: Path, cache: Path, sessions: tuple[int, int], repeats: int,
            trickle_seconds: float, seed: int = 7) -> dict[str, Any]:  # fmt: skip
    """Every figure of this module, in one sandbox under `tmp`."""
    out: dict[str, Any] = {"sessions": list(sessions)}
    _small, large = sessions
    for count in sessions:
        root = tmp / f"history-{count}"
        out[f"corpus_{count}"] = corpus.ordinary_history(root, count, seed)
        keep = tmp / f"imported-{count}.db" if count == large else None
        out[f"import_{count}"] = import_history(root, tmp, cache, repeats, keep)
        if count != large:
            shutil.rmtree(root)
    out["trickle"] = trickle(tmp, trickle_seconds)
    out["burst"] = burst(tmp)
    out["backfill"] = backfill_status(tmp, tmp / f"imported-{large}.db", tmp / f"history-{large}")
    shutil.rmtree(tmp / f"history-{large}", ignore_errors=True)
    return out


def targets(s: dict[str, Any]) -> list[str]:
    """Issue 12's targets, as table rows (| target | measured | |)."""
    small, large = s["sessions"]
    a, b = s[f"import_{small}"], s[f"import_{large}"]
    ia, oa, ca = a["import"], a["orjson"], a["ccusage"]
    ib = b["import"]
    peak = max(ia["rss_mb"], ib["rss_mb"])
    tree = max(ia["tree_mb"], ib["tree_mb"])
    tr, bu, bf = s["trickle"], s["burst"], s["backfill"]

    def mark(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    rows = [
        f"| import of {small:,} ordinary sessions ≤ 4 × bare orjson | "
        f"{ia['wall'] / oa['wall']:.1f} × ({ia['wall']:.2f} s; orjson {oa['wall']:.2f} s) | "
        f"{mark(ia['wall'] / oa['wall'] <= 4)} |",
    ]
    if ca is not None:
        rows.append(
            f"| import of {small:,} ordinary sessions ≤ 2 × ccusage daily | "
            f"{ia['wall'] / ca['wall']:.1f} × (ccusage {ca['wall']:.2f} s) | "
            f"{mark(ia['wall'] / ca['wall'] <= 2)} |"
        )
    rows += [
        f"| import of {large:,} ≤ 3.6 × the {small:,}-session time (linear) | "
        f"{ib['wall'] / ia['wall']:.2f} × ({ib['wall']:.2f} s) | "
        f"{mark(ib['wall'] / ia['wall'] <= 3.6)} |",
        f"| peak RSS ≤ 100 MB in both (largest process; all processes together) | "
        f"{peak:.0f} MB; {tree:.0f} MB | {mark(peak <= 100)} (largest process) |",
        f"| a 5 lines/s trickle ≤ 1 % of a core | {tr['cpu_pct']:.2f} % "
        f"({tr['cpu_ms_per_line']:.1f} ms of CPU a line) | {mark(tr['cpu_pct'] <= 1)} |",
        f"| a {bu['lines']:,}-line burst over {bu['files']} files archived ≤ 1.5 s | "
        f"{bu['archived_seconds']:.2f} s ({bu['bytes'] / 1e6:.0f} MB) | "
        f"{mark(bu['archived_seconds'] <= 1.5)} |",
        f"| … with peak RSS ≤ 100 MB | {bu['peak_rss_mb']:.0f} MB | "
        f"{mark(bu['peak_rss_mb'] <= 100)} |",
        f"| backfill on an imported {large:,}-session vault: `status` within 1 s | "
        + (
            f"{bf['first_status_seconds']:.2f} s from the process's start; then p99 "
            f"{bf['status_p99_ms']:.0f} ms over {bf['probes']} probes | "
            f"{mark(bf['first_status_seconds'] <= 1)} |"
            if bf["first_status_seconds"] is not None
            else "never answered | **missed** |"
        ),
    ]
    return rows


def rows(s: dict[str, Any]) -> list[str]:
    """The import table of both histories."""
    out = [
        "| history | files | MB | lines | orjson s | jobvault import s | ccusage s | "
        "import ÷ orjson | import ÷ ccusage | peak RSS (largest / all) MB | DB MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count in s["sessions"]:
        f = s[f"import_{count}"]
        o, i, c = f["orjson"], f["import"], f["ccusage"]
        out.append(
            f"| {count:,} sessions | {f['files']:,} | {f['bytes'] / 1e6:,.0f} | "
            f"{o['lines']:,} | {o['wall']:.2f} | {i['wall']:.2f} | "
            + (f"{c['wall']:.2f}" if c else "—")
            + f" | {i['wall'] / o['wall']:.1f} | "
            + (f"{i['wall'] / c['wall']:.1f}" if c else "—")
            + f" | {i['rss_mb']:.0f} / {i['tree_mb']:.0f} | {i['db_bytes'] / 1e6:,.0f} |"
        )
    walls = ", ".join(
        f"{count:,}: " + " / ".join(f"{w:.2f}" for w in s[f"import_{count}"]["import"]["walls"])
        for count in s["sessions"]
    )
    out += ["", f"jobvault import wall times of every run (the median is kept): {walls} s."]
    return out


if __name__ == "__main__":  # python -m benchmarks.scale_bench WORK [--quick]
    work = Path(sys.argv[1])
    quick = "--quick" in sys.argv
    work.mkdir(parents=True, exist_ok=True)
    sandbox = Path(tempfile.mkdtemp(prefix="scale-", dir=work))
    try:
        figures = measure(sandbox, work / "ccusage", (300, 1000) if quick else (3000, 10000),
                          1 if quick else 3, 10 if quick else 30)  # fmt: skip
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
