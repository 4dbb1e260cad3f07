"""Default locations: where agents write their logs and where jobvault keeps its data.

Only environment variables decide these paths (HOME, XDG_*, CLAUDE_CONFIG_DIR, CODEX_HOME), so tests
can point every one of them at a temporary directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def home() -> Path:
    """Return the user's home directory from $HOME (never a passwd lookup)."""
    value = os.environ.get("HOME")
    return Path(value) if value else Path.home()


def is_macos() -> bool:
    return sys.platform == "darwin"


def data_dir() -> Path:
    """Return jobvault's data directory (XDG_DATA_HOME, or Application Support on macOS)."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "jobvault"
    if is_macos():
        return home() / "Library" / "Application Support" / "jobvault"
    return home() / ".local" / "share" / "jobvault"


def config_dir() -> Path:
    """Return jobvault's configuration directory (XDG_CONFIG_HOME)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else home() / ".config") / "jobvault"


def default_db_path() -> Path:
    return data_dir() / "jobvault.db"


def default_config_path() -> Path:
    return config_dir() / "jobvault.toml"


def claude_config_dirs() -> list[Path]:
    """Return Claude Code's config dirs: the two defaults and every CLAUDE_CONFIG_DIR entry."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    config_home = Path(xdg) if xdg else home() / ".config"
    dirs = [home() / ".claude", config_home / "claude"]
    env = os.environ.get("CLAUDE_CONFIG_DIR", "")
    dirs.extend(Path(p.strip()).expanduser() for p in env.split(",") if p.strip())
    return dirs


def default_watch_roots() -> list[Path]:
    """Return the transcript directories watched when none are configured.

    Claude Code's `projects/` folders, then Codex CLI's `sessions/` and `archived_sessions/`.
    """
    roots: list[Path] = []
    for base in claude_config_dirs():
        root = base / "projects"
        if root not in roots:
            roots.append(root)
    roots.extend(codex_session_roots())
    return roots


def codex_home() -> Path:
    """Return Codex CLI's home: $CODEX_HOME, else ~/.codex."""
    value = os.environ.get("CODEX_HOME", "").strip()
    return Path(value).expanduser() if value else home() / ".codex"


def codex_session_roots() -> list[Path]:
    """Return where Codex CLI writes rollouts: live sessions first, then archived ones."""
    base = codex_home()
    return [base / "sessions", base / "archived_sessions"]


# Unix socket paths are limited to 104 bytes on macOS and 108 on Linux (with the NUL).
SOCKET_PATH_MAX = 103 if is_macos() else 107


def runtime_dir() -> Path:
    """Return jobvault's runtime directory: $XDG_RUNTIME_DIR/jobvault, else a per-user tmp dir."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "jobvault"
    # macOS has no XDG runtime dir; its $TMPDIR is already per user. Elsewhere /tmp is shared,
    # so the directory carries the uid and is checked to be ours and 0700 before use.
    import tempfile

    return Path(tempfile.gettempdir()) / f"jobvault-{os.getuid()}"


def default_socket_path() -> Path:
    return runtime_dir() / "jobvault.sock"


# The IANA names of UTC itself (reports in these zones need no time zone database).
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu", "GMT", "Etc/GMT",
                       "Universal", "Etc/Universal"})  # fmt: skip


def local_zone_name() -> str:
    """This machine's IANA zone name ($TZ, else /etc/localtime's target), else UTC.

    Here rather than with the reports so that `jobvault stats` can name the zone without
    importing them (the daemon, or the reports, check the name).
    """
    candidate = os.environ.get("TZ", "").lstrip(":")
    if candidate in UTC_NAMES:  # (without importing zoneinfo: 3 ms of every report)
        return candidate
    if candidate:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(candidate)
            return candidate
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        target = os.path.realpath("/etc/localtime")
    except OSError:
        return "UTC"
    marker = "zoneinfo/"
    if marker in target:
        return target.split(marker, 1)[1]
    return "UTC"
