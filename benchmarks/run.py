"""Run every benchmark side by side, print the table and write docs/benchmarks.md.

    python -m benchmarks.run [--quick] [--doc docs/benchmarks.md] [--work .bench]

Everything runs in a sandbox under --work (its own corpus, temporary HOME and XDG dirs, an
explicit --db/--socket/--watch for each daemon); generated corpora and databases are removed
at the end. ccusage is used when `make bench` installed it in WORK/ccusage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_team,
    corpus,
    import_bench,
    latency,
    read_bench,
    report,
    scale_bench,
    socket_bench,
    synth,
    web_bench,
)
from benchmarks.daemon import Daemon, caught_up
from benchmarks.measure import machine


@dataclass(frozen=True)
class Plan:
    corpus_mb: float
    big_mb: float
    appends: int
    idle_seconds: float
    job_counts: tuple[int, ...]
    clients: tuple[int, ...]
    requests: int
    tail_cap: float
    cell_seconds: float  # time budget of one (method, jobs, clients) socket cell
    import_repeats: int  # each import figure is the median of this many interleaved runs
    histories: tuple[int, int]  # ordinary histories (sessions) for the scale figures
    trickle_seconds: float
    read_sessions: tuple[int, int] = (3000, 10000)  # ordinary histories of the read side
    read_repeats: int = 7  # whole-process runs of each report, interleaved with ccusage


FULL = Plan(250, 1000, 80, 60, (10_000, 100_000), (1, 16), 400, 40.0, 15.0, 3, (3000, 10000), 30)
QUICK = Plan(25, 0, 10, 10, (2_000,), (1, 16), 100, 8.0, 2.0, 1, (300, 1000), 10, (300, 1000), 2)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_all(plan: Plan, work: Path, seed: int) -> dict[str, Any]:
    """Measure everything in a fresh sandbox under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    res: dict[str, Any] = {"machine": machine(), "seed": seed}
    try:
        log(f"generating a {plan.corpus_mb:.0f} MB corpus")
        data = tmp / "corpus"
        res["corpus"] = corpus.generate(data, plan.corpus_mb, seed)
        if plan.big_mb:
            log(f"generating one {plan.big_mb:.0f} MB session")
            corpus.write_big_session(tmp / "big", plan.big_mb)
        log("import: bare orjson, jobvault import, ccusage, report after import")
        res["import"] = import_bench.import_figures(
            data, tmp, work / "ccusage", plan.import_repeats
        )
        if plan.big_mb:
            log("import of the big session (peak RSS)")
            res["big"] = import_bench.big_import(tmp / "big" / "projects", tmp)
            shutil.rmtree(tmp / "big")
        log("daemon: catch-up, append → visible, idle CPU")
        live = tmp / "live"
        live.mkdir()
        roots = [data / "claude" / "projects", data / "codex" / "sessions", live]
        with Daemon(tmp, tmp / "all.db", roots) as daemon:
            res["catch_up_seconds"] = caught_up(daemon.socket, res["import"]["files"])
            res["latency"] = latency.append_visible(
                daemon.socket, live, plan.appends, plan.tail_cap
            )
            time.sleep(3)  # let the last record write and the batch timers settle
            res["idle"] = latency.idle_cpu(daemon.pid, plan.idle_seconds)
        res["sockets"] = {}
        res["synth_seconds"] = {}
        db = tmp / "jobs.db"
        done = 0
        for count in plan.job_counts:
            log(f"socket latency at {count:,} jobs")
            res["synth_seconds"][count] = synth.synthesize(db, done, count)
            done = count
            empty = tmp / "empty"
            empty.mkdir(exist_ok=True)
            with Daemon(tmp, db, [empty]) as daemon:
                res["sockets"][count] = socket_bench.measure(
                    daemon.socket, count, plan.clients, plan.requests, plan.cell_seconds
                )
        log(
            f"ordinary histories of {plan.histories[0]:,} and {plan.histories[1]:,} sessions, "
            "the daemon's trickle, a burst, a backfill"
        )
        res["scale"] = scale_bench.measure(
            tmp, work / "ccusage", plan.histories, plan.import_repeats, plan.trickle_seconds, seed
        )
        log(f"dashboard at {done:,} jobs, a 10,000-message job page, the statusline")
        res["dashboard"] = web_bench.measure(tmp, db)
        log("read side: reports as processes and on the socket, status, beside ccusage")
        res["read_side"] = read_bench.measure(
            tmp, work / "ccusage", plan.read_sessions, plan.read_repeats, log
        )
        # Last: the kernel writes its 7.7 GB cluster back long after the server stopped, and
        # the read side measured after it was slower than measured alone.
        log("team vault: first push, incremental push, team reports (PostgreSQL)")
        res["team"] = bench_team.measure(tmp, quick=plan is QUICK)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the one-minute version")
    parser.add_argument("--doc", type=Path, help="write the figures into this document")
    parser.add_argument("--work", type=Path, default=Path(".bench"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.monotonic()
    res = run_all(QUICK if args.quick else FULL, args.work.resolve(), args.seed)
    res["elapsed"] = time.monotonic() - started
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["command"] = "make bench-quick" if args.quick else "make bench"
    res["ccusage_version"] = (
        import_bench.CCUSAGE_VERSION if res["import"]["ccusage"] is not None else None
    )
    (args.work / ("results-quick.json" if args.quick else "results.json")).write_text(
        json.dumps(res, indent=1, default=str)
    )
    text = report.section(res)
    print(text)
    print("\n".join(bench_team.rows(res["team"])))
    if args.doc is not None:
        report.write_doc(args.doc, res)
        stamp = f"Run of {res['date']} with `{res['command']}`."
        bench_team.write_doc(args.doc, res["team"], stamp)
        log(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
