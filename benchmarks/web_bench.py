"""The dashboard and the statusline, timed against a real `jobvault run` (a subprocess).

    python -m benchmarks.web_bench [--jobs 100000] [--work .bench]

* the overview page (GET /, rendered on the server) on a vault of synthesized jobs, for the
  last 30 and 90 days of its data and for all of it;
* the page of a session of 10,000 messages: the time to its first byte (when the browser
  starts rendering), the first visit (replayed from the archive) and later ones (cached);
* `jobvault statusline` as the process Claude Code starts, with the daemon running.

Figures, not assertions: the targets are in docs/benchmarks.md and `make bench` prints them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from benchmarks.daemon import JOBVAULT, Daemon, sandbox_env
from benchmarks.rpc import Client

SESSION = "10000000-aaaa-4bbb-8ccc-000000000000"
EXCHANGES = 5000  # a prompt, then 5000 x (assistant tool call, tool result): 10,001 messages


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def write_long_session(folder: Path, exchanges: int = EXCHANGES) -> Path:
    """A Claude Code session of `2 * exchanges + 1` messages, each call with its result."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{SESSION}.jsonl"
    start = datetime(2025, 6, 1, 9, tzinfo=UTC)

    def at(second: int) -> str:
        return (start + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    base = {
        "sessionId": SESSION,
        "cwd": "/home/dev/big",
        "version": "2.0.37",
        "gitBranch": "main",
        "userType": "external",
        "isSidechain": False,
    }
    with path.open("wb") as fh:
        fh.write(
            _line(
                {
                    **base,
                    "type": "user",
                    "uuid": "u0",
                    "timestamp": at(0),
                    "message": {"role": "user", "content": "refactor the parser"},
                }
            )
        )
        for i in range(exchanges):
            tool = f"toolu_{i:06d}"
            fh.write(
                _line(
                    {
                        **base,
                        "type": "assistant",
                        "uuid": f"a{i}",
                        "timestamp": at(2 * i + 1),
                        "requestId": f"req_{i}",
                        "message": {
                            "id": f"msg_{i}",
                            "role": "assistant",
                            "type": "message",
                            "model": "claude-sonnet-4-20250514",
                            "content": [
                                {"type": "text", "text": f"Step {i}: reading."},
                                {
                                    "type": "tool_use",
                                    "id": tool,
                                    "name": "Bash",
                                    "input": {"command": f"sed -n {i},+40p src/p.py"},
                                },
                            ],
                            "usage": {
                                "input_tokens": 12,
                                "output_tokens": 80,
                                "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 20_000,
                            },
                        },
                    }
                )
            )
            fh.write(
                _line(
                    {
                        **base,
                        "type": "user",
                        "uuid": f"r{i}",
                        "timestamp": at(2 * i + 2),
                        "message": {
                            "role": "user",
                            "content": [
                                {
                                    "type": "tool_result",
                                    "tool_use_id": tool,
                                    "content": "\n".join(
                                        f"line {n} of the output" for n in range(12)
                                    ),
                                    "is_error": i % 50 == 49,
                                }
                            ],
                        },
                    }
                )
            )
    return path


class Page:
    """GET requests to the dashboard with its cookie, timed to the first byte and to the end."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cookie = "jobvault_dashboard=" + parts.query.split("token=", 1)[1]

    def get(self, path: str) -> tuple[float, float, int, int]:
        """(seconds to the first body byte, seconds to the end, status, bytes)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            began = time.perf_counter()
            conn.request("GET", path, headers={"Cookie": self.cookie})
            response = conn.getresponse()
            first = response.read(1)
            ttfb = time.perf_counter() - began
            rest = response.read()
            return ttfb, time.perf_counter() - began, response.status, len(first) + len(rest)
        finally:
            conn.close()


def _median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 1)


def _dashboard(daemon: Daemon) -> Page:
    with Client(daemon.socket) as client:
        return Page(client.call("dashboard.url")["url"])


def _start(tmp: Path, db: Path, watch: list[Path]) -> Daemon:
    daemon = Daemon(tmp, db, watch)
    daemon.env["JOBVAULT_DASHBOARD_PORT"] = "0"  # any free port: the machine is shared
    return daemon


def overview_figures(tmp: Path, db: Path, repeats: int = 7) -> dict[str, Any]:
    """GET / on a vault of synthesized jobs, over periods ending at the data's last day."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        jobs, last = conn.execute("SELECT COUNT(*), MAX(started_at) FROM jobs").fetchone()
    finally:
        conn.close()
    end = datetime.fromisoformat(last.replace("Z", "+00:00")).date()
    cases = {
        "30 days": f"/?since={end - timedelta(days=29)}&tz=UTC",
        "30 days, America/New_York": f"/?since={end - timedelta(days=29)}&tz=America/New_York",
        "90 days": f"/?since={end - timedelta(days=89)}&tz=UTC",
        "all time": "/?period=all&tz=UTC",
    }
    empty = tmp / "empty-web"
    empty.mkdir(exist_ok=True)
    out: dict[str, Any] = {"jobs": jobs, "cases": {}}
    with _start(tmp, db, [empty]) as daemon:
        page = _dashboard(daemon)
        for label, path in cases.items():
            page.get(path)  # warm the page cache of SQLite, as a second visit would
            runs = [page.get(path) for _ in range(repeats)]
            assert all(r[2] == 200 for r in runs), (label, runs[0])
            out["cases"][label] = {
                "median_ms": _median_ms([r[1] for r in runs]),
                "max_ms": round(1000 * max(r[1] for r in runs), 1),
                "kb": round(runs[0][3] / 1024),
            }
    return out


def job_page_figures(tmp: Path, repeats: int = 7) -> dict[str, Any]:
    """The page of a 10,000-message session: first byte and whole page, first and later."""
    root = tmp / "long" / "projects"
    path = write_long_session(root / "-home-dev-big")
    db = tmp / "long.db"
    subprocess.run(
        [*JOBVAULT, "import", str(root), "--db", str(db), "--json"],
        check=True,
        capture_output=True,
        env=sandbox_env(tmp),
    )
    out: dict[str, Any] = {"messages": 2 * EXCHANGES + 1, "bytes": path.stat().st_size}
    with _start(tmp, db, [tmp / "long" / "none"]) as daemon:
        page = _dashboard(daemon)
        url = "/jobs/" + quote(f"claude:{SESSION}", safe="")
        first = page.get(url)
        later = [page.get(url) for _ in range(repeats)]
        more = [page.get(url + "/replay?offset=2000&limit=200") for _ in range(repeats)]
    assert first[2] == 200 and all(r[2] == 200 for r in later + more)
    out.update(
        first_ttfb_ms=round(1000 * first[0], 1),
        first_total_ms=round(1000 * first[1], 1),
        ttfb_ms=_median_ms([r[0] for r in later]),
        total_ms=_median_ms([r[1] for r in later]),
        next_page_ms=_median_ms([r[1] for r in more]),
        kb=round(first[3] / 1024),
    )
    return out


def statusline_figures(tmp: Path, db: Path, runs: int = 31) -> dict[str, Any]:
    """`jobvault statusline` as a process (the console script), the daemon running on `db`."""
    script = Path(sys.executable).with_name("jobvault")
    command = [str(script)] if script.exists() else [*JOBVAULT]
    status = json.dumps(
        {
            "session_id": "00000001-5a5a-4b4b-8c8c-000000000001",
            "cost": {"total_cost_usd": 1.25},
            "context_window": {"used_percentage": 40},
            "rate_limits": {
                "five_hour": {"used_percentage": 30, "resets_at": 1_900_000_000},
                "seven_day": {"used_percentage": 10, "resets_at": 1_900_300_000},
            },
        }
    ).encode()
    empty = tmp / "empty-status"
    empty.mkdir(exist_ok=True)
    walls: list[float] = []
    with _start(tmp, db, [empty]) as daemon:
        line = ""
        for _ in range(runs):
            began = time.perf_counter()
            proc = subprocess.run(
                [*command, "statusline", "--socket", str(daemon.socket)],
                input=status,
                capture_output=True,
                env=daemon.env,
            )
            walls.append(time.perf_counter() - began)
            line = proc.stdout.decode().strip()
    walls.sort()
    return {
        "runs": runs,
        "median_ms": _median_ms(walls),
        "p90_ms": round(1000 * walls[int(0.9 * (len(walls) - 1))], 1),
        "min_ms": round(1000 * walls[0], 1),
        "line": line,
        "command": " ".join(Path(c).name for c in command),
    }


def measure(tmp: Path, db: Path) -> dict[str, Any]:
    """Every dashboard figure; `db` is a vault of synthesized jobs (benchmarks/synth.py)."""
    return {
        "overview": overview_figures(tmp, db),
        "job_page": job_page_figures(tmp),
        "statusline": statusline_figures(tmp, db),
    }


def rows(res: dict[str, Any]) -> list[str]:
    """The section of docs/benchmarks.md (a table per figure)."""
    ov, jp, st = res["overview"], res["job_page"], res["statusline"]
    lines = [
        f"The overview (`GET /`, rendered on the server, through the daemon's reader threads) "
        f"on {ov['jobs']:,} synthesized jobs, periods ending at the data's last day; "
        "median of 7 after one warm-up request:",
        "",
        "| period | median ms | max ms | page KB |",
        "|---|---:|---:|---:|",
        *[
            f"| {label} | {c['median_ms']:,} | {c['max_ms']:,} | {c['kb']} |"
            for label, c in ov["cases"].items()
        ],
        "",
        f"A job page of {jp['messages']:,} messages ({jp['bytes'] / 1e6:.1f} MB of transcript): "
        f"the first visit replays it from the archive (first byte {jp['first_ttfb_ms']} ms, "
        f"whole page {jp['first_total_ms']} ms, {jp['kb']} KB: the record and the first 200 "
        f"events); later visits {jp['ttfb_ms']} ms to the first byte, {jp['total_ms']} ms in "
        f"all (medians); the next 200 events {jp['next_page_ms']} ms.",
        "",
        f"`{st['command']} statusline` as a process with the daemon running on the same vault, "
        f"{st['runs']} runs: median {st['median_ms']} ms, p90 {st['p90_ms']} ms, fastest "
        f"{st['min_ms']} ms. It printed: `{st['line']}`.",
    ]
    return lines


def targets(res: dict[str, Any]) -> list[str]:
    """Rows for the targets table."""
    ov = res["overview"]["cases"]["30 days"]["median_ms"]
    jp = res["job_page"]["first_ttfb_ms"]
    st = res["statusline"]["median_ms"]
    jobs = res["overview"]["jobs"]

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return [
        f"| overview at {jobs:,} jobs ≤ 300 ms (30 days) | {ov:,} ms | {mark(ov <= 300)} |",
        f"| 10,000-message job page starts rendering ≤ 300 ms | first byte {jp} ms (first visit) "
        f"| {mark(jp <= 300)} |",
        f"| `jobvault statusline` ≤ 50 ms median, daemon running | {st} ms | {mark(st <= 50)} |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path(".bench"))
    parser.add_argument("--db", type=Path, help="a vault of synthesized jobs to reuse")
    args = parser.parse_args()
    from benchmarks import synth

    args.work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="web-", dir=args.work))
    try:
        db = args.db or tmp / "jobs.db"
        if args.db is None:
            print(f"synthesizing {args.jobs:,} jobs …", file=sys.stderr)
            synth.synthesize(db, 0, args.jobs)
        res = measure(tmp, db)
        print(json.dumps(res, indent=1))
        print("\n".join(["", *targets(res), "", *rows(res)]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
