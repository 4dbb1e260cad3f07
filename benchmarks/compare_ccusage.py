"""Compare jobvault's token totals with ccusage's on the same Claude Code transcripts.

    python benchmarks/compare_ccusage.py DIR [--ccusage CMD]

DIR holds `projects/` (a CLAUDE_CONFIG_DIR). The script imports DIR/projects into a
temporary database, runs `ccusage claude session|daily --json --offline` with
CLAUDE_CONFIG_DIR=DIR, HOME pointed at an empty temporary directory and TZ=UTC, and prints
both side by side. CMD defaults to `npx --yes ccusage@20.0.24`; any ccusage 20 works.

ccusage reports a flat `agent-<id>.jsonl` subagent file as a session of its own, while
jobvault attaches it to its parent session; the script folds such ccusage sessions into the
session their lines name, so the per-session figures compare like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

KEYS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens")
OURS = ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens")


def ccusage(cmd: str, report: str, config_dir: Path, home: Path) -> dict[str, object]:
    env = {**os.environ, "CLAUDE_CONFIG_DIR": str(config_dir), "HOME": str(home), "TZ": "UTC"}
    out = subprocess.run(
        [*shlex.split(cmd), "claude", report, "--json", "--offline"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def flat_parent(path: Path) -> str | None:
    with path.open("rb") as fh:
        for line in fh:
            try:
                session = json.loads(line).get("sessionId")
            except (ValueError, AttributeError):
                continue
            if isinstance(session, str):
                return session
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a folder holding projects/")
    parser.add_argument("--ccusage", default="npx --yes ccusage@20.0.24")
    args = parser.parse_args()
    projects = args.dir / "projects"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        db = Path(tmp) / "jv.db"
        env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(Path(tmp) / "data")}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "jobvault",
                "import",
                str(projects),
                "--db",
                str(db),
                "--no-progress",
                "--json",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        conn = sqlite3.connect(db)
        ours = {
            r[0]: r[1:]
            for r in conn.execute(f"SELECT session_id, {', '.join(OURS)}, cost_usd FROM jobs")
        }
        daily_ours = {
            r[0]: r[1:]
            for r in conn.execute(
                f"SELECT substr(hour, 1, 10), {', '.join('SUM(' + k + ')' for k in OURS)}, "
                "SUM(cost_usd) FROM job_usage GROUP BY 1"
            )
        }
        conn.close()
        sessions = ccusage(args.ccusage, "session", args.dir, home)["sessions"]
        daily = ccusage(args.ccusage, "daily", args.dir, home)["daily"]

    theirs: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for s in sessions:  # type: ignore[attr-defined]
        sid = s["sessionId"]
        if sid.startswith("agent-"):
            flat = next(projects.glob(f"*/{sid}.jsonl"), None)
            sid = (flat_parent(flat) if flat else None) or sid
        row = theirs[sid]
        for i, key in enumerate(KEYS):
            row[i] += s[key]
        row[4] += s["totalCost"]

    print("per session (input, output, cache write, cache read, cost):")
    diffs = 0
    for sid in sorted(set(ours) | set(theirs)):
        a = ours.get(sid)
        b = theirs.get(sid)
        tokens_equal = a is not None and b is not None and list(a[:4]) == b[:4]
        cost_ok = a is not None and b is not None and abs(a[4] - b[4]) <= 0.01 * max(b[4], 1e-9)
        mark = "=" if tokens_equal and cost_ok else "≠"
        if a is not None and b is None and not any(a[:4]):
            mark = "= (no usage: ccusage lists no session)"
        elif mark == "≠":
            diffs += 1
        print(f"  {mark} {sid[:36]:36}  jobvault {a}  ccusage {b}")
    print("per UTC day:")
    for d in daily:  # type: ignore[attr-defined]
        a = daily_ours.get(d["date"])
        b = [d[k] for k in KEYS] + [d["totalCost"]]
        same = a is not None and list(a[:4]) == b[:4] and abs(a[4] - b[4]) <= 0.01 * max(b[4], 1e-9)
        diffs += not same
        print(f"  {'=' if same else '≠'} {d['date']}  jobvault {a}  ccusage {b}")
    print("all equal" if diffs == 0 else f"{diffs} difference(s)")
    return 0 if diffs == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
