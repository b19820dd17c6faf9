"""Take the README's screenshot: start the app, type a prompt, press Generate, capture the page.

    python tools/screenshot.py docs/screenshot.png

Needs Debian's Chromium (apt-get install chromium) and the playwright package.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--port", type=int, default=7899)
    parser.add_argument("--prompt", default="ROMEO:\nBut soft, what light")
    args = parser.parse_args()

    app = subprocess.Popen([sys.executable, "app.py", "--port", str(args.port)], cwd=ROOT)
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"http://127.0.0.1:{args.port}/")
            page.get_by_label("Prompt").fill(args.prompt)
            page.get_by_text("Advanced").click()
            page.get_by_label("Random seed").uncheck()
            page.get_by_label("Seed (the last one used)").fill("1")
            page.get_by_role("button", name="Generate").click()
            page.wait_for_function(
                "n => { const t = [...document.querySelectorAll('textarea')].pop(); return t && t.value.length >= n; }",
                arg=len(args.prompt) + 300,
                timeout=60_000,
            )
            page.locator("#candidates").get_by_text("%").first.wait_for(timeout=30_000)
            time.sleep(0.5)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
