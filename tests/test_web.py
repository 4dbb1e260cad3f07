"""The dashboard over real HTTP against the real daemon: security, figures, pages, live events,
the export, the rate-limit method, `jobvault dashboard` and `jobvault report --html`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from structlog.testing import capture_logs

from jobvault.cli import main
from jobvault.errors import ExitCode
from jobvault.serve.client import Client
from jobvault.serve.protocol import RpcError
from jobvault.serve.web import security, views
from jobvault.service.daemon import Daemon, run_daemon
from jobvault.store import samples, stats
from jobvault.store.db import open_reader, open_writer
from tests.helpers import run, run_json
from tests.test_daemon import eventually
from tests.web_helpers import (
    LIVE,
    PLANTED,
    Vault,
    append_answer,
    make_vault,
    metrics,
    serving,
    session,
    wait_for_jobs,
)

FIXTURE_JOB = "claude:1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01"  # a subagent, 2 failed calls


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return make_vault(tmp_path)


@pytest.fixture
async def served(vault: Vault) -> AsyncIterator[tuple[Daemon, str, aiohttp.ClientSession]]:
    """The daemon, the dashboard's base URL and a client already signed in with the token."""
    async with serving(vault) as (daemon, url), session() as client:
        async with client.get(url["url"]) as response:
            assert response.status == 200, await response.text()
        yield daemon, f"http://127.0.0.1:{url['port']}", client


async def _get(client: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str]:
    async with client.get(url, **kwargs) as response:
        return response.status, await response.text()


# -- security -----------------------------------------------------------------------------------


async def test_every_request_needs_the_token_and_the_right_host(vault: Vault) -> None:
    async with serving(vault) as (_, url), session() as client, session(cookies=False) as bare:
        base = f"http://127.0.0.1:{url['port']}"
        for path in ("/", "/jobs", f"/jobs/{quote(FIXTURE_JOB)}", "/events", "/static/app.css",
                     f"/jobs/{quote(FIXTURE_JOB)}/export", "/api/choices"):  # fmt: skip
            status, body = await _get(bare, base + path)
            assert status == 401, path
            assert "jobvault dashboard" in body and "claude" not in body.lower()
        status, _ = await _get(bare, base + "/?token=" + "x" * 43)
        assert status == 401
        # The token in the URL becomes an HttpOnly, SameSite=Strict cookie, and leaves the URL.
        async with client.get(url["url"] + "&period=all", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/?period=all"
            cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        status, body = await _get(client, base + "/?period=all")
        assert status == 200 and 'data-metric="cost_usd"' in body
        # A name that resolves to 127.0.0.1 (DNS rebinding) is refused, cookie or not.
        for host in (f"evil.example:{url['port']}", "127.0.0.1", "localhost.evil:80"):
            status, body = await _get(client, base + "/", headers={"Host": host})
            assert status == 403, host
            assert "data-metric" not in body
        status, _ = await _get(client, base + "/", headers={"Host": f"localhost:{url['port']}"})
        assert status == 200


async def test_the_server_listens_on_loopback_only(served: Any) -> None:
    daemon, _base, _ = served
    assert daemon.web is not None and daemon.web._runner is not None
    bound = [
        sock.getsockname()
        for site in daemon.web._runner.sites
        for sock in (site._server.sockets if site._server else ())
    ]
    assert bound and all(address[0] == "127.0.0.1" for address in bound)
    # Another loopback address of this machine (a server on 0.0.0.0 would answer there).
    with socket.socket() as probe:
        probe.settimeout(1.0)
        assert probe.connect_ex(("127.0.1.1", daemon.web.port)) != 0


async def test_headers_forbid_other_origins(served: Any) -> None:
    _, base, client = served
    for path in ("/", "/jobs", f"/jobs/{quote(FIXTURE_JOB)}", "/static/app.js", "/nope"):
        async with client.get(base + path) as response:
            csp = response.headers["Content-Security-Policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["default-src"] == "'none'"
            assert directives["script-src"] == "'self'"  # no inline script, no eval
            assert directives["frame-ancestors"] == "'none'"
            assert "http" not in csp and "*" not in csp  # no other origin, anywhere
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Referrer-Policy"] == "no-referrer"
    status, _ = await _get(client, base + "/static/..%2Fapp.py")
    assert status == 404
    status, _ = await _get(client, base + "/static/plotly.min.js")
    assert status == 200


def test_the_token_is_private_and_stable(tmp_path: Path) -> None:
    db = tmp_path / "vault" / "jobvault.db"
    token = security.load_token(db)
    path = security.token_path(db)
    assert len(token) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert security.load_token(db) == token


# -- the overview: the same figures as `jobvault stats --json` ----------------------------------


@pytest.mark.parametrize(
    ("query", "flags"),
    [
        ("period=all&tz=UTC", []),
        ("since=2025-10-07&tz=UTC", ["--since", "2025-10-07"]),
        ("period=all&tz=Europe/Paris&project=-home-dev-webapp", ["--project=-home-dev-webapp"]),
        ("period=all&tz=UTC&source=codex", ["--source", "codex"]),
        ("since=2025-10-01&until=2025-11-04&tz=UTC&model=claude-sonnet-4-20250514",
         ["--since", "2025-10-01", "--until", "2025-11-04", "--model",
          "claude-sonnet-4-20250514"]),
    ],
)  # fmt: skip
async def test_overview_figures_equal_stats_json(
    served: Any, capsys: pytest.CaptureFixture[str], query: str, flags: list[str]
) -> None:
    daemon, base, client = served
    status, html = await _get(client, f"{base}/?{query}")
    assert status == 200, html
    shown = metrics(html)
    tz = re.search(r"tz=([^&]+)", query)
    assert tz is not None
    sock = ["--socket", str(daemon.config.socket), "--timezone", tz[1]]
    # The CLI blocks on the socket: run it beside the loop the daemon answers on.
    daily = await asyncio.to_thread(run_json, capsys, "stats", "daily", *flags, *sock)
    sources = await asyncio.to_thread(run_json, capsys, "stats", "sources", *flags, *sock)
    tools = await asyncio.to_thread(run_json, capsys, "stats", "tools", *flags, *sock)
    for key in ("cost_usd", "input_tokens", "output_tokens", "cache_creation_tokens",
                "cache_read_tokens"):  # fmt: skip
        assert shown[key] == daily["totals"][key], key
    assert shown["jobs"] == sum(r["jobs"] for r in sources["rows"])
    assert shown["tool_calls"] == tools["totals"]["calls"]
    assert shown["cost_usd"] > 0 and shown["jobs"] > 0
    # Each day's row is that day of the report.
    for row in daily["rows"]:
        assert f'<th scope="row">{row["period"]}</th>' in html


async def test_overview_lists_unpriced_models_and_offers_the_cli(served: Any) -> None:
    _, base, client = served
    status, html = await _get(client, base + "/?period=all&tz=UTC")
    assert status == 200
    assert "jobvault stats daily --timezone UTC --json" in html
    # The per-day series add up to what the reports count.
    assert html.count('class="chart') >= 9


async def test_overview_bad_parameters_are_a_page_not_a_crash(served: Any) -> None:
    _, base, client = served
    for query in ("period=fortnight", "tz=Mars/Olympus", "since=yesterdayish", "min_cost=abc"):
        status, html = await _get(client, f"{base}/?{query}")
        assert status == 400, query
        assert 'role="alert"' in html
    status, _ = await _get(client, f"{base}/?period=all")
    assert status == 200


def test_session_and_failure_series_add_up_to_the_reports(vault: Vault) -> None:
    assert main(["import", str(vault.claude), str(vault.codex), "--db", str(vault.db),
                 "--no-progress", "--json"]) == 0  # fmt: skip
    conn = open_reader(vault.db)
    try:
        for tz in ("UTC", "America/New_York"):
            calls = stats.tool_periods(conn, "day", timezone=tz)
            totals = stats.tools(conn)["totals"]
            assert sum(r["calls"] for r in calls) == totals["calls"]
            assert sum(r["failures"] for r in calls) == totals["failures"]
            days = stats.sessions(conn, "day", timezone=tz)
            usage = stats.usage(conn, "day", timezone=tz)
            assert [d["period"] for d in days] == [u["period"] for u in usage["rows"]]
            jobs = sum(r["jobs"] for r in stats.usage(conn, "source")["rows"])
            assert max(d["sessions"] for d in days) <= jobs <= sum(d["sessions"] for d in days)
        record = conn.execute("SELECT record FROM jobs WHERE id = ?", (FIXTURE_JOB,)).fetchone()
        job = json.loads(record[0])
        per_model = stats.job_models(conn, FIXTURE_JOB)
        for key in ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens"):
            assert sum(m[key] for m in per_model) == job[key]
        assert sum(m["cost_usd"] for m in per_model) == pytest.approx(job["cost_usd"], abs=2e-6)
        split = views.cost_by_kind(per_model)
        assert round(sum(split.values()), 6) == pytest.approx(job["cost_usd"], abs=1e-5)
    finally:
        conn.close()


# -- jobs ---------------------------------------------------------------------------------------


async def test_search_finds_a_planted_word_and_filters_select(served: Any) -> None:
    daemon, base, client = served
    status, html = await _get(client, f"{base}/jobs?q={PLANTED}")
    assert status == 200
    assert f"/jobs/{quote('claude:' + LIVE, safe='')}" in html
    assert f"<mark>{PLANTED}</mark>" in html
    assert html.count('<tr data-href="') == 1
    status, html = await _get(client, f"{base}/jobs?q=nosuchwordanywhere")
    assert "No job matches" in html
    # Every jobs.list filter, through the page's fields: the same jobs, in the same order, as
    # `jobs.list` with that filter.
    cases = {
        "source=codex": {"source": "codex"}, "status=error": {"status": "error"},
        "tool=Grep": {"tool": "Grep"}, "project=-home-dev-api": {"project": "-home-dev-api"},
        "cwd=/home/dev/webapp": {"cwd": "/home/dev/webapp"},
        "file=/home/dev/webapp/src/": {"file_prefix": "/home/dev/webapp/src/"},
        "file=*.py": {"file_glob": "*.py"},
        "file=/home/dev/webapp/src/app.py": {"file": "/home/dev/webapp/src/app.py"},
        "min_cost=0.1": {"min_cost": 0.1}, "max_cost=0.01": {"max_cost": 0.01},
        "since=2025-11-01": {"since": "2025-11-01"}, "until=2025-10-07": {"until": "2025-10-07"},
        "model=claude-haiku-4-5-20251001": {"model": "claude-haiku-4-5-20251001"},
        "status=completed&source=claude&order=cost_usd":
            {"status": "completed", "source": "claude", "order": "cost_usd"},
    }  # fmt: skip
    counts: dict[str, int] = {}
    for query, params in cases.items():
        status, html = await _get(client, f"{base}/jobs?{query}")
        assert status == 200, (query, html)
        listed = await asyncio.to_thread(_call, daemon.config.socket, "jobs.list", params)
        expected = [f"/jobs/{quote(j['id'], safe='')}" for j in listed["jobs"]]
        assert re.findall(r'<tr data-href="([^"]+)"', html) == expected, query
        counts[query] = len(expected)
    # The filters really select different jobs, and none selects nothing.
    assert len(set(counts.values())) > 3 and 0 not in counts.values(), counts
    status, html = await _get(client, f"{base}/jobs?q={PLANTED}&source=codex")
    assert html.count('<tr data-href="') == 0
    status, html = await _get(client, f"{base}/jobs?min_cost=lots")
    assert status == 400 and "min_cost must be a number" in html


async def test_jobs_sort_and_page(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, base, client = served
    monkeypatch.setattr(views, "PAGE_SIZE", 4)
    status, html = await _get(client, f"{base}/jobs?order=-cost_usd")
    costs = [float(c) for c in re.findall(r'class="n" data-sort="([0-9.e-]+)">\$', html)]
    assert costs == sorted(costs, reverse=True) and len(costs) == 4
    seen = re.findall(r'<tr data-href="([^"]+)"', html)
    pages = 1
    while True:
        found = re.search(r'rel="next" href="([^"]+)"', html)
        if not found:
            break
        status, html = await _get(client, base + found[1].replace("&amp;", "&"))
        assert status == 200
        seen += re.findall(r'<tr data-href="([^"]+)"', html)
        pages += 1
    assert pages == 3 and len(seen) == len(set(seen)) == 9
    # Back from the last page to the one before it.
    back = re.search(r'rel="prev" href="([^"]+)"', html)
    assert back is not None
    status, html = await _get(client, base + back[1].replace("&amp;", "&"))
    assert re.findall(r'<tr data-href="([^"]+)"', html) == seen[4:8]


# -- a job page, its replay and its transcript --------------------------------------------------


async def test_job_page_shows_the_record_and_replays_after_the_files_are_deleted(
    served: Any, vault: Vault
) -> None:
    _daemon, base, client = served
    page = f"{base}/jobs/{quote(FIXTURE_JOB, safe='')}"
    status, before = await _get(client, page)
    assert status == 200
    for text in ("$0.1092", "claude-sonnet-4-20250514", "claude-haiku-4-5-20251001",
                 "/home/dev/webapp/src/new.py", "Subagent", "a4c1e9f2", "Find login input handling",
                 "FAILED tests/test_app.py", "String to replace not found"):  # fmt: skip
        assert text in before, text
    assert before.count('class="ev tool failed"') == 2
    # Delete every file of the session; the page is the same, from the archive alone.
    folder = vault.claude / "-home-dev-webapp"
    for path in sorted(folder.rglob("1a6f3c2e*"), reverse=True):
        if path.is_file():
            path.unlink()
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and "agent-a4c1e9f2" in path.name:
            path.unlink()
    await eventually(lambda: _files_deleted(vault.db, "1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01"))
    status, after = await _get(client, page)
    assert status == 200
    assert "The original transcript was deleted" in after
    events = re.findall(r'<li class="ev [^"]+" data-seq="(\d+)"', after)
    assert events == re.findall(r'<li class="ev [^"]+" data-seq="(\d+)"', before)
    assert "FAILED tests/test_app.py" in after and "a4c1e9f2" in after


def _files_deleted(db: Path, session_id: str) -> bool:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        states = [r[0] for r in conn.execute(
            "SELECT state FROM files WHERE job_key = ?", (session_id,))]  # fmt: skip
        return bool(states) and all(s == "deleted" for s in states)
    finally:
        conn.close()


async def test_export_downloads_the_exact_original(served: Any, vault: Vault) -> None:
    _, base, client = served
    original = vault.claude / "-home-dev-webapp" / "1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01.jsonl"
    async with client.get(f"{base}/jobs/{quote(FIXTURE_JOB, safe='')}/export") as response:
        assert response.status == 200
        assert "attachment" in response.headers["Content-Disposition"]
        assert original.name in response.headers["Content-Disposition"]
        body = await response.read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(original.read_bytes()).hexdigest()
    status, _ = await _get(client, f"{base}/jobs/claude%3Anosuchjob/export")
    assert status == 404


async def test_replay_pages_and_unknown_jobs(served: Any) -> None:
    _, base, client = served
    url = f"{base}/jobs/{quote(FIXTURE_JOB, safe='')}/replay"
    async with client.get(url + "?offset=0&limit=5") as response:
        first = await response.text()
        assert response.headers["X-Next-Offset"] == "5"
        total = int(response.headers["X-Total"])
    async with client.get(url + "?offset=5&limit=0") as response:
        rest = await response.text()
        assert response.headers["X-Next-Offset"] == ""
    seqs = [int(s) for s in re.findall(r'data-seq="(\d+)"', first + rest)]
    assert seqs == list(range(total))
    for bad in ("?offset=-1", "?limit=abc", "?limit=99999"):
        status, _ = await _get(client, url + bad)
        assert status == 400, bad
    status, html = await _get(client, f"{base}/jobs/claude%3Anosuchjob")
    assert status == 404 and "no job matches" in html


async def test_a_long_session_is_paged(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "REPLAY_PAGE", 10)
    async with serving(vault) as (_, url), session() as client:
        await _get(client, url["url"])
        base = f"http://127.0.0.1:{url['port']}"
        status, html = await _get(client, f"{base}/jobs/{quote('claude:' + LIVE, safe='')}")
        assert status == 200
        assert len(re.findall(r'data-seq="', html)) == 10
        assert 'id="load-more"' in html and 'data-next="10"' in html


# -- live ---------------------------------------------------------------------------------------


async def test_events_stream_follows_the_session(served: Any, vault: Vault) -> None:
    _, base, client = served
    job_id = "claude:" + LIVE
    async with client.get(f"{base}/events?job={quote(job_id, safe='')}") as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert (await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)).startswith(b"retry")
        append_answer(vault, "the quokka is in the cache layer", 400)
        message = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
    assert message.startswith(b"event: job\ndata: ")
    data = json.loads(message.split(b"data: ", 1)[1])
    assert data == {"event": "job.updated", "id": job_id, "status": "active"}
    _status, html = await _get(client, f"{base}/jobs/{quote(job_id, safe='')}/replay?limit=0")
    assert "the quokka is in the cache layer" in html


async def test_shutdown_with_a_stream_open_is_prompt(vault: Vault) -> None:
    async with serving(vault) as (daemon, url), session() as client:
        await _get(client, url["url"])
        base = f"http://127.0.0.1:{url['port']}"
        async with client.get(base + "/events") as stream:
            await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
            started = asyncio.get_running_loop().time()
            daemon.stop()
            rest = await asyncio.wait_for(stream.content.read(), 10)
            assert rest == b"" or rest.startswith(b":")
    assert asyncio.get_running_loop().time() - started < 10


# -- the daemon's own methods, and `jobvault dashboard` -----------------------------------------


async def test_dashboard_url_and_the_cli(vault: Vault, capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(vault) as (_daemon, url):
        assert url["url"].startswith(f"http://127.0.0.1:{url['port']}/?token=")
        assert url["url"].endswith(security.load_token(vault.db))
        code, out = await asyncio.to_thread(
            run, capsys, "dashboard", "--print-url", "--socket", str(vault.socket)
        )
        assert code == 0 and out.strip() == url["url"]
    capsys.readouterr()
    assert main(["dashboard", "--print-url", "--socket", str(vault.socket)]) == 69
    captured = capsys.readouterr()
    assert captured.out == "" and "daemon, which is not running" in captured.err


async def test_a_disabled_or_busy_dashboard_never_stops_the_daemon(
    vault: Vault, capsys: pytest.CaptureFixture[str]
) -> None:
    async with run_daemon(vault.config(dashboard=False)):
        await wait_for_jobs(vault.db)
        with pytest.raises(RpcError, match="disabled"):
            await asyncio.to_thread(_call, vault.socket, "dashboard.url")
        code, _ = await asyncio.to_thread(
            run, capsys, "dashboard", "--print-url", "--socket", str(vault.socket)
        )
        assert code == ExitCode.UNAVAILABLE
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with capture_logs() as logs:
            async with run_daemon(vault.config(dashboard_port=port)):
                await wait_for_jobs(vault.db)
                with pytest.raises(RpcError, match="not running"):
                    await asyncio.to_thread(_call, vault.socket, "dashboard.url")
                status = await asyncio.to_thread(_call, vault.socket, "status")
                assert status["jobs"] == 9
        assert any(e["event"] == "dashboard_unavailable" and e["port"] == port for e in logs)


def _call(sock: Path, method: str, params: Any = None) -> Any:
    with Client(sock, timeout=5.0) as client:
        return client.call(method, params)


async def test_rate_limits_are_recorded_through_the_daemon(served: Any, vault: Vault) -> None:
    _, base, client = served
    reading: dict[str, dict[str, Any]] = {
               "five_hour": {"used_percentage": 37.5, "resets_at": 1_764_600_000},
               "seven_day": {"used_percentage": 12, "resets_at": 1_765_000_000}}  # fmt: skip
    params = {"session_id": LIVE, "rate_limits": reading}
    first = await asyncio.to_thread(_call, vault.socket, "rate_limits.record", params)
    assert first == {"readings": 2, "stored": 2}
    again = await asyncio.to_thread(_call, vault.socket, "rate_limits.record", params)
    assert again == {"readings": 2, "stored": 0}  # the same reading is not stored twice
    reading["five_hour"]["used_percentage"] = 41
    moved = await asyncio.to_thread(_call, vault.socket, "rate_limits.record", params)
    assert moved == {"readings": 2, "stored": 1}
    bad: dict[str, Any]
    for bad in ({"rate_limits": {"five_hour": {"used_percentage": "lots"}}},
                {"rate_limits": {"five_hour": {"used_percentage": -1}}},
                {"rate_limits": {"seven_day": {"used_percentage": 5, "resets_at": 10**15}}},
                {"rate_limits": []}, {"session_id": 5}, {"extra": 1}):  # fmt: skip
        with pytest.raises(RpcError) as caught:
            await asyncio.to_thread(_call, vault.socket, "rate_limits.record", bad)
        assert caught.value.kind == "invalid_params", bad
    conn = open_reader(vault.db)
    try:
        rows = conn.execute(
            "SELECT window, used_percent, resets_at, session_id FROM rate_limit_samples ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    assert rows == [("five_hour", 37.5, "2025-12-01T14:40:00.000Z", LIVE),
                    ("seven_day", 12.0, "2025-12-06T05:46:40.000Z", LIVE),
                    ("five_hour", 41.0, "2025-12-01T14:40:00.000Z", LIVE)]  # fmt: skip
    _status, html = await _get(client, base + "/?period=all&tz=UTC")
    assert "claude five-hour" in html and "41%" in html


def test_samples_are_kept_when_they_change_or_every_heartbeat(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    conn = open_writer(tmp_path / "db" / "jv.db")
    try:
        readings = samples.parse_rate_limits({"five_hour": {"used_percentage": 10}})
        start = datetime(2026, 1, 1, tzinfo=UTC)
        assert samples.record(conn, readings, now=start) == 1
        assert samples.record(conn, readings, now=start + timedelta(minutes=14)) == 0
        assert samples.record(conn, readings, now=start + timedelta(minutes=16)) == 1
        history = samples.history(conn, None, None)
        assert [s["at"] for s in history["samples"]] == [
            "2026-01-01T00:00:00.000Z", "2026-01-01T00:16:00.000Z"]  # fmt: skip
        assert history["codex_known"] is True  # m008_fidelity's per-job table exists
        assert samples.parse_rate_limits({"five_hour": {}, "seven_day": None}) == []
        # Codex's per-job windows are read beside the statusline's samples.
        conn.execute(
            "INSERT INTO jobs (id, source, session_id, status, record, updated_at) "
            "VALUES ('codex:x', 'codex', 'x', 'completed', '{}', 'now')"
        )
        conn.execute("INSERT INTO job_rate_limits VALUES ('codex:x', '2026-01-01T00:05:00.000Z',"
                     " 'primary', 55.0, 300, '2026-01-01T04:00:00.000Z')")  # fmt: skip
        history = samples.history(conn, "2026-01-01T00:01:00.000Z", None)
        assert history["codex_known"] is True
        assert [(s["source"], s["window"], s["used_percent"], s["window_minutes"])
                for s in history["samples"]] == [("claude", "five_hour", 10.0, None),
                                                 ("codex", "primary", 55.0, 300)]  # fmt: skip
    finally:
        conn.close()


# -- the static report --------------------------------------------------------------------------


def test_report_writes_a_self_contained_site(
    vault: Vault, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", str(vault.claude), str(vault.codex), "--db", str(vault.db),
                 "--no-progress", "--json"]) == 0  # fmt: skip
    out = tmp_path / "site"
    summary = run_json(capsys, "report", "--html", str(out), "--db", str(vault.db),
                       "--timezone", "UTC", "--no-progress", "--with-transcripts")  # fmt: skip
    assert summary["jobs"] == 9 and summary["pages"] == 11 and summary["transcripts"] == 9
    index = (out / "index.html").read_text()
    daily = run_json(capsys, "stats", "daily", "--db", str(vault.db), "--timezone", "UTC")
    shown = metrics(index)
    for key in ("cost_usd", "input_tokens", "output_tokens", "cache_creation_tokens",
                "cache_read_tokens"):  # fmt: skip
        assert shown[key] == daily["totals"][key]
    sources = run_json(capsys, "stats", "sources", "--db", str(vault.db), "--timezone", "UTC")
    assert shown["jobs"] == sum(r["jobs"] for r in sources["rows"]) == 8  # one has no usage
    pages = sorted(p.name for p in (out / "jobs").glob("*.html"))
    assert len(pages) == 9 and "claude_1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01.html" in pages
    job = (out / "jobs" / "claude_1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01.html").read_text()
    assert "FAILED tests/test_app.py" in job and 'href="../index.html"' in job
    copy = out / "jobs" / "claude_1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01.jsonl"
    original = vault.claude / "-home-dev-webapp" / "1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01.jsonl"
    assert copy.read_bytes() == original.read_bytes()
    assert {p.name for p in (out / "assets").iterdir()} >= {"app.css", "app.js", "theme.js",
                                                             "plotly.min.js"}  # fmt: skip
    # Nothing points at a server or at the network.
    for page in [out / "index.html", out / "jobs.html", *(out / "jobs").glob("*.html")]:
        text = page.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), page
        assert 'href="/' not in text and 'src="/' not in text, page
    # Filters narrow the report; a folder holding something else is refused.
    narrow = tmp_path / "narrow"
    summary = run_json(capsys, "report", "--html", str(narrow), "--db", str(vault.db),
                       "--source", "codex", "--since", "2025-11-01", "--no-progress")  # fmt: skip
    assert summary["jobs"] == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _ = run(capsys, "report", "--html", str(other), "--db", str(vault.db))
    assert code == ExitCode.USAGE and (other / "notes.txt").read_text() == "mine"


def test_report_needs_no_daemon_but_a_database(tmp_path: Path, capsys: Any) -> None:
    code, _ = run(capsys, "report", "--html", str(tmp_path / "x"), "--db", str(tmp_path / "no.db"))
    assert code == ExitCode.NOT_FOUND
    assert not os.path.exists(tmp_path / "x" / "index.html")
