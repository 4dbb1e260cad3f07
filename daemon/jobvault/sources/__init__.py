"""Source adapters: one module per agent, all behind the small interface in `base`."""

from jobvault.sources.base import Adapter, FileInfo, LineContext
from jobvault.sources.claude import ClaudeAdapter

ADAPTERS: dict[str, Adapter] = {"claude": ClaudeAdapter()}

__all__ = ["ADAPTERS", "Adapter", "FileInfo", "LineContext"]
