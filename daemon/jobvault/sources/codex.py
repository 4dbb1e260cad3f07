"""Codex CLI rollouts: which file belongs to which job, and lines → job record.

Layout (../shared/FORMATS.md): `${CODEX_HOME:-~/.codex}/sessions/YYYY/MM/DD/
rollout-<timestamp>-<uuid>.jsonl`, moved (flat) to `archived_sessions/` when archived. The
uuid is the session id and the job key, so a rollout moved or copied between the two trees
stays one job. When both trees hold the same rollout, the `sessions/` copy is the one the
record is derived from; other rollouts of the same session (different names) add up.

Per-file reading, token deltas and fork replays are in `codex_file.py`; this module chooses
the files and builds the record. Every field means what it means for Claude Code:
`input_tokens` is input not served from cache (Codex `input_tokens − cached_input_tokens`),
`cache_read_tokens` the cached input, `output_tokens` includes reasoning and
`reasoning_tokens` repeats it; there are no cache writes. A "message" of the hourly usage
rows is one counted token delta (one model response). Lines of a kind this module does not
know are archived like every line, skipped here and counted in `skipped_records`.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jobvault import pricing
from jobvault.records import (
    FileModified,
    JobDetail,
    JobRecord,
    Status,
    TextSample,
    UsageCandidate,
    UsageRow,
    duration_ms,
    join_sample,
)
from jobvault.sources import codex_limits, spill
from jobvault.sources.base import FileInfo, LineContext
from jobvault.sources.codex_calls import Call, Result
from jobvault.sources.codex_file import Delta, FileState, Order
from jobvault.sources.previews import Previews, RawCall, ToolCallCollector, ToolCallList
from jobvault.sources.prompts import codex_typed

SOURCE = "codex"
PATCH_TOOL = "apply_patch"
_ROLLOUT = re.compile(
    r"^rollout-(?:\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-)?"
    r"(?P<id>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\.jsonl$"
)
_TREES = ("sessions", "archived_sessions")


class CodexAdapter:
    """Codex CLI: rollouts under `sessions/` and `archived_sessions/`."""

    name = SOURCE

    def classify(self, path: Path) -> FileInfo | None:
        """Claim `rollout-*.jsonl` files in a Codex tree, or named like a rollout anywhere;
        and their compressed form `rollout-*.jsonl.zst` (Codex 0.137+), the same rollout."""
        name = rollout_name(path.name)
        if not name.startswith("rollout-") or not name.endswith(".jsonl"):
            return None
        match = _ROLLOUT.match(name)
        if match is None and not any(part in _TREES for part in path.parts[:-1]):
            return None
        key = match.group("id").lower() if match else None  # else: from session_meta.id
        return FileInfo("main", key, None, None, None)

    def job_key_from_line(self, obj: dict[str, Any]) -> str | None:
        payload = obj.get("payload")
        if obj.get("type") == "session_meta" and isinstance(payload, dict):
            key = payload.get("id")
        elif "payload" not in obj and "type" not in obj:
            key = obj.get("id")  # the legacy header line
        else:
            key = None
        return key if isinstance(key, str) and key else None

    def new_job(self, job_key: str) -> CodexJob:
        return CodexJob(job_key)


class CodexJob:
    """Accumulates the rollout files of one Codex session; each file keeps its own state."""

    def __init__(self, job_key: str) -> None:
        self.job_key = job_key
        self.files: dict[int, FileState] = {}
        self.texts: dict[int, TextSample] = {}  # per file: prompts and agent messages
        self.previews = Previews()  # every file's tool-call previews
        self._spill = spill.Spiller()

    def feed(self, obj: dict[str, Any], ctx: LineContext, offset: int) -> str | None:
        state = self.files.get(ctx.file_id)
        if state is None:
            state = self.files[ctx.file_id] = FileState(ctx.file_id, ctx.path, self.previews)
            self.texts[ctx.file_id] = TextSample()
            self._spill.adopt(state.maps())
        state.path = ctx.path  # a rename keeps the file id; the latest name counts
        self._sample_text(obj, state, offset)
        problem = state.feed(obj, offset)
        self._spill.offers += 1
        if self._spill.offers > spill.SPILL_AFTER:
            self._spill.check(m for state in self.files.values() for m in state.maps())
        return problem

    def _sample_text(self, obj: dict[str, Any], state: FileState, offset: int) -> None:
        """Keep the prompts and agent messages for full-text search (not a fork's replay)."""
        payload = obj.get("payload")
        if obj.get("type") != "event_msg" or not isinstance(payload, dict):
            return
        if payload.get("type") not in ("user_message", "agent_message"):
            return
        ts = obj.get("timestamp")
        ts = ts if isinstance(ts, str) else ""
        # FileState's replay test, asked before it sees the line (it may clear the mark).
        if state.replay_until is not None and ts[:19] <= state.replay_until:
            return
        text = payload.get("message")
        if isinstance(text, str):
            typed = codex_typed([text])  # not the instruction blocks Codex injects
            if typed:
                self.texts[state.file_id].add((ts, state.file_id, offset), typed)

    @property
    def spilled(self) -> bool:
        return self._spill.scratch is not None

    @property
    def _scratch(self) -> spill.Scratch | None:  # (for tests)
        return self._spill.scratch

    def usage_candidates(self) -> Iterator[tuple[str, UsageCandidate]]:
        """Codex usage is never shared between jobs: forks skip their replayed prefix."""
        return iter(())

    def usage_changes(self) -> list[tuple[str, UsageCandidate]] | None:
        return []

    def chosen_files(self) -> list[FileState]:
        """One file per rollout name (`x.jsonl` and `x.jsonl.zst` are one name), the
        `sessions/` copy first; ordered by file id."""
        by_name: dict[str, FileState] = {}
        for state in self.files.values():
            name = rollout_name(posixpath.basename(state.path))
            best = by_name.get(name)
            if best is None or _preference(state) < _preference(best):
                by_name[name] = state
        return sorted(by_name.values(), key=lambda s: s.file_id)

    def build(
        self,
        *,
        finalized: bool,
        machine_id: str | None,
        excluded_keys: frozenset[str] = frozenset(),
    ) -> JobDetail:
        """Derive the job record from the chosen files (`excluded_keys` never applies)."""
        files = self.chosen_files()
        # A file's usage is its token_count deltas; only a file without any falls back to its
        # per-response token_usage_record lines (the same usage, never both).
        sources = [f.deltas if len(f.deltas) else f.usage_records for f in files]
        deltas = (d for _, _, d in spill.ordered(sources))
        usage, totals, cost, unpriced, per_model = _usage(deltas)
        models = sorted(per_model, key=lambda m: (-per_model[m], m))
        tool_calls, failed, names, modified = _tools(files, self.previews, not self.spilled)
        primary = min(files, key=lambda f: (f.first_ts or "~", f.file_id), default=None)
        turn_file = max(
            (f for f in files if f.turn_order is not None),
            key=lambda f: f.turn_order or ("", 0, 0),
            default=None,
        )
        turn = turn_file.turn if turn_file else None
        meta = primary.meta if primary else {}
        git = meta.get("git") if isinstance(meta.get("git"), dict) else {}
        cwd = turn_file.cwd if turn_file and turn_file.cwd else primary.cwd if primary else None
        started = min((f.first_ts for f in files if f.first_ts), default=None)
        ended = max((f.last_ts for f in files if f.last_ts), default=None)
        # The first prompt the user typed: as an event (always the user's words), else as an
        # item (older versions wrote no event).
        prompt = _first(f.prompts.first_event for f in files) or _first(
            f.prompts.first_item for f in files
        )
        user_messages = sum(f.prompts.count() for f in files)
        summary = _last(f.summary for f in files) or _last(f.last_text for f in files)
        window, used_pct = _context(files, models[0] if models else None)
        skipped: Counter[str] = Counter()
        for f in files:
            skipped.update(f.skipped)
        record = JobRecord(
            id=f"{SOURCE}:{self.job_key}",
            source=SOURCE,
            session_id=self.job_key,
            project=posixpath.basename(cwd.rstrip("/")) or None if cwd else None,
            cwd=cwd,
            git_branch=_str(git.get("branch")) if isinstance(git, dict) else None,
            version=_str(meta.get("cli_version")),
            model=models[0] if models else (turn.model if turn else None),
            models=models,
            status=_status(files, finalized),
            started_at=started,
            ended_at=ended,
            duration_ms=duration_ms(started, ended),
            prompt=prompt,
            summary=summary[:2000] if summary else None,
            title=_last(f.title for f in files),
            input_tokens=totals[0],
            output_tokens=totals[1],
            cache_creation_tokens=totals[4],
            cache_read_tokens=totals[2],
            reasoning_tokens=totals[3],
            cost_usd=round(cost, 6),
            pricing_version=pricing.version(),
            tool_call_count=len(tool_calls),
            failed_tool_calls=failed,
            primary_tool=min(names, key=lambda n: (-names[n], n)) if names else None,
            files_modified=sorted({f.path for f in modified}),
            message_count=sum(f.messages for f in files),
            user_message_count=user_messages,
            subagent_count=0,  # Codex subagents are rollouts of their own, linked by parent
            context_window=window,
            context_used_pct=used_pct,
            source_path=primary.path if primary else None,
            machine_id=machine_id,
            unpriced_models=sorted(unpriced),
            parent_session_id=primary.parent_id if primary else None,
            reasoning_effort=turn.effort if turn else None,
            sandbox_policy=turn.sandbox if turn else None,
            approval_policy=turn.approval if turn else None,
            skipped_records=sum(skipped.values()),
            skipped_kinds=sorted(skipped),
        )
        pieces = [p for f in files for p in self.texts[f.file_id].pieces()]
        return JobDetail(
            record, tool_calls, [], modified, usage, join_sample(pieces),
            rate_limits=codex_limits.merged([f.limits for f in files]),
            empty=not any(f.conversation for f in files),
        )  # fmt: skip


def rollout_name(name: str) -> str:
    """A rollout's name whatever its form: `x.jsonl.zst` (compressed by Codex) is `x.jsonl`."""
    return name.removesuffix(".zst")


def _preference(state: FileState) -> tuple[int, str, int]:
    """The `sessions/` copy of a rollout wins over its `archived_sessions/` copy."""
    live = "/sessions/" in state.path.replace("\\", "/")
    return (0 if live else 1, state.path, state.file_id)


def _usage(
    deltas: Iterable[Delta],
) -> tuple[list[UsageRow], list[int], float, set[str], Counter[str]]:
    """Price each delta and total it per UTC hour and model, as Claude's messages are."""
    rows: dict[tuple[str, str], list[float]] = {}
    spans: dict[tuple[str, str], tuple[str, str]] = {}  # first, last delta time
    totals = [0, 0, 0, 0, 0]  # input not cached, output, cached input, reasoning, cache writes
    cost = 0.0
    unpriced: set[str] = set()
    per_model: Counter[str] = Counter()
    for d in deltas:
        u = d.usage
        fresh, written = u.fresh, u.cache_write
        price = pricing.lookup(d.model)
        if price is None:
            delta_cost = 0.0
            unpriced.add(d.model or "unknown")  # no turn said which model: not priced either
        else:
            delta_cost = pricing.message_cost(price, fresh, u.output, written, 0, u.cached, d.fast)
        for i, value in enumerate((fresh, u.output, u.cached, u.reasoning, written)):
            totals[i] += value
        cost += delta_cost
        if d.model:
            per_model[d.model] += 1
        ts = d.order[0]
        hour = ts[:13] if len(ts) >= 13 and ts[:4].isdigit() else "unknown"
        row = rows.setdefault((hour, d.model or "unknown"), [0, 0, 0, 0, 0, 0.0, 0])
        for i, amount in enumerate(
            (1, fresh, u.output, u.cached, u.reasoning, delta_cost, written)
        ):
            row[i] += amount
        if hour != "unknown":
            first, last = spans.get((hour, d.model or "unknown"), (ts, ts))
            spans[(hour, d.model or "unknown")] = (min(first, ts), max(last, ts))
    usage = [
        UsageRow(hour, model, int(r[0]), int(r[1]), int(r[2]), int(r[6]), int(r[3]), int(r[4]),
                 round(r[5], 6), *spans.get((hour, model), (None, None)))
        for (hour, model), r in sorted(rows.items())
    ]  # fmt: skip
    return usage, totals, cost, unpriced, per_model


def _tool_rows(files: list[FileState]) -> Iterator[tuple[RawCall, Call, Result | None]]:
    """Every tool call of the chosen files with its result, in the order of their lines."""
    for i, _, call in spill.ordered([f.tools.calls for f in files]):
        result = files[i].tools.results.get(call.call_id) if call.call_id else None
        raw = RawCall(
            call.call_id,
            call.name,
            None,
            bool(result and result.failed),
            call.order[0] or None,
            call.input_preview,
            result.output_preview if result else None,
        )
        yield raw, call, result


def _tools(
    files: list[FileState], previews: Previews, in_memory: bool
) -> tuple[ToolCallList, int, Counter[str], list[FileModified]]:
    """Tool calls with their outputs and failures, and the files successful patches touched.

    A spilled job's calls are read again from its scratch file when they are written.
    """
    collector = ToolCallCollector(lambda: _tool_rows(files), previews, keep=in_memory)
    failed = 0
    names: Counter[str] = Counter()
    modified: Counter[str] = Counter()
    for raw, call, result in collector:
        is_error = raw.is_error
        failed += is_error
        names[call.name] += 1
        touched: set[str] = set()
        if call.is_patch and not is_error:  # the apply_patch body's files
            touched.update(call.patch_files)
        if result is not None and result.patch_success:
            # An applied patch (patch_apply_end, FileChange) modified its files, whatever
            # the call that applied it did afterwards (an `exec` script that then failed).
            touched.update(result.patch_files)
        modified.update(touched)
    for f in files:  # applied patches without a call (an intercepted shell, `exec`'s items)
        for call_id, result in f.tools.results.items():
            if result.patch_success and f.tools.called.get(call_id) is None:
                modified.update(set(result.patch_files))
    files_modified = [FileModified(p, PATCH_TOOL, n) for p, n in sorted(modified.items())]
    listing = collector.listing()
    return listing, failed, names, files_modified


def _context(files: list[FileState], model: str | None) -> tuple[int | None, float | None]:
    """The prompt size of the last response against the model's window."""
    latest: tuple[Order, int | None, int] | None = None
    for f in files:
        if f.context is not None and (latest is None or f.context[0] > latest[0]):
            latest = f.context
    if latest is None:
        return None, None
    _, window, used = latest
    if window is None:
        price = pricing.lookup(model)
        window = price.context_window if price else None
    if not window:
        return None, None
    return window, round(100.0 * used / window, 2)


def _status(files: list[FileState], finalized: bool) -> Status:
    if not finalized:
        return "active"
    last = _last(f.status for f in files)
    return "interrupted" if last == "interrupted" else "error" if last == "error" else "completed"


def _first(values: Any) -> str | None:
    present = [v for v in values if v is not None]
    return min(present)[1] if present else None


def _last(values: Any) -> str | None:
    present = [v for v in values if v is not None]
    return max(present)[1] if present else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = ["CodexAdapter", "CodexJob"]
