"""Load the gateway's /docs in headless Chromium (Debian's, driven by
Playwright) with every request to another origin blocked, and report what the
page rendered and what it tried to fetch elsewhere.

    python3 docs_page.py http://127.0.0.1:PORT SCREENSHOT.png

Prints JSON: {"outside": [urls blocked], "operations": [paths rendered],
"failed": [same-origin requests that failed]}.
"""

import json
import shutil
import sys
from urllib.parse import urlsplit

from playwright.sync_api import sync_playwright

base, screenshot = sys.argv[1], sys.argv[2]
origin = urlsplit(base).netloc
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
outside, failed = [], []

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, headless=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def only_the_gateway(route):
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_gateway)
    page.on("requestfailed", lambda r: failed.append(r.url) if urlsplit(r.url).netloc == origin else None)
    page.goto(base + "/docs", wait_until="networkidle")
    page.wait_for_selector(".opblock-summary-path", timeout=15000)
    operations = page.eval_on_selector_all(
        ".opblock-summary-path", "els => els.map(e => e.textContent.trim())"
    )
    page.screenshot(path=screenshot, full_page=False)
    browser.close()

print(json.dumps({"outside": outside, "operations": operations, "failed": failed}))
