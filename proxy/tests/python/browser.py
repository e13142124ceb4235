"""Headless Chromium (Debian's, driven by Playwright) that lets a page reach
only one origin: every request elsewhere is blocked and recorded, so a test can
show a page works offline."""

import contextlib
import shutil
from urllib.parse import urlsplit

from playwright.sync_api import sync_playwright


@contextlib.contextmanager
def page_on(base, viewport=(1280, 900)):
    """Yield (page, outside, failed): the page, the outside URLs it tried, and
    the same-origin requests that failed."""
    origin = urlsplit(base).netloc
    outside, failed = [], []
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})

        def only_the_origin(route):
            if urlsplit(route.request.url).netloc == origin:
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_origin)
        page.on(
            "requestfailed",
            lambda r: failed.append(r.url) if urlsplit(r.url).netloc == origin else None,
        )
        try:
            yield page, outside, failed
        finally:
            browser.close()
