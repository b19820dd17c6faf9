"""The Train tab in a real browser: paste text, train, watch the curve and a sample appear, stop, download
and write with the new model, close the page. Needs Debian's Chromium, as tests/test_browser.py."""

import time
import zipfile

import pytest
from test_browser import CHROMIUM, CHROMIUM_FLAGS, sync_api
from test_train_tab import LATIN, words

from tinygpt.files.checkpoint import load_model


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def value(page, selector: str) -> str:
    return page.locator(selector).input_value()


@pytest.mark.slow
def test_training_in_the_page_draws_the_curve_shows_samples_and_writes(train_server, browser, tmp_path):
    url, models = train_server
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    text = words([word.upper() for word in LATIN], 3000, 6)  # an alphabet no other test's model has
    page.locator("#train-text textarea").fill(text)
    page.get_by_label("number input for Minutes").fill("0.5")
    page.get_by_label("number input for Minutes").press("Tab")
    page.get_by_role("button", name="Train", exact=True).click()
    # While it trains: the curve is drawn and samples from the model appear.
    page.locator("#loss-curve canvas, #loss-curve svg.marks").first.wait_for(timeout=60_000)
    page.wait_for_function(
        "() => /^\\[step [1-9]/.test(document.querySelector('#train-sample textarea')?.value || '')", timeout=60_000
    )
    # Another visitor meanwhile waits in the queue, and sees their place in it.
    other = browser.new_page()
    other.goto(url)
    other_text = words([word.capitalize() for word in LATIN], 3000, 7)
    other.locator("#train-text textarea").fill(other_text)
    other.get_by_role("button", name="Train", exact=True).click()
    other.wait_for_function(
        "() => /queue/i.test(document.querySelector('#train-progress')?.innerText || '')", timeout=30_000
    )
    # Stop ends the 30-second run early, and keeps the model: its validation loss, and the model to download.
    page.get_by_role("button", name="Stop (keeps what was learned)").click()
    page.wait_for_function(
        "() => (document.querySelector('#train-progress')?.innerText || '').includes('validation loss')", timeout=60_000
    )
    assert page.locator("#train-progress").inner_text().startswith("stopped:")
    other.wait_for_function(  # the queue moved on: the other visitor's training runs
        "() => /^step /.test(document.querySelector('#train-progress')?.innerText || '')", timeout=60_000
    )
    (job,) = models.jobs.values()
    other.close()  # leaving mid-training: the training stops and nothing is kept for the closed session
    deadline = time.monotonic() + 60
    while job.out_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not job.out_dir.exists() and not models.jobs
    assert not [kept for kept in models.models.values() if set(kept.model.config.vocab) == set(other_text)]
    assert "validation" in page.locator("#loss-curve").inner_text()  # the legend: both curves are drawn
    with page.expect_download() as download:
        page.locator('#trained-zip a[download="tinygpt-model.zip"]').click()
    with zipfile.ZipFile(download.value.path()) as zipped:
        zipped.extractall(tmp_path)
    assert set(load_model(tmp_path / "tinygpt-model").config.vocab) == set(text)
    assert float(value(page, "#train-val-loss input")) > 0
    # Writing with the new model uses its alphabet.
    page.locator("#trained-prompt textarea").fill("LOREM ")
    page.get_by_role("button", name="Generate with my model").click()
    page.wait_for_function(
        "() => (document.querySelector('#trained-output textarea')?.value || '').length === 206", timeout=30_000
    )
    assert set(value(page, "#trained-output textarea")) <= set(text)
    # Closing the page drops the session's model and its files.
    (session,) = [s for s, kept in models.models.items() if set(kept.model.config.vocab) == set(text)]
    folder = models.models[session].folder
    page.close()
    deadline = time.monotonic() + 30
    while (session in models.models or folder.exists()) and time.monotonic() < deadline:  # forgotten, then deleted
        time.sleep(0.2)
    assert session not in models.models and not folder.exists()
