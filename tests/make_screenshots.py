"""Write the screenshots in docs/screenshots/ (`make screenshots`): the overview and a job page,
light and dark, of the test fixtures served by the real daemon, in Debian's chromium.

    python -m tests.make_screenshots [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from tests.test_browser import ARGS, CHARTS_DRAWN, CHROMIUM, _until
from tests.web_helpers import make_vault, serving

if TYPE_CHECKING:
    from playwright.async_api import FloatRect

JOB = "claude:1a6f3c2e-8b4d-4e0a-9c11-2f5d7e8a9b01"
CLIP: FloatRect = {"x": 0, "y": 0, "width": 1280, "height": 1500}


async def shoot(out: Path) -> list[Path]:
    from playwright.async_api import async_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        vault = make_vault(Path(tmp))
        async with serving(vault) as (_, url), async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            base = f"http://127.0.0.1:{url['port']}"
            for scheme in ("light", "dark"):
                context = await browser.new_context(
                    color_scheme=scheme, viewport={"width": 1280, "height": 1000},
                    device_scale_factor=1,
                )  # fmt: skip
                page = await context.new_page()
                await page.goto(url["url"])
                await page.goto(base + "/?period=all&tz=UTC")
                await _until(page, CHARTS_DRAWN)
                await page.wait_for_timeout(500)
                path = out / f"overview-{scheme}.png"
                await page.screenshot(path=str(path), clip=CLIP, full_page=True)
                written.append(path)
                await page.goto(base + "/jobs/" + quote(JOB, safe=""))
                path = out / f"job-{scheme}.png"
                await page.screenshot(path=str(path), clip=CLIP, full_page=True)
                written.append(path)
                await context.close()
            await browser.close()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    for path in asyncio.run(shoot(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
