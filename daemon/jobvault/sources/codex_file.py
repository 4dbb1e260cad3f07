"""What one Codex CLI rollout file says, read line by line in file order.

A Codex job can be fed from several files at once (the same rollout in `sessions/` and in
`archived_sessions/`), and the lines of different files interleave arbitrarily. Everything
here is therefore per file: each file's lines arrive in order, so a file's state is a plain
left-to-right reading, and `CodexJob.build` decides later which files the record uses.

Token counting (../shared/FORMATS.md): `token_count` events carry the *cumulative*
`total_token_usage`; each event whose total grows contributes its difference from the
previous counted one, attributed to the model of the latest `turn_context`. A re-emitted
event (same total) and `info: null` add nothing. A forked rollout (`forked_from_id`) starts
by replaying its parent's history; those replayed lines, which Codex writes at the fork's
creation (with that time, or with their original earlier times), only set the baseline the
fork's own deltas start from, so the parent's usage is counted in the parent alone.
"""

from __future__ import annotations

import dataclasses
import marshal
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from jobvault.records import preview
from jobvault.sources import codex_limits, spill
from jobvault.sources.codex_calls import CallLog
from jobvault.sources.codex_parse import (
    Usage,
    absolute,
    as_str,
    changed_paths,
    cwd_from_environment,
    dumps_preview_source,
    failure_of,
    is_boilerplate,
    patch_paths,
    shell_patch,
    texts_of,
    tool_output,
    usage_of,
)
from jobvault.sources.codex_prompts import PromptTally
from jobvault.sources.previews import Previews
from jobvault.sources.prompts import codex_typed

Order = tuple[str, int, int]  # (timestamp, file_id, offset)

RESPONSE_KINDS = frozenset(
    {"message", "reasoning", "function_call", "function_call_output", "custom_tool_call",
     "custom_tool_call_output", "local_shell_call", "web_search_call"}
)  # fmt: skip
EVENT_KINDS = frozenset(
    {"user_message", "agent_message", "task_started", "task_complete", "turn_aborted",
     "exec_command_end", "patch_apply_end", "error", "token_count", "thread_name_updated",
     "item_completed", "thread_settings_applied", "account/rateLimits/updated",
     "mcp_tool_call_end", "dynamic_tool_call_response"}
)  # fmt: skip
# Known kinds that carry nothing the record needs (deltas, begin events, UI state).
IGNORED_RESPONSE_KINDS = frozenset({"ghost_snapshot"})
IGNORED_EVENT_KINDS = frozenset(
    {"agent_reasoning", "agent_reasoning_raw_content", "agent_reasoning_section_break",
     "agent_message_delta", "agent_reasoning_delta", "exec_command_begin",
     "exec_command_output_delta", "patch_apply_begin", "mcp_tool_call_begin",
     "web_search_begin", "web_search_end", "turn_diff", "plan_update",
     "context_compacted", "background_event", "stream_error", "view_image_tool_call",
     "entered_review_mode", "exited_review_mode", "undo_started", "undo_completed",
     "item_started", "session_configured", "shutdown_complete"}
)  # fmt: skip
TOP_KINDS = frozenset(
    {"session_meta", "turn_context", "response_item", "event_msg", "compacted", "world_state",
     "token_usage_record"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Delta:
    order: Order
    model: str
    usage: Usage
    fast: bool = False  # the priority service tier ("fast"): priced with its multiplier


def _order(entry: Delta) -> Order:
    return entry.order


_DELTA: spill.Codec[Delta] = spill.Codec(
    lambda d: marshal.dumps((d.order, d.model, dataclasses.astuple(d.usage), d.fast)),
    lambda b: (lambda t: Delta(t[0], t[1], Usage(*t[2]), t[3]))(marshal.loads(b)),
)


@dataclass(slots=True)
class Turn:
    """The settings of the latest turn_context."""

    model: str | None = None
    effort: str | None = None
    sandbox: str | None = None
    approval: str | None = None
    fast: bool = False  # service_tier "fast" / "priority"


class FileState:
    """One rollout file's contribution to its job, read in file order."""

    def __init__(self, file_id: int, path: str, previews: Previews) -> None:
        self.file_id = file_id
        self.path = path
        self.previews = previews
        self.own_id: str | None = None
        self.meta: dict[str, Any] = {}
        self.parent_id: str | None = None
        self.replay_until: str | None = None  # a fork's creation second while replaying
        self.header_ts = ""  # legacy files: only the first line has a timestamp
        self.first_ts: str | None = None
        self.last_ts: str | None = None
        self.cwd: str | None = None
        self.turn = Turn()
        self.turn_order: Order | None = None
        self.prev: Usage | None = None
        self.after_replay = False
        # Per token count and per tool call: spilled to the job's scratch file when long.
        self.deltas: spill.SpillMap[Delta] = spill.SpillMap(_DELTA, _order)
        self.context: tuple[Order, int | None, int] | None = None
        self.prompts = PromptTally()
        self.messages = 0
        self.conversation = 0  # prompts, answers, counted tokens and tool calls
        self.limits = codex_limits.RateLog()
        # Per-response usage (`token_usage_record`), kept only while the file has no
        # token_count: it is the same usage, counted from it only when nothing else says it.
        self.usage_records: spill.SpillMap[Delta] = spill.SpillMap(_DELTA, _order)
        self.summary: tuple[Order, str] | None = None
        self.last_text: tuple[Order, str] | None = None
        self.status: tuple[Order, str] | None = None
        self.title: tuple[Order, str] | None = None
        self.tools = CallLog(previews)
        self.entries = 0  # deltas so far (their keys)
        self.skipped: Counter[str] = Counter()

    # -- reading -----------------------------------------------------------------------------

    def feed(self, obj: dict[str, Any], offset: int) -> str | None:
        """Read one line of this file; return its bad values, if any."""
        kind = obj.get("type")
        payload = obj.get("payload")
        raw_ts = obj.get("timestamp")
        ts = raw_ts if isinstance(raw_ts, str) else self.header_ts
        order: Order = (ts, self.file_id, offset)
        if isinstance(kind, str) and isinstance(payload, dict):
            sub = payload.get("type") if kind in ("response_item", "event_msg") else None
            if sub is not None and not isinstance(sub, str):
                sub = f"<{type(sub).__name__}>"  # (a list or an object is no kind we know)
            if not self._known(kind, sub):
                self.skipped[f"{kind}/{sub}" if sub is not None else kind] += 1
                if kind == "event_msg" and not self._in_replay(ts):
                    self.tools.outcome(payload)  # an unknown event may still report a failure
                return None
            if kind == "session_meta":
                self._session_meta(payload, ts)
                return None
            bad: list[str] = []
            if self._replayed(ts, kind, sub, payload, bad):
                return "; ".join(bad) if bad else None
            self._seen(ts)
            if kind == "turn_context":
                self._turn_context(payload, order)
            elif kind == "response_item":
                self._response(payload, order)
            elif kind == "event_msg":
                self._event(payload, order, bad)
            elif kind == "world_state":
                self._world_state(payload)
            elif kind == "token_usage_record":
                self._usage_record(payload, order, bad)
            return "; ".join(bad) if bad else None
        elif "record_type" in obj:
            self._seen(ts)  # legacy `{"record_type": "state"}` lines: nothing to read
        elif isinstance(kind, str) and kind in RESPONSE_KINDS:
            self._seen(ts)
            self._response(obj, order)  # a legacy line is a bare response item
        elif kind is None and isinstance(obj.get("id"), str) and isinstance(raw_ts, str):
            self._legacy_header(obj, raw_ts)
        else:
            self.skipped[kind if isinstance(kind, str) else "untyped"] += 1
        return None

    @staticmethod
    def _known(kind: str, sub: Any) -> bool:
        if kind not in TOP_KINDS:
            return False
        if kind == "response_item":
            return sub in RESPONSE_KINDS or sub in IGNORED_RESPONSE_KINDS
        if kind == "event_msg":
            return sub in EVENT_KINDS or sub in IGNORED_EVENT_KINDS
        return True

    def _seen(self, ts: str) -> None:
        if ts:
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts

    def _legacy_header(self, obj: dict[str, Any], ts: str) -> None:
        """The first line of a pre-wrapper rollout: `{id, timestamp, instructions}`."""
        if self.own_id is None:
            self.own_id = obj["id"]
            self.header_ts = ts
            self._seen(ts)

    def _session_meta(self, payload: dict[str, Any], ts: str) -> None:
        if self.own_id is not None:
            return  # a parent's meta embedded in a fork, or a later copy: not this session
        self.own_id = as_str(payload.get("id")) or as_str(payload.get("session_id")) or ""
        self.meta = payload
        self.cwd = as_str(payload.get("cwd"))
        forked = as_str(payload.get("forked_from_id"))
        self.parent_id = forked or _spawn_parent(payload)
        if forked:
            created = as_str(payload.get("timestamp")) or ts
            self.replay_until = created[:19]  # to the second: replayed lines share it
        self._seen(ts)

    def _in_replay(self, ts: str) -> bool:
        return self.replay_until is not None and ts[:19] <= self.replay_until

    def _replayed(
        self, ts: str, kind: str, sub: Any, payload: dict[str, Any], bad: list[str]
    ) -> bool:
        """Is this line part of a fork's copy of its parent's history?"""
        if self.replay_until is None:
            return False
        if ts[:19] > self.replay_until:
            self.replay_until = None  # the fork's own lines from here on
            return False
        if kind == "turn_context":
            self.turn.model = as_str(payload.get("model")) or self.turn.model
        elif sub == "token_count":
            info = payload.get("info")
            total = usage_of(info.get("total_token_usage"), bad) if isinstance(info, dict) else None
            if total is not None and (self.prev is None or total.total > self.prev.total):
                self.prev = total
                self.after_replay = True
        return True

    def _turn_context(self, payload: dict[str, Any], order: Order) -> None:
        self._settings(payload, payload.get("effort"), order)

    def _settings(self, settings: dict[str, Any], effort: Any, order: Order) -> None:
        """A turn_context or thread_settings_applied: what it omits stays as it was."""
        sandbox = settings.get("sandbox_policy", settings.get("sandbox_mode"))
        if isinstance(sandbox, dict):
            sandbox = sandbox.get("type") or sandbox.get("mode")
        tier = settings.get("service_tier")
        self.turn = Turn(
            model=as_str(settings.get("model")) or self.turn.model,
            effort=as_str(effort) or self.turn.effort,
            sandbox=as_str(sandbox) or self.turn.sandbox,
            approval=as_str(settings.get("approval_policy")) or self.turn.approval,
            fast=tier in FAST_TIERS if isinstance(tier, str) else self.turn.fast,
        )
        self.turn_order = order
        self.cwd = as_str(settings.get("cwd")) or self.cwd

    def _world_state(self, payload: dict[str, Any]) -> None:
        """The standing-instructions snapshot: only its model is of use (before any turn)."""
        state = payload.get("state")
        if isinstance(state, dict) and self.turn.model is None:
            self.turn.model = as_str(state.get("model"))

    def _usage_record(self, payload: dict[str, Any], order: Order, bad: list[str]) -> None:
        """One response's usage (`token_usage_record`): the same tokens as token_count's,
        kept to count only when this file has no token_count at all."""
        if self.prev is not None:
            return
        usage = usage_of(payload.get("usage"), bad)
        if usage is None or usage.total <= 0:
            return
        key = as_str(payload.get("response_id")) or f"line:{order[2]:012d}"
        model = as_str(payload.get("model")) or self.turn.model or ""
        self.usage_records.offer(key, Delta(order, model, usage, self.turn.fast))

    def _response(self, item: dict[str, Any], order: Order) -> None:
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            parts = texts_of(item.get("content"))
            if role == "user":
                typed = codex_typed(parts)
                if not typed or is_boilerplate(typed):  # injected context only
                    self.cwd = self.cwd or cwd_from_environment("\n".join(parts))
                    return
                self.messages += 1
                self.conversation += 1
                self.prompts.item(order, typed)
            elif role == "assistant":
                self.messages += 1
                self.conversation += 1
                text = "\n".join(parts)
                if text:
                    self.last_text = (order, text)
        elif kind in ("function_call", "custom_tool_call"):
            name = as_str(item.get("name")) or "?"
            raw = item.get("arguments") if kind == "function_call" else item.get("input")
            patch = _patch_of(name, raw)
            self._call(order, item.get("call_id"), name, raw, patch)
        elif kind == "local_shell_call":
            action = item.get("action")
            command = action.get("command") if isinstance(action, dict) else None
            patch = shell_patch(orjson.dumps({"command": command}).decode()) if command else None
            call_id = item.get("call_id") or item.get("id")
            self._call(order, call_id, "local_shell", action, patch)
        elif kind == "web_search_call":
            call_id = item.get("call_id") or item.get("id")
            self._call(order, call_id, "web_search", item.get("action"), None)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = as_str(item.get("call_id"))
            if call_id is not None:
                text, exit_code = tool_output(item.get("output"))
                self.tools.output(call_id, preview(text), exit_code)
            return
        if kind in ("function_call", "custom_tool_call", "local_shell_call", "web_search_call"):
            status = item.get("status")  # a failed status on the call itself (web search…)
            call_id = as_str(item.get("call_id")) or as_str(item.get("id"))
            if call_id and isinstance(status, str) and failure_of({"status": status}):
                self.tools.result(call_id).event_failed = True

    def _call(self, order: Order, call_id: Any, name: str, raw: Any, patch: str | None) -> None:
        files = [absolute(p, self.cwd) for p in patch_paths(patch)] if patch else []
        call_id = call_id if isinstance(call_id, str) and call_id else None
        self.conversation += 1
        self.tools.call(order, call_id, name, preview(dumps_preview_source(raw)), files,
                        patch is not None)  # fmt: skip

    def maps(self) -> list[spill.SpillMap[Any]]:
        return [self.deltas, *self.tools.maps(), *self.prompts.maps(), self.limits.readings,
                self.usage_records]  # fmt: skip

    def _event(self, payload: dict[str, Any], order: Order, bad: list[str]) -> None:
        kind = payload.get("type")
        if kind == "user_message":
            text = payload.get("message")
            self.status = (order, "ok")
            written_as = payload.get("kind")  # some versions: "plain", or injected context
            if isinstance(written_as, str) and written_as not in ("plain", "user"):
                return
            typed = codex_typed([text]) if isinstance(text, str) else ""
            if typed and not is_boilerplate(typed):
                self.conversation += 1
                self.prompts.event(order, typed)
        elif kind == "agent_message":
            text = as_str(payload.get("message"))
            self.conversation += 1
            if text:
                self.last_text = (order, text)
        elif kind == "task_complete":
            text = as_str(payload.get("last_agent_message"))
            if text:
                self.summary = (order, text)
            self.status = (order, "error" if payload.get("error") else "ok")
        elif kind == "turn_aborted":
            self.status = (order, "interrupted")
        elif kind == "error":
            self.status = (order, "error")
        elif kind == "thread_name_updated":
            name = as_str(payload.get("thread_name"))
            if name:
                self.title = (order, name)
        elif kind == "exec_command_end":
            call_id = as_str(payload.get("call_id"))
            code = payload.get("exit_code")
            if call_id and isinstance(code, int) and not isinstance(code, bool):
                self.tools.result(call_id).exec_exit = code
            self.tools.outcome(payload)
        elif kind == "patch_apply_end":
            call_id = as_str(payload.get("call_id"))
            if call_id:
                result = self.tools.result(call_id)
                result.patch_success = payload.get("success") is True
                result.patch_files = [
                    absolute(p, self.cwd) for p in changed_paths(payload.get("changes"))
                ]
        elif kind == "token_count":
            self.limits.read(payload.get("rate_limits"), order, bad)
            self._token_count(payload, order, bad)
        elif kind == "account/rateLimits/updated":
            self.limits.read(payload.get("rate_limits"), order, bad)
        elif kind == "item_completed":
            self.tools.completed(payload.get("item"), order, self.cwd)
        elif kind == "thread_settings_applied":
            settings = payload.get("thread_settings")
            if isinstance(settings, dict):
                self._settings(settings, settings.get("reasoning_effort"), order)
        else:  # mcp_tool_call_end, dynamic_tool_call_response: only their outcome
            self.tools.outcome(payload)

    def _token_count(self, payload: dict[str, Any], order: Order, bad: list[str]) -> None:
        info = payload.get("info")
        if not isinstance(info, dict):
            return  # `info: null`: a rate-limit refresh only
        total = usage_of(info.get("total_token_usage"), bad)
        if total is None:
            return
        prev, restarted = self.prev, self.after_replay and self.prev is not None
        self.after_replay = False
        if prev is None or (restarted and total.total < prev.total):
            # The first count, or a fork whose counter starts again from zero.
            delta: Usage | None = total
        elif total.total > prev.total:
            delta = total.minus(prev)
        else:
            delta = None  # re-emitted (or out-of-date) total: nothing new
        if delta is not None:
            self.prev = total
            self.entries += 1
            self.conversation += 1
            entry = Delta(order, self.turn.model or "", delta, self.turn.fast)
            self.deltas.offer(f"{self.entries:012d}", entry)
        last = usage_of(info.get("last_token_usage"), bad)
        window = info.get("model_context_window")
        if last is not None:
            self.context = (order, window if isinstance(window, int) and window > 0 else None,
                            last.input)  # fmt: skip


FAST_TIERS = frozenset({"fast", "priority"})


def _spawn_parent(payload: dict[str, Any]) -> str | None:
    """The parent thread of a subagent rollout (`source.subagent.thread_spawn`)."""
    source = payload.get("source")
    if isinstance(source, dict):
        subagent = source.get("subagent")
        if isinstance(subagent, dict):
            spawn = subagent.get("thread_spawn")
            if isinstance(spawn, dict):
                parent = as_str(spawn.get("parent_thread_id"))
                if parent:
                    return parent
    return as_str(payload.get("parent_thread_id"))


def _patch_of(name: str, raw: Any) -> str | None:
    """The apply_patch body of a tool call, whichever way the call carries it."""
    if name == "apply_patch":
        if isinstance(raw, str) and raw.lstrip().startswith("{"):
            try:
                decoded = orjson.loads(raw)
            except orjson.JSONDecodeError:
                decoded = None
            if isinstance(decoded, dict):
                inner = decoded.get("input") or decoded.get("patch")
                return inner if isinstance(inner, str) else None
        return raw if isinstance(raw, str) else None
    return shell_patch(raw)
