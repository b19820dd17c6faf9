"""The Train tab in a real browser: paste text, train a few seconds, watch the curve and a sample appear,
then write with the new model. Needs Debian's Chromium, as tests/test_browser.py."""

import zipfile

import pytest
from test_browser import CHROMIUM, CHROMIUM_FLAGS, sync_api
from test_train_tab import LATIN, words

from tinygpt.checkpoint import load_model


@pytest.fixture(scope="module")
def page(train_server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(train_server)
        page.get_by_role("tab", name="Train").click()
        yield page
        browser.close()


def value(page, selector: str) -> str:
    return page.locator(selector).input_value()


@pytest.mark.slow
def test_training_in_the_page_draws_the_curve_shows_samples_and_writes(page, tmp_path):
    text = words(LATIN, 3000, 6)
    page.locator("#train-text textarea").fill(text)
    page.get_by_label("number input for Minutes").fill("0.1")
    page.get_by_label("number input for Minutes").press("Tab")
    page.get_by_role("button", name="Train", exact=True).click()
    # While it trains: the curve is drawn and a sample from the model appears.
    page.locator("#loss-curve canvas, #loss-curve svg.marks").first.wait_for(timeout=60_000)
    page.wait_for_function(
        "() => (document.querySelector('#train-sample textarea')?.value || '').startsWith('[step')", timeout=60_000
    )
    # At the end: the validation loss, the progress line, and the model to download.
    page.wait_for_function("() => document.querySelector('#train-val-loss input')?.value !== ''", timeout=90_000)
    assert "validation loss" in page.locator("#train-progress").inner_text()
    assert "validation" in page.locator("#loss-curve").inner_text()  # the legend: both curves are drawn
    with page.expect_download() as download:
        page.locator('#trained-zip a[download="tinygpt-model.zip"]').click()
    with zipfile.ZipFile(download.value.path()) as zipped:
        zipped.extractall(tmp_path)
    assert set(load_model(tmp_path / "tinygpt-model").config.vocab) == set(text)
    assert float(value(page, "#train-val-loss input")) > 0
    # Writing with the new model uses its alphabet.
    page.locator("#trained-prompt textarea").fill("lorem ")
    page.get_by_role("button", name="Generate with my model").click()
    page.wait_for_function(
        "() => (document.querySelector('#trained-output textarea')?.value || '').length === 206", timeout=30_000
    )
    assert set(value(page, "#trained-output textarea")) <= set(text)
    page.screenshot(path=str(tmp_path / "train.png"), full_page=True)
