"""Explanations, scores and a SAGE transcript made by ``saelab explain`` seen in the explorer
in a real browser: search by explanation text, open the feature page, open the transcript.
Skipped like tests/test_explore_browser.py when chromium, chromedriver or selenium is missing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("transformers")

from saelab.cli import main
from saelab.cli.explore_cmd import open_explorer
from saelab.explore import ExploreServer
from saelab.features import FeatureStore
from tests.browser_helpers import open_browser, require_browser
from tests.feature_helpers import TinySetup, make_setup


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[ExploreServer, int, str]]:
    require_browser()
    setup: TinySetup = make_setup(tmp_path_factory.mktemp("explained"))
    store = FeatureStore(setup.sae_dir)
    latent = store.list_latents("density", descending=True, limit=1)[0]["id"]
    assert main(["explain", str(setup.sae_dir), "--latents", str(latent), "--agentic",
                 "--loopback", "--scorer", "simulation", "--sage-max-rounds", "2",
                 "--sage-min-rounds", "1", "--sage-min-tests", "1", "--no-progress"]) == 0
    text = store.explanations(latent)[0]["text"]
    srv = ExploreServer(open_explorer(str(setup.sae_dir)), quiet=True).start()
    yield srv, latent, text
    srv.stop()


def test_search_explanation_open_feature_and_transcript(
        explained: tuple[ExploreServer, int, str], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    srv, latent, text = explained
    browser = open_browser()
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(srv.url)
        word = text.split('"')[1]
        box = browser.find_element(By.ID, "search")
        box.send_keys(word, Keys.ENTER)
        wait.until(ec.url_contains("q="))  # the index page has a latent table too
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#latents a.latent-link")))
        found = browser.find_elements(By.CSS_SELECTOR, "#latents a.latent-link")
        assert str(latent) in [a.text for a in found]
        next(a for a in found if a.text == str(latent)).click()
        wait.until(ec.title_is(f"latent {latent}"))
        item = browser.find_element(By.CSS_SELECTOR, "#explanations li")
        assert text in item.text and "sage" in item.text and "simulation pearson_r" in item.text
        details = browser.find_element(By.CSS_SELECTOR, "#transcripts details.transcript")
        table = details.find_elements(By.TAG_NAME, "table")[0]
        assert not table.is_displayed()  # collapsed until opened
        details.find_element(By.TAG_NAME, "summary").click()
        assert table.is_displayed() and "measured (0-10)" in table.text
        assert "FINAL_CONCLUSION" in details.text
        browser.save_screenshot(str(tmp_path / "transcript.png"))
    finally:
        browser.quit()
