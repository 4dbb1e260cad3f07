"""The tool calls of one Codex rollout file and what their outputs and events say.

A call (`function_call`, `custom_tool_call`, `local_shell_call`, `web_search_call`) is
paired with its result by call id: its output (text, exit code), the events naming it
(`exec_command_end`, `patch_apply_end`, `mcp_tool_call_end`, …) and, since Codex 0.15x, the
`item_completed` items that report a command's, MCP call's or file change's outcome. An item
run inside another tool (the `exec` tool runs a script that runs commands and applies
patches) has an id of its own: its failure is the failure of the call still waiting for its
output, else of the file's last call. Lines of one file arrive in order, so "waiting" and
"last" are a plain left-to-right reading.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from jobvault.sources import spill
from jobvault.sources.codex_parse import absolute, as_str, changed_paths, failure_of
from jobvault.sources.previews import PreviewRef, Previews

Order = tuple[str, int, int]  # (timestamp, file_id, offset)

# The item kinds of `item_completed` events that are the outcome of a tool call.
TOOL_ITEMS = frozenset({"CommandExecution", "McpToolCall", "FileChange", "DynamicToolCall",
                        "WebSearch", "ImageGeneration"})  # fmt: skip
PENDING_CALLS = 64  # calls without an output yet that a failure can be attributed to


@dataclass(slots=True)
class Call:
    order: Order
    call_id: str | None
    name: str
    input_preview: PreviewRef
    patch_files: list[str]  # absolute paths named by an apply_patch body
    is_patch: bool


@dataclass(slots=True)
class Result:
    output_preview: PreviewRef = None
    output_exit: int | None = None
    exec_exit: int | None = None
    patch_success: bool | None = None
    patch_files: list[str] = field(default_factory=list)
    # An event or item said the call failed (item_completed status / exit code, an MCP
    # error, `success: false`, a failed status on the call itself).
    event_failed: bool = False

    @property
    def failed(self) -> bool:
        return (
            self.patch_success is False
            or self.event_failed
            or self.exec_exit not in (None, 0)
            or self.output_exit not in (None, 0)
        )


def _order(entry: Call) -> Order:
    return entry.order


_CALL = spill.Codec.of_dataclass(Call)
_RESULT = spill.Codec.of_dataclass(Result)


class CallLog:
    """Calls in line order, results by call id (spilled with their session when long)."""

    def __init__(self, previews: Previews) -> None:
        self.previews = previews
        self.calls: spill.SpillMap[Call] = spill.SpillMap(_CALL, _order)
        self.called: spill.SpillMap[bool] = spill.SpillMap(spill.MARK, spill.no_order)
        self.results: spill.SpillMap[Result] = spill.SpillMap(_RESULT, spill.no_order, spill.always)
        self.pending: deque[str] = deque(maxlen=PENDING_CALLS)  # calls awaiting their output
        self.last_call: str | None = None
        self._count = 0

    def maps(self) -> list[spill.SpillMap[Any]]:
        return [self.calls, self.called, self.results]

    def call(self, order: Order, call_id: str | None, name: str, input_text: str | None,
             patch_files: list[str], is_patch: bool) -> None:  # fmt: skip
        self._count += 1
        call = Call(order, call_id, name, self.previews.put(input_text), patch_files, is_patch)
        self.calls.offer(f"{self._count:012d}", call)
        if call_id is not None:
            self.called.offer(call_id, True)
            self.pending.append(call_id)
            self.last_call = call_id

    def result(self, call_id: str) -> Result:
        """The call's result, held so the caller can change it (and the change is kept)."""
        result = self.results.get(call_id)
        if result is None:
            result = Result()
        self.results.put(call_id, result)
        return result

    def output(self, call_id: str, text: str | None, exit_code: int | None) -> None:
        result = self.result(call_id)
        result.output_preview = self.previews.put(text)
        result.output_exit = exit_code
        if call_id in self.pending:
            self.pending.remove(call_id)

    def outcome(self, payload: dict[str, Any]) -> None:
        """An event naming a call (`call_id`) that says the call failed marks it failed."""
        call_id = as_str(payload.get("call_id")) or as_str(payload.get("callId"))
        if call_id and failure_of(payload):
            self.result(call_id).event_failed = True

    def completed(self, item: Any, order: Order, cwd: str | None) -> None:
        """An `item_completed` item: a command's, MCP call's or file change's outcome."""
        if not isinstance(item, dict) or item.get("type") not in TOOL_ITEMS:
            return
        item_id = as_str(item.get("id")) or as_str(item.get("call_id"))
        failed = failure_of(item)
        if item.get("type") == "FileChange" and not failed:
            # Applied, whichever tool applied it: its files are modified.
            result = self.result(item_id or f"item:{order[1]}:{order[2]}")
            result.patch_success = result.patch_success is not False
            paths = [absolute(p, cwd) for p in changed_paths(item.get("changes"))]
            result.patch_files = sorted(set(result.patch_files) | set(paths))
        if not failed:
            return
        source = item.get("source")
        if isinstance(source, str) and "user" in source.lower():
            return  # the user's own shell command, not a tool call
        if item_id is not None and self.called.get(item_id):
            target: str | None = item_id
        else:
            target = self.pending[-1] if self.pending else self.last_call
        if target is not None:
            self.result(target).event_failed = True
