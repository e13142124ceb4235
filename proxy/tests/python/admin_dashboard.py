"""Load the admin dashboard in headless Chromium with every request to another
origin blocked; once it lists the endpoints and the inference backend BACKEND,
print READY and wait for that backend's running count to rise (the test then
starts a stream), then screenshot.

    python3 admin_dashboard.py http://ADMIN SCREENSHOT.png BACKEND

Prints READY, then JSON: {"outside": [...], "endpoints": [...], "running": "..."}.
"""

import json
import sys

from browser import page_on

base, screenshot, backend = sys.argv[1], sys.argv[2], sys.argv[3]

with page_on(base, viewport=(1280, 800)) as (page, outside, _failed):
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

print(json.dumps({"outside": outside, "endpoints": endpoints, "running": running}))
