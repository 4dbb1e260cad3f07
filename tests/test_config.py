"""Configuration: defaults with no file, then file, environment and flags; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobvault import config as config_mod
from jobvault.cli import main
from jobvault.errors import ConfigError, ExitCode


def test_defaults_follow_xdg_and_claude_dirs(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", f"{tmp_path}/c1, {tmp_path}/c2")
    config = config_mod.load()
    assert config.db == tmp_path / "xdg-data" / "jobvault" / "jobvault.db"
    assert config.watch == (
        isolated_home / ".claude" / "projects",
        tmp_path / "xdg-config" / "claude" / "projects",
        tmp_path / "c1" / "projects",
        tmp_path / "c2" / "projects",
        isolated_home / ".codex" / "sessions",
        isolated_home / ".codex" / "archived_sessions",
    )
    assert 60 <= config.idle_timeout <= 900
    assert config.max_line_bytes >= 1024 * 1024


def test_layers_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "jobvault.toml"
    cfg.write_text(
        'idle_timeout = 10\nmax_line_bytes = 2048\nwatch = ["/a", "/b"]\nlog_level = "debug"\n'
    )
    monkeypatch.setenv("JOBVAULT_CONFIG", str(cfg))
    monkeypatch.setenv("JOBVAULT_IDLE_TIMEOUT", "20")
    config = config_mod.load(overrides={"max_line_bytes": 4096})
    assert config.idle_timeout == 20.0
    assert config.max_line_bytes == 4096
    assert config.watch == (Path("/a"), Path("/b"))
    assert config.log_level == "debug"


def test_default_config_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "xdg-config" / "jobvault" / "jobvault.toml"
    path.parent.mkdir(parents=True)
    path.write_text("[jobvault]\nrescan_interval = 5\n")
    assert config_mod.load().rescan_interval == 5.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("idle_timeout = -1\n", "idle_timeout"),
        ('idle_timeout = "soon"\n', "idle_timeout"),
        ("bogus = 1\n", "bogus"),
        ('log_level = "loud"\n', "log_level"),
        ("watch = 3\n", "watch"),
        ("compression_level = 40\n", "compression_level"),
        ("idle_timeout = \n", "config"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        config_mod.load(cfg)
    assert info.value.key == key
    assert key in str(info.value)


def test_bad_config_exits_with_config_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("idle_timeout = -5\n")
    code = main(["jobs", "--config", str(cfg)])
    assert code == ExitCode.CONFIG and int(code) == 78
    err = capsys.readouterr().err
    assert "idle_timeout" in err and err.count("\n") == 1


def test_missing_database_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["jobs", "--db", str(tmp_path / "none.db")]) == ExitCode.NOT_FOUND
    assert "no database at" in capsys.readouterr().err


def test_example_config_lists_every_key() -> None:
    example = (Path(__file__).resolve().parents[1] / "config" / "jobvault.toml").read_text()
    sync = example.split("# [sync]", 1)[1]  # the [sync] table's keys are sync_<key>
    for key in config_mod.KEYS:
        if key.startswith("sync_"):
            assert f"# {key[5:]} = " in sync, f"config/jobvault.toml does not document {key}"
        else:
            assert f"# {key} = " in example, f"config/jobvault.toml does not document {key}"


def test_example_config_values_are_the_defaults(tmp_path: Path) -> None:
    """Uncommenting every line of the example gives the built-in defaults."""
    example = (Path(__file__).resolve().parents[1] / "config" / "jobvault.toml").read_text()
    top, sync = example.split("# [sync]", 1)
    lines = [
        line[2:]
        for line in top.splitlines()
        if line.startswith("# ")
        and " = " in line
        and line[2:].split(" = ")[0] in config_mod.KEYS
        and line[2:].split(" = ")[0] not in ("watch", "db", "socket")
    ]
    lines.append("[sync]")
    lines += [
        line[2:]
        for line in sync.splitlines()
        if line.startswith("# ") and " = " in line and line[2:].split(" = ")[0] != "name"
    ]
    cfg = tmp_path / "all.toml"
    cfg.write_text("\n".join(lines) + "\n")
    loaded = config_mod.load(cfg)
    defaults = config_mod.Config()
    for key in config_mod.KEYS:
        if key not in ("watch", "db", "socket", "sync_name"):
            assert getattr(loaded, key) == getattr(defaults, key), key
