"""Source adapters: one module per agent, all behind the small interface in `base`.

`Engine.classify` asks the adapters in this order and the first claim wins: Codex claims only
its rollout files, Claude Code every other `.jsonl`, so Codex must come first.
"""

from jobvault.sources.base import Adapter, FileInfo, LineContext
from jobvault.sources.claude import ClaudeAdapter
from jobvault.sources.codex import CodexAdapter

ADAPTERS: dict[str, Adapter] = {"codex": CodexAdapter(), "claude": ClaudeAdapter()}

__all__ = ["ADAPTERS", "Adapter", "FileInfo", "LineContext"]
