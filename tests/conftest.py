"""Shared fixtures. Every test runs with HOME, the XDG variables and the agents' variables
pointed at a temporary directory: the machine's own home is never read."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

# The PostgreSQL server of the team-vault tests (session-scoped, skipped when none can be had).
pytest_plugins = ("tests.pg",)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"


def pytest_report_header() -> str:
    return f"sqlite {sqlite3.sqlite_version}"


def _quiet_logs() -> None:
    """Tests log warnings and errors only (a test that checks logs configures its own)."""
    structlog.reset_defaults()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def pytest_configure(config: pytest.Config) -> None:
    _quiet_logs()
    if os.environ.get("JOBVAULT_TEST_SPILL"):
        # Run the whole suite with every session's state on disk from its first entries
        # (`JOBVAULT_TEST_SPILL=1 make test`): the records must not change.
        from jobvault.sources import previews, spill

        spill.SPILL_AFTER, spill.FLUSH_EVERY, previews.MEMORY_BUDGET = 0, 3, 0
    if os.environ.get("JOBVAULT_TEST_WORKERS"):
        # Read every cold session in the worker processes, however little there is
        # (`make test` runs the record-building tests so too): the records must not change.
        from jobvault.ingest import workers

        workers.MIN_COLD_BYTES = 0


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_DATA_HOME", "xdg-data"),
        ("XDG_CONFIG_HOME", "xdg-config"),
        ("XDG_STATE_HOME", "xdg-state"),
        ("XDG_CACHE_HOME", "xdg-cache"),
    ):
        monkeypatch.setenv(var, str(tmp_path / sub))
    # Unix socket paths are limited to ~104 bytes: keep the runtime dir short.
    runtime = Path(tempfile.mkdtemp(prefix="jv-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    for var in ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):
        monkeypatch.delenv(var, raising=False)
    import os

    for var in list(os.environ):
        if var.startswith("JOBVAULT_"):
            monkeypatch.delenv(var)
    yield home
    shutil.rmtree(runtime, ignore_errors=True)
    from jobvault import pricing

    pricing.configure({})  # a test's price overrides never leak into the next test
    _quiet_logs()  # the CLI configures logging onto this test's captured stream


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples is not present")
    return SAMPLES


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "vault" / "jobvault.db"
