"""`python tests/fault_wrapper.py python -m jobvault ARGS`: run jobvault with an adapter fault.

A Claude line carrying the key `jobvault_test_fault` makes the adapter raise, as a bug in it
would on a line shaped as nothing it expects. The tests run the real daemon under this to see
the session quarantined and everything else go on; `jobvault` run without it is the adapter
once fixed (`rebuild` then reads the session whole).
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

from jobvault.sources import LineContext, claude

MARKER = "jobvault_test_fault"
_feed = claude.ClaudeJob.feed


def _faulty_feed(self: claude.ClaudeJob, obj: dict[str, Any], ctx: LineContext, offset: int) -> Any:
    if MARKER in obj:
        raise RuntimeError("an adapter fault injected by the tests")
    return _feed(self, obj, ctx, offset)


if __name__ == "__main__":
    claude.ClaudeJob.feed = _faulty_feed  # type: ignore[method-assign]
    args = sys.argv[sys.argv.index("-m") + 2 :]  # after `python -m jobvault`
    sys.argv = ["jobvault", *args]
    runpy.run_module("jobvault", run_name="__main__", alter_sys=True)
