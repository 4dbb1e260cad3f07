"""Configuration: defaults, then the TOML file, then JOBVAULT_* variables, then CLI flags.

Defaults work with no file at all. Every key is documented in config/jobvault.toml; a bad
value raises ConfigError naming the key (exit code CONFIG).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from jobvault import paths
from jobvault.errors import ConfigError

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any, Final, Literal, TypeAlias

    from jobvault.pricing import Price

    LogLevel: TypeAlias = Literal["debug", "info", "warning", "error"]
    Synchronous: TypeAlias = Literal["NORMAL", "FULL"]
    # What `jobvault sync` may send beyond figures and metadata, each only when listed in
    # `[sync] include` (docs/team.md says exactly what each one sends).
    SyncInclude: TypeAlias = Literal[
        "prompts", "summaries", "tool_previews", "file_paths", "git_branches", "archive"
    ]

LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
SYNC_INCLUDES: tuple[SyncInclude, ...] = (
    "prompts", "summaries", "tool_previews", "file_paths", "git_branches", "archive"
)  # fmt: skip
SYNC_KEYS = ("url", "include", "interval", "name", "batch_rows")  # the keys of [sync]


def default_workers() -> int:
    """Two worker processes where there are two cores or more; none on one core."""
    cores = os.cpu_count() or 1
    return min(2, cores) if cores > 1 else 0


class Config:
    """Everything the daemon and the CLI can be told; see config/jobvault.toml.

    Immutable (its attributes are Final; `replace` makes a changed copy). A plain class, not a
    dataclass: every CLI command builds one, and `dataclasses` imports `inspect`, which would
    be a seventh of `jobvault stats --json`'s whole run. A `None` default below is computed
    when the Config is made (the XDG paths and the cores of that moment).
    """

    def __init__(
        self,
        *,
        watch: tuple[Path, ...] | None = None,
        db: Path | None = None,
        idle_timeout: float = 300.0,
        max_line_bytes: int = 16 * 1024 * 1024,
        rescan_interval: float = 30.0,
        batch_interval: float = 0.05,
        batch_max_bytes: int = 8 * 1024 * 1024,
        compression_level: int = 3,
        max_open_files: int = 512,
        watch_events: bool = True,
        # Symlinks inside the watched roots are not followed unless asked (a root that is
        # itself a symlink is fine): a link to /etc/shadow or /dev/zero is never read.
        follow_symlinks: bool = False,
        # Worker processes that read, parse and build cold sessions (an import, a backfill)
        # while the one writer writes; 0 reads everything in the writer's process.
        workers: int | None = None,
        synchronous: Synchronous = "FULL",
        log_level: LogLevel = "info",
        socket: Path | None = None,
        max_connections: int = 512,
        max_request_bytes: int = 1024 * 1024,
        request_timeout: float = 10.0,
        request_read_timeout: float = 5.0,
        connection_idle_timeout: float = 300.0,
        sql_time_limit: float = 5.0,
        sql_max_rows: int = 10_000,
        # The user's prices ([pricing."model"] tables), looked up before the built-in table.
        pricing: dict[str, Price] | None = None,
        dashboard: bool = True,
        dashboard_port: int = 7370,
        # The team vault ([sync] in the file, JOBVAULT_SYNC_* variables; docs/team.md).
        sync_url: str | None = None,
        sync_include: tuple[SyncInclude, ...] = (),
        sync_interval: float = 5.0,
        sync_name: str | None = None,
        sync_batch_rows: int = 20_000,
        sql_max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.watch: Final = tuple(paths.default_watch_roots()) if watch is None else watch
        self.db: Final = paths.default_db_path() if db is None else db
        self.idle_timeout: Final = idle_timeout
        self.max_line_bytes: Final = max_line_bytes
        self.rescan_interval: Final = rescan_interval
        self.batch_interval: Final = batch_interval
        self.batch_max_bytes: Final = batch_max_bytes
        self.compression_level: Final = compression_level
        self.max_open_files: Final = max_open_files
        self.watch_events: Final = watch_events
        self.follow_symlinks: Final = follow_symlinks
        self.workers: Final = default_workers() if workers is None else workers
        self.synchronous: Final = synchronous
        self.log_level: Final = log_level
        self.socket: Final = paths.default_socket_path() if socket is None else socket
        self.max_connections: Final = max_connections
        self.max_request_bytes: Final = max_request_bytes
        self.request_timeout: Final = request_timeout
        self.request_read_timeout: Final = request_read_timeout
        self.connection_idle_timeout: Final = connection_idle_timeout
        self.sql_time_limit: Final = sql_time_limit
        self.sql_max_rows: Final = sql_max_rows
        self.pricing: Final[dict[str, Price]] = {} if pricing is None else pricing
        self.dashboard: Final = dashboard
        self.dashboard_port: Final = dashboard_port
        self.sync_url: Final = sync_url
        self.sync_include: Final = sync_include
        self.sync_interval: Final = sync_interval
        self.sync_name: Final = sync_name
        self.sync_batch_rows: Final = sync_batch_rows
        self.sql_max_bytes: Final = sql_max_bytes

    def values(self) -> dict[str, Any]:
        """Every key's value, by name (in KEYS order)."""
        return {key: getattr(self, key) for key in KEYS}

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes` (keys as in KEYS; an unknown one is a TypeError)."""
        return Config(**{**self.values(), **changes})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.values() == other.values()

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{k}={v!r}' for k, v in self.values().items())})"


# The keys, in order: the keyword parameters of Config (one list of them, not two).
KEYS: tuple[str, ...] = Config.__init__.__code__.co_varnames[
    1 : 1 + Config.__init__.__code__.co_kwonlyargcount
]


def _as_float(key: str, value: object, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(key, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(key, f"expected a number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(key, f"must be at least {minimum:g}, got {number:g}")
    return number


def _as_int(key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(key, f"expected an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {number}")
    return number


def _as_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    }:
        return value.lower() in {"1", "true", "yes", "on"}
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _as_path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a path, got {value!r}")
    # Absolute from the start: a relative path means the directory jobvault was started in,
    # for the whole life of the process (SQLite URIs and socket paths need it whole).
    return Path(value).expanduser().absolute()


def _as_paths(key: str, value: object) -> tuple[Path, ...]:
    if isinstance(value, str):
        items: list[object] = [v for v in value.split(os.pathsep) if v]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise ConfigError(key, f"expected a list of paths, got {value!r}")
    return tuple(_as_path(key, item) for item in items)


def _as_socket(key: str, value: object) -> Path:
    path = _as_path(key, value)
    if len(os.fsencode(str(path.absolute()))) > paths.SOCKET_PATH_MAX:
        raise ConfigError(
            key,
            f"{path} is longer than the {paths.SOCKET_PATH_MAX} bytes a Unix socket path allows",
        )
    return path


def _as_port(key: str, value: object) -> int:
    port = _as_int(key, value, 0)  # 0: any free port (tests); `jobvault dashboard` asks which
    if port > 65535:
        raise ConfigError(key, f"must be a TCP port (0 to 65535), got {port}")
    return port


def _pricing_overrides(key: str, value: object) -> object:
    # Imported here: the price table is only needed when the configuration has prices (it
    # would cost every CLI command's start a few milliseconds).
    from jobvault import pricing

    return pricing.parse_overrides(value, key)


def _as_choice(key: str, value: object, choices: tuple[str, ...], upper: bool = False) -> str:
    text = str(value).upper() if upper else str(value).lower()
    if text not in choices:
        raise ConfigError(key, f"expected one of {', '.join(choices)}, got {value!r}")
    return text


def _as_sync_url(key: str, value: object) -> str | None:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a PostgreSQL URL, got {value!r}")
    text = value.strip()
    if not text:
        return None  # an empty URL switches the team vault off
    url = "://" in text
    if (url and not text.startswith(("postgresql://", "postgres://"))) or (
        not url and "=" not in text
    ):
        raise ConfigError(key, "expected a PostgreSQL URL such as postgresql://user@host/dbname")
    return text


def _as_includes(key: str, value: object) -> tuple[SyncInclude, ...]:
    if isinstance(value, str):
        items: list[object] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise ConfigError(key, f"expected a list of names, got {value!r}")
    out: list[SyncInclude] = []
    for item in items:
        if item not in SYNC_INCLUDES:
            raise ConfigError(key, f"unknown {item!r} (known: {', '.join(SYNC_INCLUDES)})")
        if item not in out:
            out.append(item)
    return tuple(sorted(out, key=SYNC_INCLUDES.index))


def _as_name(key: str, value: object) -> str | None:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a name, got {value!r}")
    return value.strip()[:200] or None


_PARSERS: dict[str, Callable[[str, object], object]] = {
    "watch": _as_paths,
    "db": _as_path,
    "idle_timeout": lambda k, v: _as_float(k, v, 0.0),
    "max_line_bytes": lambda k, v: _as_int(k, v, 1024),
    "rescan_interval": lambda k, v: _as_float(k, v, 0.1),
    "batch_interval": lambda k, v: _as_float(k, v, 0.0),
    "batch_max_bytes": lambda k, v: _as_int(k, v, 4096),
    "compression_level": lambda k, v: _as_int(k, v, 1),
    "max_open_files": lambda k, v: _as_int(k, v, 8),
    "watch_events": _as_bool,
    "follow_symlinks": _as_bool,
    "workers": lambda k, v: _as_int(k, v, 0),
    "synchronous": lambda k, v: _as_choice(k, v, ("NORMAL", "FULL"), upper=True),
    "log_level": lambda k, v: _as_choice(k, v, LOG_LEVELS),
    "socket": lambda k, v: _as_socket(k, v),
    "max_connections": lambda k, v: _as_int(k, v, 1),
    "max_request_bytes": lambda k, v: _as_int(k, v, 1024),
    "request_timeout": lambda k, v: _as_float(k, v, 0.01),
    "request_read_timeout": lambda k, v: _as_float(k, v, 0.01),
    "connection_idle_timeout": lambda k, v: _as_float(k, v, 0.01),
    "sql_time_limit": lambda k, v: _as_float(k, v, 0.01),
    "sql_max_rows": lambda k, v: _as_int(k, v, 1),
    "pricing": lambda k, v: _pricing_overrides(k, v),
    "dashboard": _as_bool,
    "dashboard_port": lambda k, v: _as_port(k, v),
    "sync_url": _as_sync_url,
    "sync_include": _as_includes,
    "sync_interval": lambda k, v: _as_float(k, v, 0.05),
    "sync_name": _as_name,
    "sync_batch_rows": lambda k, v: _as_int(k, v, 1),
    "sql_max_bytes": lambda k, v: _as_int(k, v, 1024),
}
assert set(KEYS) == set(_PARSERS), "every Config key needs a parser"


def _apply(base: Config, values: Mapping[str, object], origin: str) -> Config:
    changes: dict[str, Any] = {}
    for key, value in values.items():
        parser = _PARSERS.get(key)
        if parser is None:
            raise ConfigError(key, f"unknown key in {origin} (known: {', '.join(KEYS)})")
        changes[key] = parser(key, value)
    if "compression_level" in changes and changes["compression_level"] > 22:
        raise ConfigError("compression_level", "must be between 1 and 22")
    return base.replace(**changes)


def read_file(path: Path) -> dict[str, object]:
    """Read a TOML config file; keys may sit at the top level or under [jobvault]."""
    import tomllib  # only when there is a file: it is slow to import for every command

    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    section = data.pop("jobvault", None)
    if isinstance(section, dict):
        data.update(section)
    sync = data.pop("sync", None)
    if isinstance(sync, dict):  # [sync] url = ... is the key sync_url
        for key, value in sync.items():
            if key not in SYNC_KEYS:
                raise ConfigError(
                    f"sync.{key}", f"unknown key in [sync] (known: {', '.join(SYNC_KEYS)})"
                )
            data[f"sync_{key}"] = value
    elif sync is not None:
        raise ConfigError("sync", "expected a [sync] table")
    return data


def env_values(environ: Mapping[str, str]) -> dict[str, object]:
    """Return the config keys set through JOBVAULT_<KEY> environment variables."""
    out: dict[str, object] = {}
    for key in KEYS:
        value = environ.get(f"JOBVAULT_{key.upper()}")
        if value is not None and value != "":
            out[key] = value
    return out


def load(
    config_path: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration from all four layers."""
    env = os.environ if environ is None else environ
    config = Config()
    explicit = config_path or (Path(env["JOBVAULT_CONFIG"]) if env.get("JOBVAULT_CONFIG") else None)
    if explicit is not None:
        explicit = explicit.expanduser().absolute()
        config = _apply(config, read_file(explicit), str(explicit))
    elif paths.default_config_path().is_file():
        default = paths.default_config_path()
        config = _apply(config, read_file(default), str(default))
    config = _apply(config, env_values(env), "the environment")
    if overrides:
        config = _apply(config, {k: v for k, v in overrides.items() if v is not None}, "flags")
    return config
