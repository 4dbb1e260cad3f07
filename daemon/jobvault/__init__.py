"""jobvault: archive AI coding-agent sessions losslessly and turn them into job records."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jobvault")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
