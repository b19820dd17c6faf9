"""The page in a real browser: type a prompt, press Generate, read the text. Needs Debian's Chromium.

Skipped when Chromium is missing on a developer's machine; under CI (CI=true) it must run.
"""

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not CHROMIUM:
    if os.environ.get("CI"):
        pytest.fail("CI must run the browser tests: install Chromium (apt-get install chromium)", pytrace=False)
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(server)
        yield page
        browser.close()


def output_text(page) -> str:
    return page.locator("textarea").last.input_value()  # the page's textareas: prompt, then output


@pytest.mark.slow
def test_typing_a_prompt_and_pressing_generate_shows_the_completion(page, tmp_path):
    page.get_by_label("Prompt").fill("JULIET:\n")
    page.get_by_label("number input for Characters to add").fill("60")
    page.get_by_label("number input for Characters to add").press("Tab")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        "() => { const t = [...document.querySelectorAll('textarea')].pop(); return t && t.value.length === 68; }",
        timeout=30_000,
    )
    assert output_text(page).startswith("JULIET:\n")
    # The confidence view fills in after generating: the prompt, then one coloured span per character.
    page.wait_for_function(
        "() => (document.querySelector('#confidence')?.innerText || '').includes('JULIET')", timeout=30_000
    )
    page.locator("#candidates").get_by_text("%").first.wait_for(timeout=30_000)
    # The seed box shows the random seed that was used, so the text can be reproduced.
    page.get_by_text("Advanced").click()
    assert page.get_by_label("Seed (the last one used)").input_value().isdigit()
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


@pytest.mark.slow
def test_bad_input_shows_a_message_in_the_page(page):
    page.get_by_label("Prompt").fill("in 1597")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("unsupported character(s)").first.wait_for(timeout=30_000)
    assert "'1', '5', '7', '9'" in page.content()
