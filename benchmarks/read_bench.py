"""The read side, side by side with ccusage: reports as whole processes, on an open socket,
and `status`, on histories of ordinary sessions (issue 13).

    python -m benchmarks.read_bench [--sessions 3000 10000] [--repeats 7] [--work .bench]

On the smaller history (`corpus.ordinary_history`, 3,000 sessions in `make bench`):

* `ccusage claude daily --json --offline`, `jobvault stats daily --json` and
  `jobvault jobs --json --limit 50` as whole processes, interleaved, each `repeats` times:
  with the daemon stopped (the CLI reads the database) and running (the CLI asks it). Each
  measured run follows one unmeasured run of the same command (hyperfine's `--warmup`), for
  both tools: on this VM a process started right after ccusage's 264 MB read found its
  interpreter and modules out of the page cache and took 20 to 40 ms longer, which in an
  interleaved run fell on whichever command came first;
* `stats.usage` by day on an open connection (UTC, which reads `daily_metrics`, and
  Europe/Paris, which reads the hourly rollup), `jobs.list`, and `status`.

On the larger one (10,000 sessions), the daemon watching every file: `status` and
`stats.usage` on an open connection. Every process runs with TZ=UTC and a sandboxed HOME.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.corpus import ordinary_history
from benchmarks.daemon import Daemon, caught_up, sandbox_env
from benchmarks.import_bench import ccusage_bin, ccusage_daily, jobvault_import
from benchmarks.measure import cpu_seconds, percentile, run
from benchmarks.rpc import Client

# The installed console script, as a user runs it (`python -m jobvault` adds runpy's cost).
_SCRIPT = Path(sys.executable).with_name("jobvault")
JOBVAULT_CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "jobvault"]
TARGETS = {"process_x": 15.0, "socket_x": 300.0, "status_ms": 2.0}


def _timed(client: Client, method: str, params: dict[str, Any], n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.call(method, params)
        times.append(1000 * (time.perf_counter() - start))
    return {"p50": statistics.median(times), "p99": percentile(times, 99), "n": n}


def settled(pid: int, timeout: float = 120.0) -> float:
    """Wait until the daemon's start-up work is over (under 2 % of a core for a second):
    the figures are of a daemon at rest, as a user's is between sessions."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < 0.02:
            break
    return time.monotonic() - start


def _history(tmp: Path, sessions: int, log: Any) -> tuple[Path, Path, dict[str, Any]]:
    corpus = tmp / f"ordinary-{sessions}"
    log(f"read side: {sessions:,} ordinary sessions")
    shape: dict[str, Any] = dict(ordinary_history(corpus, sessions))
    root = corpus / "claude" / "projects"
    db = tmp / f"ordinary-{sessions}" / "vault" / "jobvault.db"
    shape["import"] = jobvault_import([root], db, tmp)
    return root, db, shape


def _warm(cmd: list[str], env: dict[str, str]) -> None:
    """One unmeasured run of `cmd` (see the module's docstring: every measured run follows
    one of its own command, as hyperfine's --warmup)."""
    run(cmd, env=env)


def measure(
    tmp: Path, cache: Path, sessions: tuple[int, int] = (3000, 10000), repeats: int = 7,
    log: Any = print,
) -> dict[str, Any]:  # fmt: skip
    """Every read-side figure; ccusage's when `make bench` installed it under `cache`."""
    small, large = sessions
    env = sandbox_env(tmp)
    # As installed: Python's compiled bytecode is kept (pip writes it at install time; a
    # shell with PYTHONDONTWRITEBYTECODE would have every process compile every module).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    run([*JOBVAULT_CLI, "--version"], env=env)  # compile once
    exe = ccusage_bin(cache)
    root, db, shape = _history(tmp, small, log)
    res: dict[str, Any] = {"sessions": small, "large_sessions": large, "history": shape,
                           "repeats": repeats, "cli": JOBVAULT_CLI[-1]}  # fmt: skip
    commands = {
        "stats daily --json": ["stats", "daily", "--json"],
        "jobs --json --limit 50": ["jobs", "--json", "--limit", "50"],
    }
    walls: dict[str, list[float]] = {"ccusage": []}
    ccusage_days: dict[str, Any] | None = None
    log("read side: whole processes, daemon stopped")
    for _ in range(repeats):
        if exe is not None:
            ccusage_daily(exe, root.parent, tmp)  # (its warm-up run)
            ccusage_days = ccusage_daily(exe, root.parent, tmp)
            walls["ccusage"].append(ccusage_days["wall"])
        for name, args in commands.items():
            _warm([*JOBVAULT_CLI, *args, "--db", str(db)], env)
            result = run([*JOBVAULT_CLI, *args, "--db", str(db)], env=env)
            walls.setdefault(f"{name} (database)", []).append(result.seconds)
    log("read side: whole processes and the socket, daemon running")
    with Daemon(tmp, db, [root]) as daemon:
        res["catch_up_seconds"] = caught_up(daemon.socket, small)
        res["settled_seconds"] = settled(daemon.pid)
        for _ in range(repeats):
            if exe is not None:
                ccusage_daily(exe, root.parent, tmp)  # (its warm-up run)
                walls["ccusage"].append(ccusage_daily(exe, root.parent, tmp)["wall"])
            for name, args in {**commands, "status --json": ["status", "--json"]}.items():
                _warm([*JOBVAULT_CLI, *args, "--socket", str(daemon.socket)], env)
                result = run([*JOBVAULT_CLI, *args, "--socket", str(daemon.socket)], env=env)
                walls.setdefault(f"{name} (daemon)", []).append(result.seconds)
        with Client(daemon.socket) as client:
            res["socket"] = {
                "stats.usage day UTC": _timed(
                    client, "stats.usage", {"group_by": "day", "timezone": "UTC"}, 200
                ),
                "stats.usage day Europe/Paris": _timed(
                    client, "stats.usage", {"group_by": "day", "timezone": "Europe/Paris"}, 200
                ),
                "jobs.list limit 50": _timed(client, "jobs.list", {"limit": 50}, 200),
                "status": _timed(client, "status", {}, 500),
            }
            daily = client.call("stats.usage", {"group_by": "day", "timezone": "UTC"})
    res["walls"] = walls
    res["medians"] = {k: statistics.median(v) for k, v in walls.items() if v}
    res["ccusage"] = (
        {"days": ccusage_days["days"], "output_tokens": ccusage_days["output_tokens"],
         "rss_mb": ccusage_days["rss_mb"]} if ccusage_days else None
    )  # fmt: skip
    res["jobvault_days"] = {
        "days": len(daily["rows"]),
        "output_tokens": daily["totals"]["output_tokens"],
    }
    shutil.rmtree(root.parent.parent, ignore_errors=True)

    root, db, shape = _history(tmp, large, log)
    res["large_history"] = shape
    with Daemon(tmp, db, [root]) as daemon:
        res["large_catch_up_seconds"] = caught_up(daemon.socket, large)
        res["large_settled_seconds"] = settled(daemon.pid)
        with Client(daemon.socket) as client:
            res["large_socket"] = {
                "status": _timed(client, "status", {}, 500),
                "stats.usage day UTC": _timed(
                    client, "stats.usage", {"group_by": "day", "timezone": "UTC"}, 200
                ),
                "stats.usage day Europe/Paris": _timed(
                    client, "stats.usage", {"group_by": "day", "timezone": "Europe/Paris"}, 200
                ),
            }
            res["large_files_tracked"] = client.call("status")["files_tracked"]
    shutil.rmtree(root.parent.parent, ignore_errors=True)
    return res


def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def ratios(res: dict[str, Any]) -> dict[str, float | None]:
    """ccusage's median wall time over each jobvault figure (None without ccusage)."""
    med = res["medians"]
    cc = med.get("ccusage")
    out: dict[str, float | None] = {}
    for name, value in med.items():
        if name != "ccusage":
            out[name] = cc / value if cc else None
    usage = res["socket"]["stats.usage day UTC"]["p50"] / 1000
    out["stats.usage (socket)"] = cc / usage if cc else None
    return out


def target_rows(res: dict[str, Any]) -> list[str]:
    """Rows for the targets table of docs/benchmarks.md."""
    r = ratios(res)
    n = f"{res['sessions']:,}"
    rows = []
    for name in ("stats daily --json", "jobs --json --limit 50"):
        for where in ("database", "daemon"):
            x = r.get(f"{name} ({where})")
            rows.append(
                f"| `jobvault {name}` process ({where}) ≥ 15 × faster than `ccusage claude "
                f"daily`, {n} sessions | {_f(x)} × | "
                f"{_mark(None if x is None else x >= TARGETS['process_x'])} |"
            )
    x = r["stats.usage (socket)"]
    rows.append(
        f"| `stats.usage` by day on an open connection ≥ 300 × faster than ccusage, {n} "
        f"sessions | {_f(x, 0)} × | {_mark(None if x is None else x >= TARGETS['socket_x'])} |"
    )
    status = res["large_socket"]["status"]
    rows.append(
        f"| `status` ≤ 2 ms at {res['large_sessions']:,} sessions | p50 {_f(status['p50'], 2)} "
        f"ms, p99 {_f(status['p99'], 2)} ms | {_mark(status['p50'] <= TARGETS['status_ms'])} |"
    )
    return rows


def rows(res: dict[str, Any]) -> list[str]:
    """The read side's section of docs/benchmarks.md."""
    med, r = res["medians"], ratios(res)
    h = res["history"]
    out = [
        f"{res['sessions']:,} ordinary sessions ({h['bytes'] / 1e6:,.0f} MB, {h['lines']:,} "
        f"lines, {h['resumed']} resumed; imported in {h['import']['wall']:.1f} s). Each whole "
        f"process ran {res['repeats']} times, interleaved with ccusage, each measured run "
        "after one unmeasured run of the same command; medians (all runs below). The CLI is "
        "the installed `jobvault` script; TZ=UTC for every process.",
        "",
        "| process | median s | ccusage ÷ it |",
        "|---|---:|---:|",
    ]
    if "ccusage" in med:
        out.append(f"| `ccusage claude daily --json --offline` | {med['ccusage']:.3f} | 1 |")
    for name, value in med.items():
        if name != "ccusage":
            out.append(f"| `jobvault {name}` | {value:.3f} | {_f(r.get(name))} × |")
    out += [
        "",
        "| on an open connection | sessions | p50 ms | p99 ms | requests |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, sessions in (("socket", res["sessions"]), ("large_socket", res["large_sessions"])):
        for name, f in res[key].items():
            out.append(f"| `{name}` | {sessions:,} | {f['p50']:.2f} | {f['p99']:.2f} | "
                       f"{f['n']:,} |")  # fmt: skip
    cc, jv = res["ccusage"], res["jobvault_days"]
    out += [
        "",
        "All runs (s): "
        + "; ".join(f"{k}: {', '.join(f'{w:.3f}' for w in v)}" for k, v in res["walls"].items()),
        "",
        f"The daemon tracked {res['large_files_tracked']:,} files at {res['large_sessions']:,} "
        f"sessions ({res['large_history']['bytes'] / 1e6:,.0f} MB; caught up "
        f"{res['large_catch_up_seconds']:.1f} s after start, at rest "
        f"{res.get('large_settled_seconds', 0):.0f} s later, when the figures were taken). "
        "Daily totals: jobvault "
        f"{jv['days']} days, {jv['output_tokens']:,} output tokens"
        + (
            f"; ccusage {cc['days']} days, {cc['output_tokens']:,} (peak RSS {cc['rss_mb']:.0f} "
            "MB)."
            if cc
            else "."
        ),
    ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs=2, default=(3000, 10000))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path(".bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="read-", dir=args.work))
    try:
        res = measure(tmp.resolve(), args.work.resolve() / "ccusage", tuple(args.sessions),
                      args.repeats)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=1, default=str))
    print("\n".join(["| target | measured | |", "|---|---|---|", *target_rows(res), "",
                     *rows(res)]))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
