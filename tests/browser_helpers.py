"""Debian's chromium driven through Selenium and chromedriver, for the browser tests.

Without chromium, chromedriver or selenium a browser test is skipped on a developer machine but
FAILS in CI (``CI=true``): ``.ci/run`` installs chromium and chromium-driver first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _find_browser() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
         if Path(p).exists()), None)
    return (browser, driver) if browser and driver else None


def require_browser() -> tuple[str, str]:
    found = _find_browser()
    try:
        import selenium  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        message = ("no chromium + chromedriver + selenium here: apt-get install chromium "
                   "chromium-driver and pip install selenium (the dev extra)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test cannot run in CI: {message}")
        pytest.skip(message)
    return found


def open_browser() -> Any:
    """A headless chromium WebDriver (the caller quits it)."""
    chromium, chromedriver = require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(60)
    return driver
