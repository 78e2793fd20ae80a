"""Drives the dashboard in a real headless chromium (Debian's `chromium`, through python playwright).

Usage: dashboard.py URL TOKEN SCREENSHOT_DIR
Prints one line per observation (`DEVICES boiler,line-1`, `VALUE 61.2 -> 61.9`, `CHART 12`, `WRITE ok`, …), then
`DONE`. The Rust test asserts on those lines. Every wait is bounded; on a timeout it prints `TIMEOUT what` and
exits 1.
"""
import sys

from playwright.sync_api import sync_playwright, TimeoutError as PlaywrightTimeout

url, token, shots = sys.argv[1], sys.argv[2], sys.argv[3]


def out(*parts):
    print(*parts, flush=True)


def wait(page, what, fn, arg=None, timeout=20000):
    try:
        page.wait_for_function(fn, arg=arg, timeout=timeout)
    except PlaywrightTimeout:
        out("TIMEOUT", what)
        sys.exit(1)


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    # A phone-sized screen first.
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    wait(page, "devices", "() => document.querySelectorAll('#devices td.link').length > 0")
    devices = page.eval_on_selector_all("#devices td.link", "els => els.map(e => e.textContent)")
    out("DEVICES", ",".join(devices))

    cell = 'tr[data-point="boiler/flow_temp"] td.num'
    wait(page, "flow_temp", "(s) => !!document.querySelector(s)", cell)
    first = page.text_content(cell)
    wait(page, "a changing value", "([s, v]) => document.querySelector(s).textContent !== v", [cell, first])
    out("VALUE", first, "->", page.text_content(cell))

    wait(page, "a chart with points",
         "() => [...document.querySelectorAll('#charts svg')].some(s => +s.dataset.points > 0)")
    n = page.evaluate("Math.max(...[...document.querySelectorAll('#charts svg')].map(s => +s.dataset.points))")
    lines = page.evaluate("document.querySelectorAll('#charts polyline.line').length")
    out("CHART", n, lines)
    wait(page, "the message rate chart", "() => document.querySelectorAll('#flow svg').length > 0")
    out("FLOW", page.evaluate("document.querySelectorAll('#flow svg').length"))

    # Device detail with its last error.
    page.click("#devices td.link >> nth=0")
    wait(page, "device detail", "() => !!document.querySelector('#devices tr.detail')")
    out("DETAIL", page.text_content("#devices tr.detail").replace("\n", " "))

    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    out("WIDTH", width[0], width[1])

    # A write without the token is refused by the page; with it, it round-trips to the device.
    row = 'tr[data-point="boiler/setpoint"]'
    page.fill(row + " input[name=value]", "61.5")
    page.click(row + " button")
    wait(page, "refusal without token", "(s) => document.querySelector(s).textContent.includes('token')",
         row + " .write span")
    out("NOTOKEN", page.text_content(row + " .write span"))
    page.fill("#token", token)
    page.click("#auth button")
    page.fill(row + " input[name=value]", "61.5")
    page.click(row + " button")
    wait(page, "write answer", "(s) => ['ok'].includes(document.querySelector(s).textContent) || "
         "document.querySelector(s).className === 'err'", row + " .write span")
    out("WRITE", page.text_content(row + " .write span"))
    wait(page, "read back", "(s) => document.querySelector(s).textContent === '61.5'", row + " td.num")
    out("READBACK", page.text_content(row + " td.num"))
    out("STORED", page.evaluate("sessionStorage.getItem('fb-token') === %r" % token))

    page.screenshot(path=shots + "/dashboard-phone.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.select_option("#range", "h")
    wait(page, "charts after resize", "() => document.querySelectorAll('#charts svg').length > 0")
    page.screenshot(path=shots + "/dashboard.png", full_page=True)
    out("ERRORS", len(errors), " | ".join(errors)[:300])
    browser.close()
out("DONE")
