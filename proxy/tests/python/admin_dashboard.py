"""Load the admin dashboard in headless Chromium with every request to another
origin blocked; once it lists the endpoints, the inference backend BACKEND, the
plugin PLUGIN (route/name) with at least one call and the failed request
ERROR_ID, print READY and wait for that backend's running count to rise (the
test then starts a stream), then screenshot.

    python3 admin_dashboard.py http://ADMIN SCREENSHOT.png BACKEND PLUGIN ERROR_ID

Prints READY, then JSON: {"outside": [...], "endpoints": [...], "running": "...",
"plugin_calls": "...", "error": [...cells], "config": "..."}.
"""

import json
import sys

from browser import page_on

base, screenshot, backend, plugin, error_id = sys.argv[1:6]

with page_on(base, viewport=(1280, 800)) as (page, outside, _failed):
    page.goto(base + "/", wait_until="load")
    row = f'#backends tr[data-backend="{backend}"] td.running'
    page.wait_for_selector("#endpoints tr[data-endpoint]", timeout=10000)
    page.wait_for_selector(row, timeout=10000)
    endpoints = page.eval_on_selector_all(
        "#endpoints tr[data-endpoint]", "rows => rows.map(r => r.dataset.endpoint)"
    )
    calls = f'#plugins tr[data-plugin="{plugin}"] td.calls'
    page.wait_for_function(
        f"() => parseInt(document.querySelector('{calls}')?.textContent ?? '0') >= 1",
        timeout=10000,
    )
    plugin_calls = page.inner_text(calls)
    error_row = f'#errors tr[data-request-id="{error_id}"]'
    page.wait_for_selector(error_row, timeout=10000)
    error = page.eval_on_selector(
        error_row, "row => Array.from(row.cells).map(c => c.textContent)"
    )
    config = page.inner_text("#config")
    print("READY", flush=True)
    page.wait_for_function(
        f"() => parseInt(document.querySelector('{row}')?.textContent ?? '0') >= 1",
        timeout=15000,
    )
    running = page.inner_text(row)
    page.screenshot(path=screenshot, full_page=True)

print(
    json.dumps(
        {
            "outside": outside,
            "endpoints": endpoints,
            "running": running,
            "plugin_calls": plugin_calls,
            "error": error,
            "config": config,
        }
    )
)
