"""What of a job may leave the machine: figures and metadata always, text only when opted in.

Every field of a job record is listed here, either as metadata (always sent) or with the
`[sync] include` name that lets it go; a field nobody listed is never sent (a test fails when
`JobRecord` gains a field this module does not know). docs/team.md repeats these lists.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobvault.config import SyncInclude

# Sent by every machine: ids, figures, models, project, timing, tool names and failure counts.
METADATA = frozenset({
    "id", "source", "session_id", "project", "version", "model", "models", "status",
    "started_at", "ended_at", "duration_ms", "input_tokens", "output_tokens",
    "cache_creation_tokens", "cache_read_tokens", "reasoning_tokens", "cost_usd",
    "pricing_version", "tool_call_count", "failed_tool_calls", "primary_tool", "message_count",
    "user_message_count", "subagent_count", "context_window", "context_used_pct", "machine_id",
    "unpriced_models", "parent_session_id", "reasoning_effort", "sandbox_policy",
    "approval_policy", "skipped_records", "skipped_kinds",
})  # fmt: skip
# Sent only when the machine lists the name in `[sync] include`.
OPT_IN: dict[str, SyncInclude] = {
    "prompt": "prompts",
    "summary": "summaries",
    "title": "summaries",
    "cwd": "file_paths",
    "source_path": "file_paths",
    "files_modified": "file_paths",
    "git_branch": "git_branches",
}
# The child rows' text: a subagent's task description is written from the prompt.
SUBAGENT_DESCRIPTION: SyncInclude = "prompts"
TOOL_PREVIEWS: SyncInclude = "tool_previews"
FILE_PATHS: SyncInclude = "file_paths"


def allowed(field: str, include: Collection[str]) -> bool:
    """Whether a record field may be sent with these opt-ins."""
    if field in METADATA:
        return True
    wanted = OPT_IN.get(field)
    return wanted is not None and wanted in include


def record(rec: dict[str, Any], include: Collection[str]) -> dict[str, Any]:
    """The job record as sent: every known field, the withheld ones empty (None or [])."""
    out: dict[str, Any] = {}
    for key, value in rec.items():
        if key in METADATA:
            out[key] = value
        elif key in OPT_IN:
            if OPT_IN[key] in include:
                out[key] = value
            else:
                out[key] = [] if isinstance(value, list) else None
    return out
