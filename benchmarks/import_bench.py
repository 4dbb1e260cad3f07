"""Import throughput against bare orjson and ccusage; report time; peak RSS; database size."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.corpus import iter_jsonl
from benchmarks.daemon import JOBVAULT, Daemon, sandbox_env
from benchmarks.measure import run
from benchmarks.rpc import Client, first_working

CCUSAGE_VERSION = "20.0.24"
# What ccusage's `daily` report answers, asked of the daemon: stats.usage when this version has
# it, else the same daily totals through the read-only `sql` method (the document says which).
DAILY_SQL = (
    "SELECT substr(hour, 1, 10) AS day, model, SUM(input_tokens), SUM(output_tokens), "
    "SUM(cache_creation_tokens), SUM(cache_read_tokens), SUM(cost_usd) "
    "FROM job_usage GROUP BY day, model ORDER BY day"
)
REPORTS: list[tuple[str, dict[str, Any]]] = [
    ("stats.usage", {"group_by": "day"}),
    ("stats.usage", {"by": "day"}),
    ("stats.usage", {}),
    ("sql", {"query": DAILY_SQL}),
    ("jobs.list", {"limit": 1000}),
]


def db_bytes(db: Path) -> int:
    """The database's size on disk, its WAL included."""
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


def baseline(files: list[Path]) -> dict[str, Any]:
    """Bare orjson.loads over every line, in a fresh interpreter like the import's."""
    result = run([sys.executable, "-m", "benchmarks.baseline", *map(str, files)])
    figures: dict[str, Any] = orjson.loads(result.stdout)
    figures["wall"] = result.seconds
    return figures


def jobvault_import(roots: list[Path], db: Path, tmp: Path) -> dict[str, Any]:
    """`jobvault import` into a fresh database: wall time, peak RSS, size on disk."""
    cmd = [*JOBVAULT, "import", *map(str, roots), "--db", str(db), "--no-progress", "--json"]
    result = run(cmd, env=sandbox_env(tmp))
    summary = orjson.loads(result.stdout)
    return {
        "wall": result.seconds,
        "rss_mb": result.max_rss_mb,
        "summary": summary,
        "db_bytes": db_bytes(db),
    }


def ccusage_bin(cache: Path) -> Path | None:
    """ccusage installed under `cache` (by the Makefile), else None."""
    exe = cache / "node_modules" / ".bin" / "ccusage"
    return exe if exe.exists() else None


def ccusage_daily(exe: Path, config_dir: Path, tmp: Path) -> dict[str, Any]:
    """`ccusage claude daily --json --offline` over the corpus, with an empty HOME."""
    home = tmp / "ccusage-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "TZ": "UTC",
        "CLAUDE_CONFIG_DIR": str(config_dir),
    }
    result = run([str(exe), "claude", "daily", "--json", "--offline"], env=env)
    days = orjson.loads(result.stdout)["daily"]
    return {
        "wall": result.seconds,
        "rss_mb": result.max_rss_mb,
        "days": len(days),
        "output_tokens": sum(d["outputTokens"] for d in days),
    }


def report_after_import(db: Path, tmp: Path, repeats: int = 20) -> dict[str, Any]:
    """The daily usage report from the running daemon, through the socket and through the CLI."""
    empty = tmp / "empty-watch"
    empty.mkdir(exist_ok=True)
    with Daemon(tmp, db, [empty]) as daemon, Client(daemon.socket) as client:
        picked = first_working(client, REPORTS)
        assert picked is not None, "the daemon answers neither stats.usage nor jobs.list"
        method, params = picked
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            client.call(method, params)
            times.append(time.perf_counter() - start)
        cli = [
            *JOBVAULT,
            "query",
            method,
            orjson.dumps(params).decode(),
            "--socket",
            str(daemon.socket),
        ]
        cli_times = [run(cli, env=daemon.env).seconds for _ in range(3)]
    return {
        "method": method,
        "params": params,
        "socket_first": times[0],
        "socket_median": statistics.median(times),
        "cli_median": statistics.median(cli_times),
    }


def big_import(big_root: Path, tmp: Path) -> dict[str, Any]:
    """Import one very large session alone: the peak-RSS case."""
    db = tmp / "big.db"
    figures = jobvault_import([big_root], db, tmp)
    raw = sum(p.stat().st_size for p in iter_jsonl(big_root))
    figures["raw_bytes"] = raw
    db.unlink()
    for extra in tmp.glob("big.db*"):
        extra.unlink()
    return figures


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time; its peak RSS is the highest of all the runs."""
    pick = dict(sorted(runs, key=lambda r: r["wall"])[len(runs) // 2])
    pick["walls"] = [round(r["wall"], 3) for r in runs]
    if "rss_mb" in pick:
        pick["rss_mb"] = max(r["rss_mb"] for r in runs)
    return pick


def import_figures(corpus: Path, tmp: Path, cache: Path, repeats: int = 3) -> dict[str, Any]:
    """Every import figure of one corpus, measured side by side.

    Each measurement is repeated `repeats` times, interleaved (orjson, import, ccusage, then
    again), and the median run is kept, so a burst of load on a shared machine moves a ratio
    less.
    """
    claude = corpus / "claude" / "projects"
    codex = corpus / "codex" / "sessions"
    all_files = [*iter_jsonl(claude), *iter_jsonl(codex)]
    claude_files = list(iter_jsonl(claude))
    raw_all = sum(p.stat().st_size for p in all_files)
    raw_claude = sum(p.stat().st_size for p in claude_files)
    out: dict[str, Any] = {
        "raw_bytes": raw_all,
        "raw_claude_bytes": raw_claude,
        "files": len(all_files),
        "repeats": repeats,
    }
    exe = ccusage_bin(cache)
    runs: dict[str, list[dict[str, Any]]] = {}
    for i in range(repeats):
        runs.setdefault("orjson_all", []).append(baseline(all_files))
        runs.setdefault("import_all", []).append(
            jobvault_import([claude, codex], tmp / f"all-{i}.db", tmp)
        )
        runs.setdefault("orjson_claude", []).append(baseline(claude_files))
        runs.setdefault("import_claude", []).append(
            jobvault_import([claude], tmp / f"claude-{i}.db", tmp)
        )
        if exe:
            runs.setdefault("ccusage", []).append(ccusage_daily(exe, corpus / "claude", tmp))
    for name, measured in runs.items():
        out[name] = median_run(measured)
    out.setdefault("ccusage", None)
    # The databases of all the runs are the same: keep the first as all.db and claude.db (the
    # daemon benchmarks start from them), remove the others.
    for name in ("all", "claude"):
        for i in range(repeats):
            for path in tmp.glob(f"{name}-{i}.db*"):
                if i == 0:
                    path.rename(tmp / path.name.replace(f"{name}-0.db", f"{name}.db"))
                else:
                    path.unlink()
    db_claude = tmp / "claude.db"
    out["report"] = report_after_import(db_claude, tmp)
    shutil.rmtree(tmp / "empty-watch", ignore_errors=True)
    return out
