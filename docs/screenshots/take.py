"""Screenshots of the explorer for the docs: the live-text view and one feature page.

    python docs/screenshots/take.py runs/minilm_sae/final/topk minilm --text "The old bridge ..."
    python docs/screenshots/take.py runs/demo/saes_trained/final/topk othello --text "f5 d6 c3 d3 c4"

Serves the store on loopback, drives Debian's chromium (Selenium + chromedriver), and writes
``docs/screenshots/<name>_fire.png`` and ``<name>_feature.png`` (palette PNGs, < 300 KB).
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from saelab.cli.explore_cmd import open_explorer
from saelab.explore import ExploreServer

HERE = Path(__file__).parent


def save_png(png: bytes, path: Path, height: int) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.crop((0, 0, image.width, min(height, image.height)))
    image.quantize(colors=128).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("sae", help="SAE folder with features/")
    p.add_argument("name", help="file name prefix")
    p.add_argument("--text", required=True, help="text typed into the live view")
    p.add_argument("--latent", type=int, help="feature page to show (default: the top firing)")
    args = p.parse_args()
    server = ExploreServer(open_explorer(args.sae), quiet=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1200,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(server.url)
        driver.find_element(By.ID, "fire-text").send_keys(args.text)
        driver.find_element(By.ID, "fire-button").click()
        wait.until(ec.presence_of_element_located((By.ID, "fire-tokens")))
        save_png(driver.get_screenshot_as_png(), HERE / f"{args.name}_fire.png", 1000)
        latent = args.latent
        if latent is None:
            latent = int(driver.find_element(By.CSS_SELECTOR, "#fire-latents a").text)
        driver.get(f"{server.url}feature/{latent}")
        wait.until(ec.presence_of_element_located((By.ID, "top")))
        driver.set_window_size(1200, 1400)
        save_png(driver.get_screenshot_as_png(), HERE / f"{args.name}_feature.png", 1400)
    finally:
        driver.quit()
        server.stop()


if __name__ == "__main__":
    main()
