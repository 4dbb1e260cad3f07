"""The interface every source adapter implements.

An adapter (1) tells which files under a root are its transcripts and which job each file
belongs to, and (2) turns parsed lines into a job accumulator that yields the job record. The
accumulator must be insensitive to the interleaving of lines *across* files (lines of one file
always arrive in order), so that ingesting live and rebuilding from the archive agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from jobvault.pickling import quick
from jobvault.records import JobDetail, UsageCandidate


@quick
@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a file's path says about it."""

    role: Literal["main", "subagent"]
    job_key: str | None  # the session id; None until the content tells (flat subagent files)
    agent_id: str | None
    layout: Literal["subagents-dir", "flat-file"] | None
    project: str | None


@dataclass(frozen=True, slots=True)
class LineContext:
    """Which file a line came from; (file_id, offset) orders lines deterministically."""

    file_id: int
    role: Literal["main", "subagent"]
    agent_id: str | None
    layout: Literal["subagents-dir", "flat-file"] | None
    project: str | None
    path: str


class Accumulator(Protocol):
    job_key: str

    @property
    def spilled(self) -> bool:
        """Is the per-message state in a scratch file (a very long session)?"""
        ...

    def feed(self, obj: dict[str, Any], ctx: LineContext, offset: int) -> str | None:
        """Take one parsed line; return a description of a bad value in it, if any.

        A bad value (a token count out of range, say) is not used; the engine counts the line
        in `bad_lines` with that reason. Every other field of the line is still read.
        """
        ...

    def build(
        self,
        *,
        finalized: bool,
        machine_id: str | None,
        excluded_keys: frozenset[str] = frozenset(),
    ) -> JobDetail: ...

    def usage_candidates(self) -> Iterable[tuple[str, UsageCandidate]]:
        """The job's best copy of each deduplicated message, in key order."""
        ...

    def usage_changes(self) -> list[tuple[str, UsageCandidate]] | None:
        """The best copies of the messages offered since the last `usage_changes` or
        `usage_candidates`, in key order; None when it cannot tell (ask for all of them).

        Lets the writer settle a live session by what changed, not by all its messages.
        """
        ...


class Adapter(Protocol):
    name: str

    def classify(self, path: Path) -> FileInfo | None: ...

    def job_key_from_line(self, obj: dict[str, Any]) -> str | None: ...

    def new_job(self, job_key: str) -> Accumulator: ...
