"""The dashboard and the static report in a real browser: Debian's chromium, driven by Playwright
for Python (`executable_path`; Playwright's own browser download is never used).

One daemon and one browser serve the whole module (each test has its own browser context).
`make test` installs chromium where it can (apt, as root); elsewhere these tests skip, saying
why, unless REQUIRE_BROWSER_TESTS is set (CI sets it), when a missing browser fails them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import pytest_asyncio

from jobvault.cli import main
from jobvault.serve.client import Client
from jobvault.service.daemon import Daemon
from tests.test_daemon import eventually
from tests.test_web import _files_deleted
from tests.web_helpers import LIVE, PLANTED, Vault, append_answer, make_vault, serving

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Page, Request

CHROMIUM = Path(os.environ.get("JOBVAULT_CHROMIUM", "/usr/bin/chromium"))
REBIND = "rebind.test"  # resolves to 127.0.0.1 in this browser: a DNS-rebinding attacker's name
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
        f"--host-resolver-rules=MAP {REBIND} 127.0.0.1"]  # fmt: skip
HEADLINE = ("cost_usd", "input_tokens", "output_tokens", "cache_creation_tokens",
            "cache_read_tokens", "jobs")  # fmt: skip
DELETED_JOB = "claude:c3b8d1e2-5f6a-4d7c-8e9f-0a1b2c3d4e5f"

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _unavailable() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (make test installs it)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: apt-get install chromium (make test does it as root)"
    return None


@dataclass
class Env:
    vault: Vault
    daemon: Daemon
    url: str  # with the token
    base: str
    browser: Browser
    report: Path | None = None


@dataclass
class Watch:
    """What a page did: console errors, uncaught errors, and every request it made."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(message.text)

        def request(req: Request) -> None:
            self.requests.append(req.url)

        page.on("console", console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("request", request)

    def foreign(self, origin: str) -> list[str]:
        return [u for u in self.requests if not (u.startswith(origin) or u.startswith("data:"))]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    reason = _unavailable()
    if reason:
        if os.environ.get("REQUIRE_BROWSER_TESTS"):
            pytest.fail(f"the browser tests must run here: {reason}")
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    vault = make_vault(tmp_path_factory.mktemp("browser"))
    async with serving(vault) as (daemon, url), async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield Env(vault, daemon, url["url"], f"http://127.0.0.1:{url['port']}", browser)
        finally:
            await browser.close()
    shutil.rmtree(vault.socket.parent, ignore_errors=True)


async def _page(env: Env, scheme: str = "light") -> tuple[Page, Watch]:
    context = await env.browser.new_context(color_scheme=scheme,  # type: ignore[arg-type]
                                            viewport={"width": 1280, "height": 900})  # fmt: skip
    page = await context.new_page()
    watch = Watch()
    watch.attach(page)
    return page, watch


async def _signed_in(env: Env, scheme: str = "light") -> tuple[Page, Watch]:
    page, watch = await _page(env, scheme)
    response = await page.goto(env.url)
    assert response is not None and response.status == 200
    assert "token=" not in page.url  # the secret left the address bar
    return page, watch


async def _metrics(page: Page) -> dict[str, float]:
    values: dict[str, str] = await page.eval_on_selector_all(
        "[data-metric]",
        "els => Object.fromEntries(els.map(e => [e.dataset.metric, e.dataset.value]))",
    )
    return {k: float(v) for k, v in values.items() if v}


async def _until(page: Page, expression: str, timeout: float = 10.0) -> None:
    """Poll a JS expression from here (wait_for_function evaluates in the page, which the
    dashboard's CSP forbids: no eval)."""
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout}s: {expression}"
        await asyncio.sleep(0.05)


CHARTS_DRAWN = "document.querySelectorAll('.plot .main-svg').length >= 8"


def _call(env: Env, method: str, params: dict[str, Any]) -> Any:
    with Client(env.vault.socket, timeout=10.0) as client:
        return client.call(method, params)


async def test_pages_load_with_no_error_and_no_other_origin(env: Env) -> None:
    page, watch = await _signed_in(env)
    await page.goto(env.base + "/?period=all&tz=UTC")
    await _until(page, CHARTS_DRAWN)
    await page.goto(env.base + "/jobs")
    await page.wait_for_selector("table.jobs tbody tr[data-href]")
    job = env.base + "/jobs/" + quote("claude:1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01", safe="")
    await page.goto(job)
    await page.wait_for_selector("#replay li.ev.tool.failed")
    await page.wait_for_timeout(300)  # the live stream connects, nothing else loads
    assert watch.errors == []
    assert watch.foreign(env.base + "/") == []
    assert any(u.endswith("/static/plotly.min.js") or "/static/plotly.min.js?" in u
               for u in watch.requests)  # fmt: skip
    await page.context.close()


async def test_overview_totals_equal_stats_json(env: Env) -> None:
    page, watch = await _signed_in(env)
    for query, params in (
        ("period=all&tz=UTC", {}),
        ("since=2025-10-07&until=2025-11-04&tz=UTC&source=claude",
         {"since": "2025-10-07", "until": "2025-11-04", "source": "claude"}),
    ):  # fmt: skip
        await page.goto(f"{env.base}/?{query}")
        shown = await _metrics(page)
        # What `jobvault stats daily|sources --json` asks the daemon for, with these filters.
        daily = await asyncio.to_thread(
            _call, env, "stats.usage", {"group_by": "day", "timezone": "UTC", **params}
        )
        sources = await asyncio.to_thread(
            _call, env, "stats.usage", {"group_by": "source", "timezone": "UTC", **params}
        )
        for key in HEADLINE[:-1]:
            assert shown[key] == daily["totals"][key], (query, key)
        assert shown["jobs"] == sum(r["jobs"] for r in sources["rows"]) > 0
    assert watch.errors == []
    await page.context.close()


async def test_search_finds_a_planted_word_from_the_keyboard(env: Env) -> None:
    page, watch = await _signed_in(env)
    await page.goto(env.base + "/jobs")
    await page.keyboard.press("/")  # focuses the search field
    await page.keyboard.type(PLANTED)
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/jobs?q=*")
    rows = page.locator("table.jobs tbody tr[data-href]")
    assert await rows.count() == 1
    assert await page.locator("mark", has_text=PLANTED).count() == 1
    await page.keyboard.press("j")  # the first row takes the focus; Enter opens it
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/jobs/claude%3A" + LIVE)
    assert PLANTED in await page.locator("#replay").inner_text()
    assert watch.errors == []
    await page.context.close()


async def test_a_job_page_replays_a_session_whose_files_were_deleted(env: Env) -> None:
    folder = env.vault.claude / "-home-dev-api"
    for path in folder.iterdir():
        if path.name.startswith("c3b8d1e2") or path.name.startswith("agent-5e7f1a2b"):
            path.unlink()
    session = DELETED_JOB.split(":", 1)[1]
    await eventually(lambda: _files_deleted(env.vault.db, session))
    page, watch = await _signed_in(env)
    await page.goto(env.base + "/jobs/" + quote(DELETED_JOB, safe=""))
    assert await page.locator("text=The original transcript was deleted").count() == 1
    events = page.locator("#replay li.ev")
    assert await events.count() >= 5
    assert await page.locator("#replay li.ev.prompt").count() >= 1
    # Unfold every tool call: inputs and whole results come from the archive too.
    await page.click("text=Unfold all")
    assert await page.locator("#replay details[open]").count() >= 1
    assert watch.errors == []
    await page.context.close()


async def test_an_appended_line_appears_on_its_page_within_two_seconds(env: Env) -> None:
    page, watch = await _signed_in(env)
    await page.goto(env.base + "/jobs/" + quote("claude:" + LIVE, safe=""))
    await page.wait_for_selector('#live-state[data-state="open"]')
    before = await page.locator("#replay li.ev").count()
    text = f"the answer written at {time.time():.3f}"
    started = time.monotonic()
    await asyncio.to_thread(append_answer, env.vault, text, 500)
    await page.wait_for_selector(f"#replay li.ev.text >> text={text}", timeout=2000)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert await page.locator("#replay li.ev").count() == before + 1
    # The record above the replay follows too.
    messages = await page.get_attribute('[data-field="message_count"]', "data-value")
    assert messages is not None and int(messages) >= 26
    # The overview follows new lines as well.
    await page.goto(env.base + "/?period=all&tz=UTC")
    await page.wait_for_selector('#live-state[data-state="open"]')
    output = (await _metrics(page))["output_tokens"]
    await asyncio.to_thread(append_answer, env.vault, "one more", 501)
    # Polled from here: the page's CSP forbids the eval a string predicate would need.
    deadline = time.monotonic() + 5.0
    while (await _metrics(page))["output_tokens"] <= output:
        assert time.monotonic() < deadline, "the overview did not follow the new line"
        await asyncio.sleep(0.1)
    assert watch.errors == []
    await page.context.close()


async def test_no_token_or_a_wrong_host_is_refused(env: Env) -> None:
    page, _ = await _page(env)
    response = await page.goto(env.base + "/")
    assert response is not None and response.status == 401
    assert await page.locator("[data-metric]").count() == 0
    response = await page.goto(env.base + "/?token=wrong")
    assert response is not None and response.status == 401
    # A page served from another name that resolves to 127.0.0.1 gets nothing, token or not.
    port = env.base.rsplit(":", 1)[1]
    response = await page.goto(f"http://{REBIND}:{port}/?" + env.url.split("?", 1)[1])
    assert response is not None and response.status == 403
    assert await page.locator("[data-metric]").count() == 0
    await page.context.close()


async def test_theme_toggle_and_dark_mode(env: Env) -> None:
    page, watch = await _signed_in(env, scheme="dark")
    await page.goto(env.base + "/?period=all&tz=UTC")
    await _until(page, CHARTS_DRAWN)
    background = await page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    assert background == "rgb(21, 23, 26)"  # the dark palette, from prefers-color-scheme
    await page.keyboard.press("t")  # auto -> light
    assert await page.evaluate("document.documentElement.dataset.theme") == "light"
    assert (
        await page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        != background
    )
    await page.reload()
    assert await page.evaluate("document.documentElement.dataset.theme") == "light"  # kept
    await page.click("#theme-toggle")
    assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert watch.errors == []
    await page.context.close()


async def test_the_static_report_opens_from_a_file_with_no_network(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    args = ["report", "--html", str(out), "--db", str(env.vault.db), "--timezone", "UTC",
            "--no-progress"]  # fmt: skip
    assert await asyncio.to_thread(main, args) == 0
    page, watch = await _page(env)
    await page.goto(out.joinpath("index.html").as_uri())
    await _until(page, CHARTS_DRAWN)
    shown = await _metrics(page)
    daily = await asyncio.to_thread(
        _call, env, "stats.usage", {"group_by": "day", "timezone": "UTC"}
    )
    for key in HEADLINE[:-1]:
        assert shown[key] == daily["totals"][key], key
    await page.click("text=Jobs")
    await page.wait_for_url("**/jobs.html")
    await page.fill("#search", "pagination")  # the report filters its table in the page
    visible = page.locator("table.jobs tbody tr:not([hidden])")
    assert await visible.count() == 1
    await visible.locator("a").first.click()
    await page.wait_for_url("**/jobs/claude_*.html")
    assert await page.locator("#replay li.ev").count() > 3
    assert watch.errors == []
    assert watch.foreign("file://") == []
    await page.context.close()
