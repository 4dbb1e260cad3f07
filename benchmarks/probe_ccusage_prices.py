"""Read ccusage's offline prices back from ccusage itself, and compare them with pricing.py.

    python benchmarks/probe_ccusage_prices.py codex|claude MODEL… [--ccusage CMD]

For each model, the script writes one-message sessions (100,000 tokens of one kind each)
into a temporary CODEX_HOME / CLAUDE_CONFIG_DIR, runs `ccusage codex|claude session --json
--offline`, and prints the USD per million tokens ccusage charged for each kind next to
jobvault's table (`pricing.lookup`). How docs/benchmarks.md found where the two tables
differ; ccusage's embedded table is not readable otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.compare_ccusage import default_ccusage
from jobvault import pricing

N = 100_000  # tokens of one kind per probe: below every long-context threshold
CODEX_KINDS = {"input": (N, 0, 0, 0), "cached": (N, N, 0, 0), "output": (0, 0, N, 0),
               "write": (N, 0, 0, N)}  # fmt: skip
CLAUDE_KINDS = {"input": {"input_tokens": N}, "output": {"output_tokens": N},
                "write": {"cache_creation_input_tokens": N},
                "cached": {"cache_read_input_tokens": N}}  # fmt: skip


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n"  # compact, as the agents write


def probe(cmd: str, source: str, models: list[str]) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        names: dict[str, tuple[str, str]] = {}
        n = 0
        kinds = list(CODEX_KINDS if source == "codex" else CLAUDE_KINDS)
        for model in models:
            for kind in kinds:
                n += 1
                sid = f"00000000-0000-4000-8000-{n:012d}"
                ts = "2026-01-01T10:00:00.000Z"
                if source == "codex":
                    inp, cached, produced, write = CODEX_KINDS[kind]
                    usage = {"input_tokens": inp, "cached_input_tokens": cached,
                             "cache_write_input_tokens": write, "output_tokens": produced,
                             "reasoning_output_tokens": 0,
                             "total_tokens": inp + produced}  # fmt: skip
                    lines = [
                        {"timestamp": ts, "type": "session_meta", "payload": {"id": sid}},
                        {"timestamp": ts, "type": "turn_context", "payload": {"model": model}},
                        {"timestamp": ts, "type": "event_msg", "payload": {
                            "type": "token_count", "info": {"total_token_usage": usage}}},
                    ]  # fmt: skip
                    day = tmp / "sessions" / "2026" / "01" / "01"
                    name = f"rollout-2026-01-01T10-00-00-{sid}"
                    path = day / f"{name}.jsonl"
                else:
                    usage = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
                             "cache_creation_input_tokens": 0, **CLAUDE_KINDS[kind]}  # fmt: skip
                    lines = [{"type": "assistant", "sessionId": sid, "timestamp": ts,
                              "requestId": f"r{n}", "message": {"id": f"m{n}", "model": model,
                              "role": "assistant", "content": [], "usage": usage}}]  # fmt: skip
                    name = sid
                    path = tmp / "projects" / "-p" / f"{sid}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(_dump(line) for line in lines), encoding="utf-8")
                names[name] = (model, kind)
        home = tmp / "home"
        home.mkdir()
        var = "CODEX_HOME" if source == "codex" else "CLAUDE_CONFIG_DIR"
        out = subprocess.run(
            [*shlex.split(cmd), source, "session", "--json", "--offline"],
            env={**os.environ, var: str(tmp), "HOME": str(home), "TZ": "UTC"},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    table: dict[str, dict[str, float]] = {model: {} for model in models}
    for s in json.loads(out.stdout)["sessions"]:
        key = s.get("sessionFile") or s["sessionId"]
        model, kind = names[key]
        cost = s.get("costUSD", s.get("totalCost", 0.0))
        table[model][kind] = round(cost * 1_000_000 / N, 6)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=("codex", "claude"))
    parser.add_argument("models", nargs="+")
    parser.add_argument("--ccusage", default=default_ccusage())
    args = parser.parse_args()
    table = probe(args.ccusage, args.source, args.models)
    print("model: ccusage input / cached / write / output  |  jobvault (USD per MTok)")
    for model in args.models:
        theirs = table[model]
        price = pricing.lookup(model)
        ours = f"{price.input:g} / {price.cache_read:g} / {price.cache_write:g} / " \
               f"{price.output:g}" if price else "unpriced"  # fmt: skip
        got = " / ".join(f"{theirs.get(k, 0.0):g}" for k in ("input", "cached", "write", "output"))
        print(f"{model}: {got}  |  {ours}")


if __name__ == "__main__":
    main()
