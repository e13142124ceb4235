"""Load the gateway's /docs in headless Chromium with every request to another
origin blocked, and report what the page rendered and what it tried to fetch
elsewhere.

    python3 docs_page.py http://127.0.0.1:PORT SCREENSHOT.png

Prints JSON: {"outside": [urls blocked], "operations": [paths rendered],
"failed": [same-origin requests that failed]}.
"""

import json
import sys

from browser import page_on

base, screenshot = sys.argv[1], sys.argv[2]

with page_on(base) as (page, outside, failed):
    page.goto(base + "/docs", wait_until="networkidle")
    page.wait_for_selector(".opblock-summary-path", timeout=15000)
    operations = page.eval_on_selector_all(
        ".opblock-summary-path", "els => els.map(e => e.textContent.trim())"
    )
    page.screenshot(path=screenshot, full_page=False)

print(json.dumps({"outside": outside, "operations": operations, "failed": failed}))
