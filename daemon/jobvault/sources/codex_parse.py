"""Small, pure readers for the pieces of a Codex CLI rollout line.

Codex has changed its line shapes many times (see ../shared/FORMATS.md): a tool output is a
string, a JSON string holding `{output, metadata{exit_code}}`, a plain text starting with
"Exit code: N", a content item or a list of them; `patch_apply_end.changes` maps a path to
`{"update": …}` or to `{"type": "update", …}`. These helpers accept every shape seen and
return None rather than guess.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

import orjson

from jobvault.records import count

# The first user messages of a session are instructions Codex injects, not a prompt.
BOILERPLATE_PREFIXES = (
    "# AGENTS.md instructions",
    "<environment_context>",
    "<user_instructions>",
    "<INSTRUCTIONS>",
    "<permissions instructions>",
    "<user_shell_command>",
    "<turn_aborted>",
)
_PATCH_FILE = re.compile(
    r"^\*\*\* (?:Add|Update|Delete) File: (.+?)\s*$|^\*\*\* Move to: (.+?)\s*$"
)
_EXIT_LINE = re.compile(r"^(?:Exit code|Process exited with code):? (-?\d+)")
_CWD_TAG = re.compile(r"<cwd>(.*?)</cwd>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Usage:
    """A cumulative `total_token_usage` (or a delta of two): Codex's own field meanings."""

    input: int  # includes cached and written
    cached: int
    output: int  # includes reasoning
    reasoning: int
    total: int
    cache_write: int = 0  # input written to the cache (Codex 0.15x), part of `input`

    def minus(self, other: Usage) -> Usage:
        return Usage(
            max(self.input - other.input, 0),
            max(self.cached - other.cached, 0),
            max(self.output - other.output, 0),
            max(self.reasoning - other.reasoning, 0),
            max(self.total - other.total, 0),
            max(self.cache_write - other.cache_write, 0),
        )

    @property
    def fresh(self) -> int:
        """Input neither read from nor written to the cache."""
        return max(self.input - self.cached - self.cache_write, 0)


def as_int(value: Any) -> int:
    """A non-negative integer field, else 0 (bools, strings and floats are not counts)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def usage_of(value: Any, bad: list[str]) -> Usage | None:
    """Read a `total_token_usage` / `last_token_usage` object; None when it is not one.

    Counts out of range (records.MAX_COUNT) are noted in `bad` and read as 0.
    """
    if not isinstance(value, dict) or "input_tokens" not in value:
        return None
    inp = count(value.get("input_tokens"), "input_tokens", bad)
    out = count(value.get("output_tokens"), "output_tokens", bad)
    total = value.get("total_tokens")
    cached = min(count(value.get("cached_input_tokens"), "cached_input_tokens", bad), inp)
    written = count(value.get("cache_write_input_tokens"), "cache_write_input_tokens", bad)
    return Usage(
        inp,
        cached,
        out,
        count(value.get("reasoning_output_tokens"), "reasoning_output_tokens", bad),
        # Reasoning is part of output already, so it is not added again.
        count(total, "total_tokens", bad) if total.__class__ is int else inp + out,
        min(written, inp - cached),
    )


def text_of(content: Any) -> str:
    """Join the text of a message content or tool output (string, item or list of items)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    if isinstance(content, list):
        return "\n".join(t for t in (text_of(item) for item in content) if t)
    return ""


def is_boilerplate(text: str) -> bool:
    return text.lstrip().startswith(BOILERPLATE_PREFIXES)


def texts_of(content: Any) -> list[str]:
    """The text of each item of a message content, one string per item."""
    if isinstance(content, list):
        return [t for t in (text_of(item) for item in content) if t]
    text = text_of(content)
    return [text] if text else []


def cwd_from_environment(text: str) -> str | None:
    """The `<cwd>` of an `<environment_context>` message (legacy files have no other)."""
    match = _CWD_TAG.search(text)
    return match.group(1).strip() or None if match else None


def tool_output(output: Any) -> tuple[str, int | None]:
    """Return a tool output's text and exit code, when it states one."""
    exit_code: int | None = None
    text = output if isinstance(output, str) else text_of(output)
    if isinstance(output, str) and output.startswith("{"):
        try:
            decoded = orjson.loads(output)
        except orjson.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict) and "output" in decoded:
            inner = decoded.get("output")
            text = inner if isinstance(inner, str) else text
            metadata = decoded.get("metadata")
            if isinstance(metadata, dict):
                code = metadata.get("exit_code")
                exit_code = code if isinstance(code, int) and not isinstance(code, bool) else None
    if exit_code is None:
        match = _EXIT_LINE.match(text)
        exit_code = int(match.group(1)) if match else None
    return text, exit_code


def patch_paths(patch: str) -> list[str]:
    """The files an apply_patch body adds, updates, deletes or moves to, in order."""
    paths: list[str] = []
    for line in patch.splitlines():
        match = _PATCH_FILE.match(line)
        if match:
            path = match.group(1) or match.group(2)
            if path not in paths:
                paths.append(path)
    return paths


def shell_patch(arguments: Any) -> str | None:
    """The patch of a shell call that runs `apply_patch` (how older Codex edited files)."""
    if not isinstance(arguments, str):
        return None
    try:
        decoded = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return None
    command = decoded.get("command") if isinstance(decoded, dict) else None
    if isinstance(command, list) and len(command) >= 2 and command[0] == "apply_patch":
        patch = command[1]
        return patch if isinstance(patch, str) else None
    if isinstance(command, list) and command and isinstance(command[-1], str):
        script = command[-1]
        if "apply_patch" in script and "*** Begin Patch" in script:
            return script
    return None


def absolute(path: str, cwd: str | None) -> str:
    """Resolve a patch path against the turn's working directory."""
    if posixpath.isabs(path) or not cwd:
        return path
    return posixpath.normpath(posixpath.join(cwd, path))


def changed_paths(changes: Any) -> list[str]:
    """The paths of a `patch_apply_end.changes` map (or of a FileChange item's list of
    `{path, kind{move_path}}`), with a move's destination."""
    if isinstance(changes, list):  # FileChange items: [{path, kind: {type, move_path}, diff}]
        pairs = [(c.get("path"), c.get("kind")) for c in changes if isinstance(c, dict)]
    elif isinstance(changes, dict):
        pairs = list(changes.items())
    else:
        return []
    paths: list[str] = []
    for path, change in pairs:
        if isinstance(path, str) and path:
            paths.append(path)
        if isinstance(change, dict):
            inner = change.get("update")
            holder = inner if isinstance(inner, dict) else change
            moved = holder.get("move_path")
            if isinstance(moved, str) and moved:
                paths.append(moved)
    return paths


# Statuses that say a tool call did not succeed (item_completed items, *_end events, web
# search and image generation items). "completed", "success" and the like are success.
FAILED_STATUSES = frozenset(
    {"failed", "error", "errored", "declined", "rejected", "denied", "incomplete", "cancelled",
     "canceled", "timed_out", "timeout"}
)  # fmt: skip


def failure_of(obj: dict[str, Any]) -> bool | None:
    """Does an event or item say its call failed? True / False, None when it does not say.

    Read: a non-zero `exit_code`, a failed `status`, `success: false`, an MCP result that
    is an `Err` or has `isError: true`.
    """
    said: bool | None = None
    code = obj.get("exit_code")
    if code.__class__ is int:
        said = code != 0
    status = obj.get("status")
    if isinstance(status, str) and status:
        failed = status.lower() in FAILED_STATUSES
        said = failed or bool(said)
    success = obj.get("success")
    if isinstance(success, bool):
        said = (not success) or bool(said)
    result = obj.get("result")
    if isinstance(result, dict):
        if "Err" in result:
            return True
        inner = result.get("Ok", result)
        if isinstance(inner, dict) and isinstance(inner.get("isError"), bool):
            said = inner["isError"] or bool(said)
    return said


def dumps_preview_source(value: Any) -> str | None:
    """The text a tool input preview is cut from."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)
