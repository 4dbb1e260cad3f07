"""Socket latency of the read methods at a given number of jobs, with 1 and N clients."""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.import_bench import DAILY_SQL
from benchmarks.measure import percentile
from benchmarks.rpc import Client, RpcFailure, first_working
from benchmarks.synth import job_id

# Each method with the parameter shapes to try (the first the daemon accepts is used).
CANDIDATES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "jobs.get": [("jobs.get", {"id": "claude:" + job_id(1)})],
    "jobs.list": [("jobs.list", {"limit": 50})],
    "stats.usage": [
        ("stats.usage", {"group_by": "day"}),
        ("stats.usage", {"by": "day"}),
        ("stats.usage", {}),
    ],
    "sql (daily usage)": [("sql", {"query": DAILY_SQL})],
    "search": [
        ("search", {"query": "flaky parser"}),
        ("search", {"q": "flaky parser"}),
        ("search", {"text": "flaky parser"}),
    ],
}


def _params(method: str, params: dict[str, Any], rng: random.Random, jobs: int) -> dict[str, Any]:
    if method == "jobs.get":
        n = rng.randrange(jobs)
        return {"id": ("codex:" if n % 7 == 0 else "claude:") + job_id(n)}
    return params


def _client(
    args: tuple[str, str, dict[str, Any], int, int, int, float],
) -> tuple[list[float], list[str]]:
    """One client's latencies, and the kinds of the error answers it got (a `timeout` or a
    `busy` under 16 clients is a figure too, not a reason to stop the run)."""
    socket, method, params, jobs, requests, seed, budget = args
    rng = random.Random(seed)
    times: list[float] = []
    errors: list[str] = []
    with Client(Path(socket)) as client:
        for _ in range(3):  # warm the connection and the reader's page cache
            try:
                client.call(method, _params(method, params, rng, jobs))
            except RpcFailure as exc:
                errors.append(exc.kind)
        deadline = time.perf_counter() + budget  # a slow method gets fewer samples, not hours
        for done in range(requests):
            if done >= 5 and time.perf_counter() > deadline:
                break
            p = _params(method, params, rng, jobs)
            start = time.perf_counter()
            try:
                client.call(method, p)
            except RpcFailure as exc:
                errors.append(exc.kind)
                continue
            times.append(time.perf_counter() - start)
    return times, errors


def measure(
    socket: Path, jobs: int, clients: tuple[int, ...], requests: int, budget: float
) -> dict[str, Any]:
    """p50/p99 (ms) of each available method, per client count; None for absent methods."""
    out: dict[str, Any] = {}
    with Client(socket) as probe:
        chosen = {name: first_working(probe, cands) for name, cands in CANDIDATES.items()}
    ctx = multiprocessing.get_context("fork")
    for name, picked in chosen.items():
        if picked is None:
            out[name] = None
            continue
        method, params = picked
        out[name] = {"params": params}
        for n in clients:
            per_client = max(requests // n, 20)
            args = [(str(socket), method, params, jobs, per_client, i, budget) for i in range(n)]
            with ctx.Pool(n) as pool:
                results = pool.map(_client, args)
            times = [t for chunk, _ in results for t in chunk]
            errors = [kind for _, kinds in results for kind in kinds]
            out[name][n] = {
                "p50": 1000 * percentile(times, 50),
                "p99": 1000 * percentile(times, 99),
                "n": len(times),
                "errors": {kind: errors.count(kind) for kind in sorted(set(errors))},
            }
    return out
