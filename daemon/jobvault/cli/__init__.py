"""The command line: argument parsing, output and the commands (`jobvault ...`)."""

from jobvault.cli.app import main

__all__ = ["main"]
