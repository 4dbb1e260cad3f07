"""Compare jobvault's token totals and costs with ccusage's on the same transcripts.

    python benchmarks/compare_ccusage.py DIR [DIR…] [--ccusage CMD] [--markdown]
    python benchmarks/compare_ccusage.py --stage claude|codex FILES_DIR …

Each DIR is a CLAUDE_CONFIG_DIR (holding `projects/`), a CODEX_HOME (holding `sessions/`
and/or `archived_sessions/`), or both. `--stage` takes loose transcript files instead (such
as ../shared/samples) and lays them out first: Claude files under `projects/<folder>/` as
they are, Codex files as `sessions/2026/01/01/rollout-…-<uuid>.jsonl` (the uuid derived from
the file name). The script imports DIR into a temporary database, runs
`ccusage claude|codex session|daily --json --offline` with CLAUDE_CONFIG_DIR / CODEX_HOME
pointed at DIR, HOME at an empty temporary directory and TZ=UTC, and prints both side by
side (`--markdown`: as the table in docs/benchmarks.md). CMD defaults to the ccusage that
`make bench` installs under .bench/, else `npx --yes ccusage@20.0.24`.

ccusage reports a flat `agent-<id>.jsonl` subagent file as a session of its own, while
jobvault attaches it to its parent session; the script folds such ccusage sessions into the
session their lines name, so the per-session figures compare like for like. A session that
jobvault does not list (no conversation) and ccusage lists with no usage compares equal.
ccusage 20.0.24 does not read compressed rollouts (`rollout-*.jsonl.zst`, Codex 0.137+):
for a home that holds any, it reads a decompressed copy (`plain_copy`) while jobvault
imports the home as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import zstandard

KEYS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens")
OURS = ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens")
# npm's launcher (it makes the native binary executable first, which npm leaves unset).
LOCAL_CCUSAGE = Path(__file__).resolve().parents[1] / ".bench/ccusage/node_modules/.bin/ccusage"
_UUID = re.compile(r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})")

Figures = list[float]  # input, output, cache write, cache read, cost


@dataclass
class Row:
    source: str
    kind: str  # "session" | "day"
    key: str
    ours: Figures | None
    theirs: Figures | None

    @property
    def equal_tokens(self) -> bool:
        a = self.ours or [0, 0, 0, 0, 0.0]
        b = self.theirs or [0, 0, 0, 0, 0.0]
        return [int(x) for x in a[:4]] == [int(x) for x in b[:4]]

    @property
    def equal_cost(self) -> bool:
        a = (self.ours or [0, 0, 0, 0, 0.0])[4]
        b = (self.theirs or [0, 0, 0, 0, 0.0])[4]
        return abs(a - b) <= max(0.01 * max(abs(b), abs(a)), 1e-6)

    @property
    def mark(self) -> str:
        return "=" if self.equal_tokens and self.equal_cost else "≠"


def installed_ccusage() -> str | None:
    """The ccusage that `make test` and `make bench` install under .bench/ (None: absent)."""
    return str(LOCAL_CCUSAGE) if LOCAL_CCUSAGE.exists() and shutil.which("node") else None


def default_ccusage() -> str:
    return installed_ccusage() or "npx --yes ccusage@20.0.24"


def plain_copy(root: Path, dst: Path) -> Path:
    """Copy a home to `dst` with every `x.jsonl.zst` decompressed to `x.jsonl` (ccusage 20.0.24
    reads only `.jsonl`), except where `x.jsonl` exists too: that is the newer form (Codex
    materialised it to resume the session, and appends there). Modification times are kept."""
    dctx = zstandard.ZstdDecompressor()
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        target = dst / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not path.name.endswith(".jsonl.zst"):
            shutil.copy2(path, target)
            continue
        if path.with_name(path.name[: -len(".zst")]).exists():
            continue
        target = target.with_name(target.name[: -len(".zst")])
        with path.open("rb") as src, target.open("wb") as out:
            dctx.copy_stream(src, out)
        shutil.copystat(path, target)
    return dst


def ccusage(cmd: str, source: str, report: str, env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [*shlex.split(cmd), source, report, "--json", "--offline"],
        env={**os.environ, **env, "TZ": "UTC"},
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


def stage(kind: str, src: Path, dst: Path, compact: bool = False) -> Path:
    """Lay loose transcript files out as a CLAUDE_CONFIG_DIR or a CODEX_HOME under dst.

    `compact` re-serializes each JSON line without spaces, as the agents write them (ccusage
    20.0.24 skips lines written with `"type": "assistant"` spacing).
    """
    files = sorted(p for p in src.rglob("*.jsonl") if p.is_file())
    targets: list[tuple[Path, Path]] = []
    if kind == "claude":
        for path in files:
            rel = path.relative_to(src)
            parts = rel.parts if len(rel.parts) > 1 else (src.name, *rel.parts)
            targets.append((path, dst / "projects" / Path(*parts)))
    else:
        day = dst / "sessions" / "2026" / "01" / "01"
        for n, path in enumerate(files):
            h = hashlib.sha256(str(path.relative_to(src)).encode()).hexdigest()
            uuid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
            targets.append((path, day / f"rollout-2026-01-01T00-00-{n:02d}-{uuid}.jsonl"))
    for path, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not compact:
            shutil.copyfile(path, target)
            continue
        out = []
        for raw in path.read_bytes().splitlines():
            try:
                out.append(json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False))
            except ValueError:
                out.append(raw.decode("utf-8", "replace"))
        target.write_text("\n".join(out) + "\n", encoding="utf-8")
    return dst


def import_dir(root: Path, db: Path, home: Path, tmp: Path) -> None:
    roots = [root / sub for sub in ("projects", "sessions", "archived_sessions")]
    roots = [r for r in roots if r.is_dir()]
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(tmp / "data")}
    subprocess.run(
        [sys.executable, "-m", "jobvault", "import", *map(str, roots), "--db", str(db),
         "--no-progress", "--json"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip


def ours(db: Path, source: str) -> tuple[dict[str, Figures], dict[str, Figures]]:
    conn = sqlite3.connect(db)
    try:
        sessions = {
            r[0]: list(r[1:])
            for r in conn.execute(
                f"SELECT session_id, {', '.join(OURS)}, cost_usd FROM jobs WHERE source = ?",
                (source,),
            )
        }
        daily = {
            r[0]: list(r[1:])
            for r in conn.execute(
                f"SELECT substr(u.hour, 1, 10), {', '.join('SUM(u.' + k + ')' for k in OURS)}, "
                "SUM(u.cost_usd) FROM job_usage u JOIN jobs j ON j.id = u.job_id "
                "WHERE j.source = ? GROUP BY 1",
                (source,),
            )
        }
    finally:
        conn.close()
    return sessions, daily


def compare(root: Path, cmd: str) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        home.mkdir()
        db = tmp / "jv.db"
        import_dir(root, db, home, tmp)
        sources = []
        if (root / "projects").is_dir():
            sources.append(("claude", {"CLAUDE_CONFIG_DIR": str(root), "HOME": str(home)}))
        if (root / "sessions").is_dir() or (root / "archived_sessions").is_dir():
            # Compressed rollouts: ccusage reads a decompressed copy of the home.
            codex = plain_copy(root, tmp / "plain") if any(root.rglob("*.zst")) else root
            sources.append(("codex", {"CODEX_HOME": str(codex), "HOME": str(home)}))
        for source, env in sources:
            mine, mine_daily = ours(db, source)
            sessions = ccusage(cmd, source, "session", env)["sessions"]
            daily = ccusage(cmd, source, "daily", env)["daily"]
            theirs: dict[str, Figures] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
            for s in sessions:  # type: ignore[attr-defined]
                sid = session_of(root, source, s)
                row = theirs[sid]
                for i, key in enumerate(KEYS):
                    row[i] += s[key]
                row[4] += s.get("totalCost", s.get("costUSD", 0.0))
            for sid in sorted(set(mine) | set(theirs)):
                rows.append(Row(source, "session", sid, mine.get(sid), theirs.get(sid)))
            for d in daily:  # type: ignore[attr-defined]
                cost = d.get("totalCost", d.get("costUSD", 0.0))
                figures = [d[k] for k in KEYS] + [cost]
                rows.append(Row(source, "day", d["date"], mine_daily.pop(d["date"], None), figures))
            for day, figures in sorted(mine_daily.items()):
                rows.append(Row(source, "day", day, figures, None))
    return rows


def session_of(root: Path, source: str, s: dict[str, object]) -> str:
    if source == "codex":
        match = _UUID.search(str(s.get("sessionFile") or s.get("sessionId")))
        return match.group(1).lower() if match else str(s.get("sessionId"))
    sid = str(s["sessionId"])
    if sid.startswith("agent-"):
        flat = next((root / "projects").glob(f"*/{sid}.jsonl"), None)
        sid = (flat_parent(flat) if flat else None) or sid
    return sid


def fmt(figures: Figures | None) -> str:
    if figures is None:
        return "—"
    return f"{int(figures[0]):,} / {int(figures[1]):,} / {int(figures[2]):,} / " \
           f"{int(figures[3]):,} / ${figures[4]:.6f}"  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", type=Path, nargs="+", help="CLAUDE_CONFIG_DIRs / CODEX_HOMEs")
    parser.add_argument("--ccusage", default=default_ccusage())
    parser.add_argument("--stage", choices=("claude", "codex"), help="lay out loose files first")
    parser.add_argument("--compact", action="store_true", help="with --stage: compact JSON")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--differences", action="store_true", help="list only the rows that differ (and counts)"
    )
    args = parser.parse_args()
    differences = 0
    for root in args.dirs:
        with tempfile.TemporaryDirectory() as staged:
            target = stage(args.stage, root, Path(staged), args.compact) if args.stage else root
            rows = compare(target.resolve(), args.ccusage)
        differences += sum(r.mark != "=" for r in rows)
        label = f"{root}" + (f" (staged as {args.stage})" if args.stage else "")
        label += " (compacted)" if args.compact else ""
        sessions = sum(r.kind == "session" for r in rows)
        equal_sessions = sum(r.kind == "session" and r.mark == "=" for r in rows)
        counts = (
            f"{equal_sessions} of {sessions} sessions and "
            f"{sum(r.kind == 'day' and r.mark == '=' for r in rows)} of "
            f"{sum(r.kind == 'day' for r in rows)} UTC days equal"
        )
        if args.differences:
            rows = [r for r in rows if r.mark != "="]
        if args.markdown:
            print(f"\n`{label}`: {counts}\n")
            print("| source | session / UTC day | jobvault in / out / cache write / cache read / "
                  "cost | ccusage | |")  # fmt: skip
            print("|---|---|---|---|---|")
            for r in rows:
                print(f"| {r.source} | {r.key} | {fmt(r.ours)} | {fmt(r.theirs)} | {r.mark} |")
        else:
            print(f"{label}: {counts}")
            for r in rows:
                print(f"  {r.mark} {r.source:6} {r.kind:7} {r.key[:36]:36}  "
                      f"jobvault {fmt(r.ours)}  ccusage {fmt(r.theirs)}")  # fmt: skip
    print("all equal" if differences == 0 else f"{differences} difference(s)")
    return 0 if differences == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
