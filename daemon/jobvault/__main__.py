"""Allow `python -m jobvault`."""

from jobvault.cli import main

raise SystemExit(main())
