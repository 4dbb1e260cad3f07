"""The command line: argument parsing, output and the commands (`jobvault ...`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code.

    `statusline` runs every few hundred milliseconds inside Claude Code, so it is dispatched
    here, before the parser and the commands' imports (cli/statusline.py imports only small
    standard modules).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["statusline"]:
        from jobvault.cli.statusline import main as statusline

        return statusline(args[1:])
    from jobvault.cli.app import main as run

    return run(argv)


__all__ = ["main"]
