"""A seeded, realistic corpus of Claude Code transcripts and Codex CLI rollouts.

    python -m benchmarks.corpus DIR [--mb 250] [--seed 7] [--big-mb 0]

Writes DIR/claude/projects/… (a CLAUDE_CONFIG_DIR) and DIR/codex/sessions/… (a CODEX_HOME),
streamed to disk file by file, never built in memory. The shapes follow FORMATS.md and the
test fixtures: one API response is written as one line per content block sharing message.id
and requestId (early lines with output_tokens 1), tool outputs have a long-tailed (log-normal)
size with a few multi-MB lines, sessions have subagents in the current
`<session>/subagents/agent-<id>.jsonl` layout (some in the flat v2.0 layout), and Codex
rollouts repeat every token_count event with an unchanged total. `--big-mb N` adds one
N-MB session (DIR/big/projects/…) for the peak-RSS measure.

    python -m benchmarks.corpus DIR --ordinary 3000 [--seed 7]

writes instead a history of N *ordinary* sessions (DIR/claude/projects/…), the shape of a
real user's months: a median session of ~50 lines (lines of ~1.5 KB), every 100th session
with one 2 MB tool output, and 3 % of sessions resumed from an earlier one (their file
starts with a copy of its messages under the new session id, as `claude --resume` writes
it), so duplicates across sessions are counted as ccusage counts them. 3,000 sessions make
about 260 MB and 170,000 lines. The cost of an import follows the number of sessions as
much as the bytes, so this is the history the targets are measured on.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

MODELS = ("claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805", "claude-haiku-4-5-20251001")
MODEL_WEIGHTS = (0.7, 0.2, 0.1)
CODEX_MODELS = ("gpt-5-codex", "gpt-5.1-codex-mini")
TOOLS = ("Bash", "Read", "Edit", "Write", "Grep", "Glob", "Task", "TodoWrite")
TOOL_WEIGHTS = (0.35, 0.25, 0.15, 0.05, 0.08, 0.05, 0.04, 0.03)
WORDS = [
    "def",
    "return",
    "self",
    "import",
    "from",
    "class",
    "if",
    "else",
    "for",
    "in",
    "while",
    "None",
    "True",
    "False",
    "async",
    "await",
    "try",
    "except",
    "raise",
    "with",
    "as",
    "lambda",
    "yield",
    "assert",
    "pass",
    "break",
    "continue",
    "print",
    "len",
    "range",
    "dict",
    "list",
    "str",
    "int",
    "float",
    "open",
    "path",
    "file",
    "line",
    "error",
    "test",
    "result",
    "value",
    "config",
    "session",
    "user",
    "request",
    "response",
    "data",
    "item",
    "key",
    "index",
    "offset",
    "count",
    "total",
    "status",
    "build",
    "parse",
    "write",
    "read",
    "=",
    "==",
    "!=",
    "<=",
    ">=",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ":",
    ",",
    ".",
    "->",
    "+",
    "-",
    "*",
    "/",
    "#",
    "'",
    '"',
    "0",
    "1",
    "2",
    "3",
    "42",
    "100",
    "1024",
    "src/app",
    "tests/",
]
POOL_BYTES = 8 * 1024 * 1024  # text pool sliced for tool outputs: larger than zstd's window
# A Bash or Read result line carries its output twice (content and toolUseResult): 3 MiB keeps
# lines under 8 MiB. jobvault (HEAD) never finishes a line longer than batch_max_bytes (8 MiB)
# but under max_line_bytes (16 MiB): read_lines stops at the batch budget mid-line and the
# next batch starts over (see docs/benchmarks.md).
MAX_OUTPUT = 3 * 1024 * 1024


class Text:
    """A pool of code-like text; `take(n)` returns n bytes from a random place in it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        parts: list[str] = []
        size = 0
        while size < POOL_BYTES:
            words = rng.choices(WORDS, k=rng.randint(3, 14))
            line = " " * (4 * rng.randint(0, 3)) + " ".join(words) + "\n"
            parts.append(line)
            size += len(line)
        self.pool = "".join(parts)

    def take(self, n: int) -> str:
        if n >= len(self.pool):
            reps = n // len(self.pool) + 1
            return (self.pool * reps)[:n]
        start = self.rng.randrange(0, len(self.pool) - n)
        return self.pool[start : start + n]

    def output_size(self) -> int:
        """A long-tailed tool output size: median ~1 KB, p99 ~100 KB, a few several MB."""
        if self.rng.random() < 0.0003:
            return self.rng.randint(1, MAX_OUTPUT // (1024 * 1024)) * 1024 * 1024
        return min(int(self.rng.lognormvariate(7.0, 1.7)), MAX_OUTPUT)


@dataclass
class Clock:
    """Milliseconds since the epoch, advancing by realistic gaps."""

    ms: int

    def tick(self, rng: random.Random, lo: int = 200, hi: int = 30_000) -> str:
        self.ms += rng.randint(lo, hi)
        secs, millis = divmod(self.ms, 1000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _b62(rng: random.Random, n: int) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(rng.choices(alphabet, k=n))


def _write(out: BinaryIO, obj: dict[str, Any]) -> int:
    data = orjson.dumps(obj) + b"\n"
    out.write(data)
    return len(data)


class ClaudeSession:
    """Writes one Claude Code session file (main or subagent) line by line."""

    def __init__(
        self,
        rng: random.Random,
        text: Text,
        out: BinaryIO,
        session_id: str,
        cwd: str,
        clock: Clock,
        agent_id: str | None = None,
    ) -> None:
        self.rng, self.text, self.out, self.clock = rng, text, out, clock
        self.session_id, self.cwd, self.agent_id = session_id, cwd, agent_id
        self.model = rng.choices(MODELS, MODEL_WEIGHTS)[0]
        self.last: str | None = None
        self.written = 0
        self.context = rng.randint(8_000, 30_000)

    def _env(self, kind: str) -> dict[str, Any]:
        uid = _uid(self.rng)
        env: dict[str, Any] = {
            "parentUuid": self.last,
            "isSidechain": self.agent_id is not None,
            "userType": "external",
            "cwd": self.cwd,
            "sessionId": self.session_id,
            "version": "2.0.37",
            "gitBranch": "main",
        }
        if self.agent_id is not None:
            env["agentId"] = self.agent_id
        env["type"] = kind
        env["uuid"] = uid
        env["timestamp"] = self.clock.tick(self.rng)
        self.last = uid
        return env

    def emit(self, obj: dict[str, Any]) -> None:
        self.written += _write(self.out, obj)

    def prompt(self) -> None:
        line = self._env("user")
        line["message"] = {"role": "user", "content": self.text.take(self.rng.randint(40, 800))}
        self.emit(line)

    def response(self, tool: str | None) -> str | None:
        """One API response streamed as one line per content block; return its tool_use id."""
        msg_id = "msg_01" + _b62(self.rng, 22)
        req = "req_011C" + _b62(self.rng, 20)
        blocks: list[dict[str, Any]] = []
        if self.rng.random() < 0.4:
            blocks.append({"type": "thinking", "thinking": self.text.take(400), "signature": "x"})
        blocks.append({"type": "text", "text": self.text.take(self.rng.randint(20, 1500))})
        tool_id = None
        if tool is not None:
            tool_id = "toolu_01" + _b62(self.rng, 22)
            inp: dict[str, Any] = {"command": self.text.take(60)}
            if tool in ("Edit", "Write"):
                inp = {
                    "file_path": f"{self.cwd}/src/m{self.rng.randint(0, 40)}.py",
                    "content": self.text.take(self.rng.randint(200, 4000)),
                }
            blocks.append({"type": "tool_use", "id": tool_id, "name": tool, "input": inp})
        self.context += self.rng.randint(200, 6_000)
        full_out = self.rng.randint(30, 2_000)
        # As Claude Code writes them: every line of one response repeats its input and cache
        # counts (those of its first line); only the output grows, to its full count on the
        # last line. (Every line still draws its own, unused, so that the seed gives the same
        # corpus as before.)
        fresh_input = cache_write = -1
        for i, block in enumerate(blocks):
            final = i == len(blocks) - 1
            line = self._env("assistant")
            drawn = (self.rng.randint(3, 40), self.rng.randint(0, 3_000))
            if fresh_input < 0:
                fresh_input, cache_write = drawn
            line["message"] = {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [block],
                "stop_reason": ("tool_use" if tool else "end_turn") if final else None,
                "usage": {
                    "input_tokens": fresh_input,
                    "cache_creation_input_tokens": cache_write,
                    "cache_read_input_tokens": self.context,
                    "output_tokens": full_out if final else 1,
                    "service_tier": "standard",
                },
            }
            line["requestId"] = req
            self.emit(line)
        return tool_id

    def result(self, tool: str, tool_id: str) -> None:
        size = self.text.output_size()
        body = self.text.take(size)
        is_error = self.rng.random() < 0.05
        line = self._env("user")
        block: dict[str, Any] = {"tool_use_id": tool_id, "type": "tool_result", "content": body}
        if is_error:
            block["is_error"] = True
        line["message"] = {"role": "user", "content": [block]}
        if tool == "Bash":
            line["toolUseResult"] = {"stdout": body, "stderr": "", "interrupted": False}
        elif tool == "Read":
            line["toolUseResult"] = {
                "type": "text",
                "file": {"filePath": f"{self.cwd}/x.py", "content": body},
            }
        self.emit(line)

    def extras(self) -> None:
        """The non-message lines Claude Code writes between turns."""
        roll = self.rng.random()
        if roll < 0.15:
            self.emit(
                {
                    "type": "file-history-snapshot",
                    "messageId": _uid(self.rng),
                    "snapshot": {"trackedFileBackups": {}, "timestamp": self.clock.tick(self.rng)},
                    "isSnapshotUpdate": False,
                }
            )
        elif roll < 0.2:
            line = self._env("system")
            line.update({"subtype": "stop_hook_summary", "content": "", "level": "info"})
            self.emit(line)

    def turns(self, budget: int, subagent: Any = None) -> None:
        """Write prompt → (response → tool result)* turns until `budget` bytes are written."""
        while self.written < budget:
            self.prompt()
            for _ in range(self.rng.randint(1, 12)):
                tool = self.rng.choices(TOOLS, TOOL_WEIGHTS)[0]
                if tool == "Task" and subagent is None:
                    tool = "Bash"
                tool_id = self.response(tool)
                if tool_id is None:
                    break
                if tool == "Task":
                    subagent()
                self.result(tool, tool_id)
                self.extras()
                if self.written >= budget:
                    break
            self.response(None)
        if self.agent_id is None and self.rng.random() < 0.3:
            self.emit({"type": "summary", "summary": self.text.take(60), "leafUuid": self.last})


def session_size(rng: random.Random) -> int:
    """Bytes of one session: most a few hundred KB, a long tail to tens of MB."""
    return min(int(rng.lognormvariate(12.6, 1.2)), 60 * 1024 * 1024)


def write_claude_session(root: Path, rng: random.Random, text: Text, budget: int) -> int:
    """Write one session (main file + subagents) under root/projects; return bytes written."""
    project = f"-home-dev-proj{rng.randint(0, 24)}"
    cwd = "/" + project[1:].replace("-", "/")
    session_id = _uid(rng)
    folder = root / "projects" / project
    folder.mkdir(parents=True, exist_ok=True)
    clock = Clock(1_756_684_800_000 + rng.randint(0, 60 * 86_400_000))  # Sept–Oct 2025
    total = 0
    with (folder / f"{session_id}.jsonl").open("wb") as out:
        main = ClaudeSession(rng, text, out, session_id, cwd, clock)

        def subagent() -> None:
            nonlocal total
            agent = _b62(rng, 8).lower()
            flat = rng.random() < 0.25
            sub_dir = folder if flat else folder / session_id / "subagents"
            sub_dir.mkdir(parents=True, exist_ok=True)
            with (sub_dir / f"agent-{agent}.jsonl").open("wb") as sub_out:
                sub = ClaudeSession(rng, text, sub_out, session_id, cwd, clock, agent_id=agent)
                sub.turns(max(budget // 10, 20_000))
                total += sub.written
            if not flat:
                meta = {"agentType": "general-purpose", "spawnDepth": 1}
                (sub_dir / f"agent-{agent}.meta.json").write_bytes(orjson.dumps(meta))

        main.turns(budget, subagent)
        total += main.written
    return total


def write_codex_rollout(root: Path, rng: random.Random, text: Text, budget: int) -> int:
    """Write one Codex rollout under root/sessions/YYYY/MM/DD; return bytes written."""
    clock = Clock(1_756_684_800_000 + rng.randint(0, 60 * 86_400_000))
    start = clock.tick(rng)
    session_id = _uid(rng)
    day = start[:10].replace("-", "/")
    folder = root / "sessions" / day
    folder.mkdir(parents=True, exist_ok=True)
    name = f"rollout-{start[:19].replace(':', '-')}-{session_id}.jsonl"
    cwd = f"/home/dev/svc{rng.randint(0, 9)}"
    written = 0
    totals = [0, 0, 0, 0]  # input, cached, output, reasoning

    def line(kind: str, payload: dict[str, Any]) -> None:
        nonlocal written
        written += _write(
            out, {"timestamp": clock.tick(rng, 50, 8000), "type": kind, "payload": payload}
        )

    def token_count() -> None:
        last = [rng.randint(2000, 40000), 0, rng.randint(50, 3000), 0]
        last[1] = int(last[0] * rng.uniform(0.5, 0.95))
        last[3] = last[2] // 3
        for i in range(4):
            totals[i] += last[i]

        def usage(u: list[int]) -> dict[str, int]:
            return {
                "input_tokens": u[0],
                "cached_input_tokens": u[1],
                "output_tokens": u[2],
                "reasoning_output_tokens": u[3],
                "total_tokens": u[0] + u[2],
            }

        info = {
            "total_token_usage": usage(totals),
            "last_token_usage": usage(last),
            "model_context_window": 272000,
        }
        rate = {"primary": {"used_percent": 4.0, "window_minutes": 300, "resets_in_seconds": 9}}
        for _ in range(rng.randint(2, 3)):  # re-emitted with an unchanged total
            line("event_msg", {"type": "token_count", "info": info, "rate_limits": rate})

    with (folder / name).open("wb") as out:
        line(
            "session_meta",
            {
                "id": session_id,
                "timestamp": start,
                "cwd": cwd,
                "originator": "codex_cli_rs",
                "cli_version": "0.77.0",
                "source": "cli",
                "model_provider": "openai",
            },
        )
        line("event_msg", {"type": "token_count", "info": None, "rate_limits": None})
        while written < budget:
            model = rng.choice(CODEX_MODELS)
            line(
                "turn_context",
                {
                    "cwd": cwd,
                    "approval_policy": "on-request",
                    "sandbox_policy": {"type": "workspace-write"},
                    "model": model,
                    "effort": "medium",
                    "summary": "auto",
                },
            )
            prompt = text.take(rng.randint(40, 600))
            line("event_msg", {"type": "user_message", "message": prompt, "images": []})
            for _ in range(rng.randint(1, 10)):
                call = "call_" + _b62(rng, 24)
                cmd = text.take(50)
                line(
                    "response_item",
                    {
                        "type": "function_call",
                        "name": "shell",
                        "call_id": call,
                        "arguments": orjson.dumps({"command": ["bash", "-lc", cmd]}).decode(),
                    },
                )
                body = text.take(text.output_size())
                code = 0 if rng.random() > 0.08 else 1
                line(
                    "event_msg",
                    {
                        "type": "exec_command_end",
                        "call_id": call,
                        "stdout": body,
                        "stderr": "",
                        "exit_code": code,
                    },
                )
                output = orjson.dumps({"output": body, "metadata": {"exit_code": code}}).decode()
                line(
                    "response_item",
                    {"type": "function_call_output", "call_id": call, "output": output},
                )
                token_count()
            answer = text.take(rng.randint(50, 1200))
            line(
                "response_item",
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": answer}],
                },
            )
            line("event_msg", {"type": "task_complete", "last_agent_message": answer})
    return written


def generate(out: Path, mb: float, seed: int = 7, codex_share: float = 0.15) -> dict[str, int]:
    """Write a corpus of about `mb` megabytes under `out`; return its file and byte counts."""
    rng = random.Random(seed)
    text = Text(rng)
    target = int(mb * 1_000_000)
    claude_bytes = codex_bytes = sessions = rollouts = 0
    while claude_bytes + codex_bytes < target:
        budget = min(session_size(rng), max(target - claude_bytes - codex_bytes, 10_000))
        if codex_bytes < codex_share * (claude_bytes + codex_bytes):
            codex_bytes += write_codex_rollout(out / "codex", rng, text, budget)
            rollouts += 1
        else:
            claude_bytes += write_claude_session(out / "claude", rng, text, budget)
            sessions += 1
    return {
        "claude_sessions": sessions,
        "codex_rollouts": rollouts,
        "claude_bytes": claude_bytes,
        "codex_bytes": codex_bytes,
    }


def write_big_session(out: Path, mb: float, seed: int = 11) -> int:
    """Write one Claude session of about `mb` megabytes, streamed; return its size."""
    rng = random.Random(seed)
    text = Text(rng)
    folder = out / "projects" / "-home-dev-big"
    folder.mkdir(parents=True, exist_ok=True)
    session_id = _uid(rng)
    clock = Clock(1_759_276_800_000)
    with (folder / f"{session_id}.jsonl").open("wb") as fh:
        session = ClaudeSession(rng, text, fh, session_id, "/home/dev/big", clock)
        session.turns(int(mb * 1_000_000))
        return session.written


class OrdinarySession(ClaudeSession):
    """A session of a given number of lines, with tool outputs of everyday size."""

    def __init__(self, *args: Any, big_output: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines = 0
        self.big_output = big_output

    def emit(self, obj: dict[str, Any]) -> None:
        super().emit(obj)
        self.lines += 1

    def result(self, tool: str, tool_id: str) -> None:
        if self.big_output:  # once: the 2 MB output of every 100th session
            self.big_output = False
            size = 2 * 1024 * 1024
        else:
            size = min(int(self.rng.lognormvariate(6.0, 1.0)), 64 * 1024)
        line = self._env("user")
        block: dict[str, Any] = {
            "tool_use_id": tool_id,
            "type": "tool_result",
            "content": self.text.take(size),
        }
        if self.rng.random() < 0.05:
            block["is_error"] = True
        line["message"] = {"role": "user", "content": [block]}
        self.emit(line)

    def run(self, target_lines: int) -> None:
        """Prompt → (response → result)* turns until about `target_lines` lines."""
        while self.lines < target_lines:
            self.prompt()
            for _ in range(self.rng.randint(1, 8)):
                tool = self.rng.choices(TOOLS[:6], TOOL_WEIGHTS[:6])[0]
                tool_id = self.response(tool)
                assert tool_id is not None
                self.result(tool, tool_id)
                self.extras()
                if self.lines >= target_lines:
                    break
            self.response(None)


def ordinary_history(out: Path, sessions: int, seed: int = 7) -> dict[str, int]:
    """Write `sessions` ordinary Claude Code sessions under out/claude/projects."""
    rng = random.Random(seed)
    text = Text(rng)
    root = out / "claude" / "projects"
    written = lines = resumed = 0
    recent: list[tuple[Path, str]] = []  # (main file, project) of the last sessions
    for n in range(sessions):
        project = f"-home-dev-proj{rng.randint(0, 39)}"
        folder = root / project
        folder.mkdir(parents=True, exist_ok=True)
        session_id = _uid(rng)
        path = folder / f"{session_id}.jsonl"
        clock = Clock(1_756_684_800_000 + n * 2_400_000 + rng.randint(0, 1_800_000))
        with path.open("wb") as fh:
            if recent and rng.random() < 0.03:
                # `claude --resume`: the new file starts with the old session's messages.
                old = rng.choice(recent)[0]
                for raw in old.read_bytes().splitlines()[: rng.randint(4, 40)]:
                    obj = orjson.loads(raw)
                    if "sessionId" in obj:
                        obj["sessionId"] = session_id
                    written += _write(fh, obj)
                    lines += 1
                resumed += 1
            session = OrdinarySession(
                rng, text, fh, session_id, "/" + project[1:].replace("-", "/"), clock,
                big_output=n % 100 == 99,
            )  # fmt: skip
            session.run(max(4, min(int(rng.lognormvariate(3.85, 0.5)), 800)))
            written += session.written
            lines += session.lines
        recent = [*recent[-49:], (path, project)]
    return {"sessions": sessions, "resumed": resumed, "bytes": written, "lines": lines}


def iter_jsonl(root: Path) -> Iterator[Path]:
    """Every transcript under `root`, in a stable order."""
    yield from sorted(root.rglob("*.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--mb", type=float, default=250.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--big-mb", type=float, default=0.0)
    parser.add_argument("--ordinary", type=int, default=0, metavar="N",
                        help="write N ordinary sessions instead (see above)")  # fmt: skip
    args = parser.parse_args()
    if args.ordinary:
        print(ordinary_history(args.dir, args.ordinary, args.seed))
        return
    print(generate(args.dir, args.mb, args.seed))
    if args.big_mb:
        print({"big_bytes": write_big_session(args.dir / "big", args.big_mb)})


if __name__ == "__main__":
    main()
