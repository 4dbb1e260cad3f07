"""`jobvault statusline`: one short line for Claude Code's status bar, in well under 100 ms.

Claude Code runs the `statusLine` command after each assistant message (at most every
300 ms) with a JSON object on stdin (docs: /shared/FORMATS.md) and shows the first line
printed. This prints this session's cost and context, today's cost, the active 5-hour block's
time left and burn rate, and the rate-limit usage when the JSON has it, e.g.

    $1.84 session · ctx 41% · $23.10 today · block 2h05m left, $4.20/h · 5h 37% · 7d 12%

and sends the rate limits to the daemon, which records them (`rate_limits.record`).

It must start fast, so `jobvault.cli` dispatches here before importing the CLI's parser, and
this module imports only the standard library's small modules: no asyncio, no structlog, no
rich, not even jobvault's own `paths` (tempfile alone costs 9 ms). Two connections to the
socket, each with a short timeout: one sends the rate limits as a JSON-RPC notification and
closes at once (a write waits for the writer thread, which may be busy, so nothing waits for
it); the other sends three reads at once and reads their answers. When the daemon is down or
slow, the line shows what Claude Code sent and says so. It never exits non-zero: Claude Code
blanks the status line on an error.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

TIMEOUT = 0.25  # seconds for the whole exchange with the daemon
BLOCK_LOOKBACK_H = 24  # the active block is reckoned from the last day's usage (see docs)
USAGE = "usage: jobvault statusline [--socket PATH] [--config PATH]  (JSON on standard input)"


def _config_file(args: dict[str, str]) -> str | None:
    path = args.get("config") or os.environ.get("JOBVAULT_CONFIG")
    if path:
        return os.path.expanduser(path)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    default = os.path.join(base, "jobvault", "jobvault.toml")
    return default if os.path.isfile(default) else None


def socket_path(args: dict[str, str]) -> str:
    """The daemon's socket, resolved as `jobvault.config` does (flag, env, file, default)."""
    if args.get("socket"):
        return os.path.expanduser(args["socket"])
    if os.environ.get("JOBVAULT_SOCKET"):
        return os.path.expanduser(os.environ["JOBVAULT_SOCKET"])
    config = _config_file(args)
    if config:
        try:
            import tomllib

            with open(config, "rb") as fh:
                data = tomllib.load(fh)
            value = (data.get("jobvault") or {}).get("socket", data.get("socket"))
            if isinstance(value, str) and value:
                return os.path.expanduser(value)
        except (OSError, ValueError):
            pass  # `jobvault` itself reports a bad file; a status line just carries on
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "jobvault", "jobvault.sock")
    # As paths.runtime_dir: tempfile.gettempdir()'s choice, without importing tempfile.
    tmp = next((os.environ[v] for v in ("TMPDIR", "TEMP", "TMP") if os.environ.get(v)), "/tmp")
    return os.path.join(tmp, f"jobvault-{os.getuid()}", "jobvault.sock")


def _connect(path: str, deadline: float) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _request(ident: int | None, method: str, params: dict[str, Any]) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if ident is not None:
        message["id"] = ident
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _local_midnight_utc() -> str:
    """The start of today on this machine's clock, in UTC (mktime knows the DST rules)."""
    local = time.localtime()
    midnight = time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1))
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(midnight))


def ask_daemon(path: str, status: dict[str, Any]) -> dict[int, Any] | None:
    """Record the rate limits and read today's cost, the active block and this session.

    Returns the answers by request id (1 today, 2 block, 3 session), or None when no daemon
    answers on `path`.
    """
    deadline = time.monotonic() + TIMEOUT
    session = status.get("session_id") if isinstance(status.get("session_id"), str) else None
    limits = status.get("rate_limits")
    if isinstance(limits, dict) and limits:
        writer = _connect(path, deadline)
        if writer is not None:
            params: dict[str, Any] = {"rate_limits": limits}
            if session:
                params["session_id"] = session
            try:
                writer.sendall(_request(None, "rate_limits.record", params))
            except OSError:
                pass
            finally:
                writer.close()
    sock = _connect(path, deadline)
    if sock is None:
        return None
    now = time.time()
    since_block = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - BLOCK_LOOKBACK_H * 3600))
    requests = [
        _request(1, "stats.usage", {"group_by": "source", "since": _local_midnight_utc()}),
        _request(2, "stats.blocks", {"active": True, "since": since_block, "source": "claude"}),
    ]
    if session:
        requests.append(_request(3, "jobs.get", {"id": session}))
    answers: dict[int, Any] = {}
    try:
        sock.sendall(b"".join(requests))
        buffer = b""
        while len(answers) < len(requests):
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and isinstance(message.get("id"), int):
                    answers[message["id"]] = message.get("result")
    except OSError:
        pass  # a timeout: show what came back
    finally:
        sock.close()
    return answers


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and abs(value) < 1e15 else None  # NaN, absurd


def _minutes_until(end: Any) -> float | None:
    """Minutes from now to an ISO time (a block with one message has no projection)."""
    if not isinstance(end, str):
        return None
    from datetime import UTC, datetime  # a C module: cheap, and only for this case

    try:
        moment = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment - datetime.now(UTC)).total_seconds() / 60


def _money(value: float) -> str:
    return f"${value:,.2f}"


def _remaining(minutes: float) -> str:
    minutes = max(0, int(minutes))
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def compose(status: dict[str, Any], answers: dict[int, Any] | None) -> str:
    """The line, from Claude Code's JSON and the daemon's answers (None: no daemon)."""
    parts: list[str] = []
    job = (answers or {}).get(3) if answers else None
    job = job if isinstance(job, dict) else {}
    cost = status.get("cost")
    session_cost = _number(cost.get("total_cost_usd")) if isinstance(cost, dict) else None
    if session_cost is None:
        session_cost = _number(job.get("cost_usd"))
    if session_cost is not None:
        parts.append(f"{_money(session_cost)} session")
    context = status.get("context_window")
    used = _number(context.get("used_percentage")) if isinstance(context, dict) else None
    if used is None and _number(job.get("context_used_pct")) is not None:
        used = _number(job.get("context_used_pct"))
    if used is not None:
        parts.append(f"ctx {used:.0f}%")
    if answers is not None:
        today = answers.get(1)
        if isinstance(today, dict) and isinstance(today.get("totals"), dict):
            value = _number(today["totals"].get("cost_usd"))
            if value is not None:
                parts.append(f"{_money(value)} today")
        blocks = answers.get(2)
        active = None
        if isinstance(blocks, dict) and isinstance(blocks.get("blocks"), list):
            active = next(
                (b for b in blocks["blocks"] if isinstance(b, dict) and b.get("is_active")), None
            )
        if active is not None:
            projection = (
                active.get("projection") if isinstance(active.get("projection"), dict) else {}
            )
            burn = active.get("burn_rate") if isinstance(active.get("burn_rate"), dict) else {}
            left = _number((projection or {}).get("remaining_minutes"))
            if left is None:
                left = _minutes_until(active.get("end"))
            rate = _number((burn or {}).get("cost_per_hour"))
            text = "block"
            if left is not None:
                text += f" {_remaining(left)} left"
            if rate is not None:
                text += f", {_money(rate)}/h"
            parts.append(text)
    limits = status.get("rate_limits")
    if isinstance(limits, dict):
        for key, label in (("five_hour", "5h"), ("seven_day", "7d")):
            entry = limits.get(key)
            value = _number(entry.get("used_percentage")) if isinstance(entry, dict) else None
            if value is not None:
                parts.append(f"{label} {value:.0f}%")
    if answers is None:
        parts.append("jobvault: daemon not running")
    elif not answers:
        parts.append("jobvault: no answer")
    return " · ".join(parts) if parts else "jobvault"


def _args(argv: list[str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        if item in ("-h", "--help"):
            return None
        key, _, value = item.partition("=")
        if key in ("--socket", "--config"):
            out[key[2:]] = value or next(items, "")
    return out


def read_status(stream: Any) -> dict[str, Any]:
    """Claude Code's JSON, or {} for anything else (never an exception)."""
    try:
        data = stream.buffer.read(1024 * 1024) if hasattr(stream, "buffer") else stream.read()
        value = json.loads(data or b"{}")
    except (ValueError, OSError, UnicodeDecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def main(argv: list[str]) -> int:
    """Print the status line; always exit 0 (unknown options are ignored, not fatal)."""
    args = _args(argv)
    if args is None:
        print(USAGE)
        return 0
    try:
        status = {} if sys.stdin is None or sys.stdin.isatty() else read_status(sys.stdin)
        answers = ask_daemon(socket_path(args), status)
        line = compose(status, answers)
    except Exception as exc:  # a status line must never fail: say so, briefly
        line = f"jobvault: {type(exc).__name__}"
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass
    return 0
