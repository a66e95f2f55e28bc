"""The explorer in a real browser (Debian's chromium through Selenium and chromedriver) against
the real server on loopback: type text and see latents fire, open a feature page, check the
highlighted tokens and the histogram, follow a link, save screenshots.

Without chromium this test is skipped on a developer machine but FAILS in CI (``CI=true``):
``.ci/run`` installs chromium and chromium-driver first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from saelab.cli.explore_cmd import open_explorer
from saelab.explore import ExploreServer
from tests.browser_helpers import open_browser, require_browser
from tests.feature_helpers import INJECTION, TinySetup, make_setup


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    driver = open_browser()
    yield driver
    driver.quit()



@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExploreServer, TinySetup]]:
    require_browser()
    setup = make_setup(tmp_path_factory.mktemp("browser"))
    srv = ExploreServer(open_explorer(str(setup.sae_dir)), quiet=True).start()
    yield srv, setup
    srv.stop()


def test_type_text_open_a_feature_follow_a_link(browser, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    srv, _ = server
    wait = WebDriverWait(browser, 60)
    browser.get(srv.url)
    assert browser.find_element(By.ID, "latents").is_displayed()

    # type text (with markup in it) and see the latents fire, token by token
    box = browser.find_element(By.ID, "fire-text")
    box.send_keys(f"The grey door is broken again. {INJECTION}")
    browser.find_element(By.ID, "fire-button").click()
    wait.until(ec.presence_of_element_located((By.ID, "fire-tokens")))
    chips = browser.find_elements(By.CSS_SELECTOR, "#fire-tokens .firetok")
    assert [c.find_element(By.TAG_NAME, "b").text.strip() for c in chips[1:3]] == ["The", "grey"]
    assert any(c.text.strip() == INJECTION for c in browser.find_elements(
        By.CSS_SELECTOR, "#fire-tokens .firetok b"))  # shown as text, not run
    assert browser.execute_script("return document.scripts.length") == 0
    links = browser.find_elements(By.CSS_SELECTOR, "#fire-latents a.latent-link")
    assert links
    browser.save_screenshot(str(tmp_path / "fire.png"))

    # open the feature page of the strongest latent
    latent = links[0].text
    links[0].click()
    wait.until(ec.title_is(f"latent {latent}"))
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Latent {latent}"
    histogram = browser.find_element(By.ID, "histogram")
    assert histogram.is_displayed() and histogram.size["width"] > 200
    assert len(histogram.find_elements(By.TAG_NAME, "rect")) >= 3
    highlighted = browser.find_elements(By.CSS_SELECTOR, "#top span.tok[data-act]")
    assert len(highlighted) >= 20
    first = highlighted[0]
    assert first.get_attribute("title") == first.get_attribute("data-act")  # value on hover
    assert "rgba(255, 120, 0" in first.value_of_css_property("background-color")
    browser.save_screenshot(str(tmp_path / "feature.png"))

    # follow a neighbour link
    neighbour = browser.find_element(By.CSS_SELECTOR, "#neighbours a.neighbour")
    target = neighbour.get_attribute("href").rsplit("/", 1)[-1]
    neighbour.click()
    wait.until(ec.title_is(f"latent {target}"))
    assert browser.current_url.endswith(f"/feature/{target}")

    # an unknown latent is a 404 page
    browser.get(srv.url + "feature/100000")
    assert "does not exist" in browser.find_element(By.ID, "not-found").text

    for name in ("fire.png", "feature.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_steering_box_shows_both_outputs(browser, server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    srv, _ = server
    browser.get(srv.url + "feature/7")
    prompt = browser.find_element(By.ID, "steer-prompt")
    prompt.send_keys(f"The grey door {INJECTION}")
    Select(browser.find_element(By.ID, "steer-edit")).select_by_value("clamp")
    for field, value in (("steer-value", "40"), ("steer-tokens", "4")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "steer-button").click()
    WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.ID, "steer-steered")))
    assert "/feature/7/steer?" in browser.current_url
    unsteered = browser.find_element(By.ID, "steer-unsteered").text
    steered = browser.find_element(By.ID, "steer-steered").text
    assert unsteered.strip() and steered.strip()
    assert float(browser.find_element(By.ID, "steer-kl").text) >= 0
    assert browser.find_element(By.ID, "steer-prompt").get_attribute("value").endswith(INJECTION)
    assert Select(browser.find_element(By.ID, "steer-edit")).first_selected_option.text == "clamp to"
    assert browser.execute_script("return document.scripts.length") == 0
    browser.save_screenshot(str(tmp_path / "steer.png"))
    assert (tmp_path / "steer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
