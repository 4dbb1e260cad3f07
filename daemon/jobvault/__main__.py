"""Allow `python -m jobvault`."""

from jobvault.cli import main

# Guarded: a worker process's start (multiprocessing) may import the main module again.
if __name__ == "__main__":
    raise SystemExit(main())
