"""Take the README's screenshots: start the app, type a prompt, press Generate, capture the page;
or, with --train-minutes, train on Tiny Shakespeare in the Train tab, write with the result, capture.

    python tools/screenshot.py docs/screenshot.png
    python tools/screenshot.py docs/train_tab.png --train-minutes 1

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
    parser.add_argument("--train-minutes", type=float, help="capture the Train tab after a run this long")
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
            if args.train_minutes:
                train_and_write(page, args.train_minutes, args.prompt)
            else:
                generate(page, args.prompt)
            time.sleep(0.5)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=10)
    print(f"wrote {args.out}")


def generate(page, prompt: str) -> None:
    """The Write tab: a prompt, seed 1, Generate, and the "inside the model" view filled in."""
    page.get_by_label("Prompt").first.fill(prompt)
    page.get_by_text("Advanced").click()
    page.get_by_label("Random seed").uncheck()
    page.get_by_label("Seed (the last one used)").fill("1")
    page.get_by_role("button", name="Generate", exact=True).click()
    output = page.get_by_label("Autocompleted text")
    while len(output.input_value()) < len(prompt) + 300:
        time.sleep(0.2)
    page.locator("#candidates").get_by_text("%").first.wait_for(timeout=30_000)


def train_and_write(page, minutes: float, prompt: str) -> None:
    """The Train tab: Tiny Shakespeare for `minutes`, then 200 characters from the new model."""
    page.get_by_role("tab", name="Train").click()
    page.get_by_role("button", name="Use Tiny Shakespeare").click()
    page.wait_for_function("() => (document.querySelector('#train-text textarea')?.value.length || 0) > 1e6")
    page.get_by_label("number input for Minutes").fill(str(minutes))
    page.get_by_label("number input for Minutes").press("Tab")
    page.get_by_role("button", name="Train", exact=True).click()
    page.wait_for_function(  # the progress line ends with the validation loss when training is over
        "() => (document.querySelector('#train-progress')?.innerText || '').includes('validation loss')",
        timeout=(60 * minutes + 300) * 1000,
    )
    page.locator("#trained-prompt textarea").fill(prompt)
    page.get_by_role("button", name="Generate with my model").click()
    page.wait_for_function(
        "n => (document.querySelector('#trained-output textarea')?.value.length || 0) >= n",
        arg=len(prompt) + 200,
        timeout=60_000,
    )


if __name__ == "__main__":
    main()
