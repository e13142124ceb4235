"""Load the admin dashboard in headless Chromium with every request to another
origin blocked; once it lists the endpoints and the inference backend BACKEND,
print READY and wait for that backend's running count to rise (the test then
starts a stream), then screenshot.

    python3 admin_dashboard.py http://ADMIN SCREENSHOT.png BACKEND

Prints READY, then JSON: {"outside": [...], "endpoints": [...], "running": "..."}.
"""

import json
import shutil
import sys
from urllib.parse import urlsplit

from playwright.sync_api import sync_playwright

base, screenshot, backend = sys.argv[1], sys.argv[2], sys.argv[3]
origin = urlsplit(base).netloc
outside = []

with sync_playwright() as p:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    browser = p.chromium.launch(executable_path=chromium, headless=True)
    page = browser.new_page(viewport={"width": 1280, "height": 800})

    def only_the_gateway(route):
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_gateway)
    page.goto(base + "/", wait_until="load")
    row = f'#backends tr[data-backend="{backend}"] td.running'
    page.wait_for_selector("#endpoints tr[data-endpoint]", timeout=10000)
    page.wait_for_selector(row, timeout=10000)
    endpoints = page.eval_on_selector_all(
        "#endpoints tr[data-endpoint]", "rows => rows.map(r => r.dataset.endpoint)"
    )
    print("READY", flush=True)
    page.wait_for_function(
        f"() => parseInt(document.querySelector('{row}')?.textContent ?? '0') >= 1",
        timeout=15000,
    )
    running = page.inner_text(row)
    page.screenshot(path=screenshot, full_page=True)
    browser.close()

print(json.dumps({"outside": outside, "endpoints": endpoints, "running": running}))
