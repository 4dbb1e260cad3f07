"""Replay a session from the archive alone: the normalized events of its lines.

The archive holds every line of every file of a session, so a transcript Claude Code (or
Codex) deleted long ago can still be read. `events()` turns those lines into a flat list of
normalized events in reading order: prompts, assistant text, thinking, tool calls (each with
its result folded in, errors marked), API errors, interruptions; a subagent's events follow
the tool call that started it, one level deeper. `cli/replay_view.py` prints them for a person.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from jobvault.sources.claude import INTERRUPT_MARK, SYNTHETIC_MODEL
from jobvault.sources.claude import _is_command_wrapper as is_command_wrapper
from jobvault.sources.codex_parse import tool_output
from jobvault.store import queries
from jobvault.store.archive import iter_archived_objects, iter_chunks

Event = dict[str, Any]


@dataclass
class _Stream:
    """The events of the main chain or of one subagent, and its tool calls by id."""

    events: list[Event] = field(default_factory=list)
    calls: dict[str, Event] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)


def _lines(conn: sqlite3.Connection, ident: str) -> tuple[str, str, Iterator[Any]]:
    job_id, files = queries.job_files(conn, ident)
    source = conn.execute("SELECT source FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    files = sorted(files, key=lambda f: (f.role != "main", f.id))

    def generate() -> Iterator[tuple[Any, dict[str, Any]]]:
        for row in files:
            chunks = iter_chunks(conn, row.id)
            for _, obj in iter_archived_objects(chunks, queries.TRANSCRIPT_LINE_LIMIT):
                yield row, obj

    return job_id, source, generate()


def events(conn: sqlite3.Connection, ident: str) -> dict[str, Any]:
    """The job's normalized events, in reading order (see the module docstring)."""
    job_id, source, lines = _lines(conn, ident)
    if source == "codex":
        return {"job_id": job_id, "events": _codex(line for _, line in lines)}
    streams: dict[str | None, _Stream] = {None: _Stream()}
    for row, obj in lines:
        sidechain = row.role == "subagent" or bool(obj.get("isSidechain"))
        agent = row.agent_id if row.role == "subagent" else obj.get("agentId")
        key = (agent if isinstance(agent, str) else "sidechain") if sidechain else None
        stream = streams.setdefault(key, _Stream())
        for event in _claude(obj, stream):
            event["agent_id"] = key
            stream.events.append(event)
    out: list[Event] = []
    used: set[str | None] = {None}
    _flatten(streams, streams[None].events, 0, out, used)
    for key in sorted(k for k in streams if k not in used and k is not None):
        # No tool call names this subagent: place it where its first event happened.
        block: list[Event] = []
        used.add(key)
        block.append(_subagent_header(key, streams[key].events, 1))
        _flatten(streams, streams[key].events, 1, block, used)
        first = streams[key].events[0].get("timestamp") if streams[key].events else None
        at = next(
            (
                i
                for i, e in enumerate(out)
                if e["depth"] == 0 and first and (e.get("timestamp") or "") > first
            ),
            len(out),
        )
        out[at:at] = block
    for seq, event in enumerate(out):
        event["seq"] = seq
    return {"job_id": job_id, "events": out}


def _flatten(
    streams: dict[str | None, _Stream],
    items: list[Event],
    depth: int,
    out: list[Event],
    used: set[str | None],
) -> None:
    for event in items:
        event["depth"] = depth
        out.append(event)
        result = event.get("result") if event["kind"] == "tool_call" else None
        link = result.get("agent_id") if isinstance(result, dict) else None
        if isinstance(link, str) and link in streams and link not in used:
            used.add(link)
            out.append(_subagent_header(link, streams[link].events, depth + 1))
            _flatten(streams, streams[link].events, depth + 1, out, used)


def _subagent_header(agent: str, items: list[Event], depth: int) -> Event:
    return {
        "kind": "subagent",
        "agent_id": agent,
        "timestamp": items[0].get("timestamp") if items else None,
        "depth": depth,
        "events": len(items),
    }


def input_summary(value: Any) -> str:
    """One line naming what a tool call acted on (its command, file, pattern...)."""
    if isinstance(value, dict):
        for key in ("command", "file_path", "pattern", "path", "description", "query", "url"):
            found = value.get(key)
            if isinstance(found, list) and all(isinstance(v, str) for v in found):
                found = found[-1] if found[:2] == ["bash", "-lc"] else " ".join(found)
            if isinstance(found, str):
                return input_summary(found)
        value = orjson.dumps(value).decode()
    text = " ".join(str(value or "").split())
    return text if len(text) <= 160 else text[:159] + "…"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text" and isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif block.get("type") == "image":
                    parts.append("[image]")
            elif isinstance(block, str):
                parts.append(block)
    return "\n".join(parts)


def _claude(obj: dict[str, Any], stream: _Stream) -> Iterator[Event]:
    """Normalize one Claude Code line (streamed repeats of a block are skipped)."""
    kind = obj.get("type")
    ts = obj.get("timestamp") if isinstance(obj.get("timestamp"), str) else None
    uuid = obj.get("uuid")
    if isinstance(uuid, str):
        if uuid in stream.seen:
            return
        stream.seen.add(uuid)
    message = obj.get("message")
    if kind == "summary" and isinstance(obj.get("summary"), str):
        yield {"kind": "summary", "timestamp": ts, "text": obj["summary"]}
    elif kind == "system" and obj.get("subtype") in ("api_error", "error"):
        text = obj.get("content") or obj.get("error") or "API error"
        yield {"kind": "error", "timestamp": ts, "text": _text(text) or str(text)}
    elif kind == "assistant" and isinstance(message, dict):
        content = message.get("content")
        if obj.get("isApiErrorMessage") or message.get("model") == SYNTHETIC_MODEL:
            yield {"kind": "error", "timestamp": ts, "text": _text(content)}
            return
        for block in content if isinstance(content, list) else [content]:
            if isinstance(block, str) and block.strip():
                yield {"kind": "text", "timestamp": ts, "text": block}
            elif not isinstance(block, dict):
                continue
            elif block.get("type") == "text" and str(block.get("text", "")).strip():
                yield {"kind": "text", "timestamp": ts, "text": block["text"]}
            elif block.get("type") == "thinking" and block.get("thinking"):
                yield {"kind": "thinking", "timestamp": ts, "text": str(block["thinking"])}
            elif block.get("type") == "tool_use":
                call_id = block.get("id")
                if isinstance(call_id, str) and call_id in stream.calls:
                    continue
                event: Event = {"kind": "tool_call", "timestamp": ts, "id": call_id,
                                "name": block.get("name"), "input": block.get("input"),
                                "result": None}  # fmt: skip
                if isinstance(call_id, str):
                    stream.calls[call_id] = event
                yield event
    elif kind == "user" and isinstance(message, dict):
        if obj.get("isMeta") or obj.get("isCompactSummary"):
            return
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        for block in blocks:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                orphan = _fold(block, obj.get("toolUseResult"), stream, ts)
                if orphan is not None:
                    yield orphan
        text = _text([b for b in blocks if not (isinstance(b, dict) and
                                                b.get("type") == "tool_result")]
                     if blocks else content)  # fmt: skip
        if text.strip():
            prompt_kind = "prompt"
            if text.startswith(INTERRUPT_MARK):
                prompt_kind = "interrupt"
            elif is_command_wrapper(text):
                prompt_kind = "command"  # a slash command or local command output
            yield {"kind": prompt_kind, "timestamp": ts, "text": text}


def _fold(block: dict[str, Any], structured: Any, stream: _Stream, ts: str | None) -> Event | None:
    """Attach a tool result to its call; return an event only when the call is unknown."""
    content = block.get("content")
    result: dict[str, Any] = {
        "is_error": block.get("is_error") is True,
        "output": content if isinstance(content, str) else _text(content),
        "timestamp": ts,
    }
    if isinstance(structured, dict) and isinstance(structured.get("agentId"), str):
        result["agent_id"] = structured["agentId"]
    call = stream.calls.get(str(block.get("tool_use_id")))
    if call is None:
        return {"kind": "tool_result", "timestamp": ts, "id": block.get("tool_use_id"),
                "result": result}  # fmt: skip
    if call["result"] is None:
        call["result"] = result
    return None


def _codex(lines: Iterator[dict[str, Any]]) -> list[Event]:
    """Normalize a Codex rollout: event messages, tool calls with outputs and exit codes."""
    items = list(lines)
    has_events = any(
        o.get("type") == "event_msg"
        and isinstance(o.get("payload"), dict)
        and o["payload"].get("type") in ("user_message", "agent_message")
        for o in items
    )
    out: list[Event] = []
    calls: dict[str, Event] = {}
    for obj in items:
        inner = obj.get("payload")
        payload: dict[str, Any] = inner if isinstance(inner, dict) else obj
        ts = obj.get("timestamp") if isinstance(obj.get("timestamp"), str) else None
        kind = payload.get("type")
        message = payload.get("message")
        if kind == "user_message" and isinstance(message, str) and has_events:
            out.append({"kind": "prompt", "timestamp": ts, "text": message})
        elif kind == "agent_message" and isinstance(message, str) and has_events:
            out.append({"kind": "text", "timestamp": ts, "text": message})
        elif kind == "message" and not has_events and payload.get("role") in ("user", "assistant"):
            text = _text(
                [{"type": "text", "text": b.get("text")} for b in payload.get("content") or []
                 if isinstance(b, dict)]
            )  # fmt: skip
            if text.strip():
                role = "prompt" if payload.get("role") == "user" else "text"
                out.append({"kind": role, "timestamp": ts, "text": text})
        elif kind in ("function_call", "custom_tool_call", "local_shell_call", "web_search_call"):
            raw = payload.get("arguments", payload.get("input", payload.get("action")))
            if isinstance(raw, str):
                with contextlib.suppress(orjson.JSONDecodeError):
                    raw = orjson.loads(raw)
            name = payload.get("name") or str(kind).removesuffix("_call")
            event: Event = {"kind": "tool_call", "timestamp": ts, "id": payload.get("call_id"),
                            "name": name, "input": raw, "result": None}  # fmt: skip
            if isinstance(payload.get("call_id"), str):
                calls[payload["call_id"]] = event
            out.append(event)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call = calls.get(str(payload.get("call_id")))
            text, exit_code = tool_output(payload.get("output"))
            if call is not None:
                failed = exit_code not in (0, None) or bool((call["result"] or {}).get("is_error"))
                call["result"] = {"is_error": failed, "timestamp": ts, "output": text}
        elif kind in ("exec_command_end", "patch_apply_end"):
            call = calls.get(str(payload.get("call_id")))
            failed = payload.get("exit_code") not in (0, None) or payload.get("success") is False
            if call is not None and failed:
                call["result"] = {**(call["result"] or {"output": "", "timestamp": ts}),
                                  "is_error": True}  # fmt: skip
        elif kind == "error":
            out.append({"kind": "error", "timestamp": ts, "text": str(message or "error")})
        elif kind == "turn_aborted":
            out.append({"kind": "interrupt", "timestamp": ts, "text": "turn aborted"})
    for seq, event in enumerate(out):
        event.update(seq=seq, depth=0, agent_id=None)
    return out


# -- rendering -----------------------------------------------------------------------------
