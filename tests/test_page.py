"""The page at ``/`` in headless Chromium (Selenium with Debian's ``chromium-driver``),
against a real ``seq2seq serve`` of the reverse Transformer run: type sentences, press
Translate, read the outputs, see the attention heatmap drawn, point at a cell.

It skips, saying why, where no Chromium or chromedriver is installed (``.ci/run``
installs them with apt-get when it can).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REVERSE_SOURCES, serving

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

SOURCES = REVERSE_SOURCES[:3]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no headless browser: install Debian's chromium and chromium-driver "
    "(apt-get install chromium chromium-driver) to test the page",
)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_translates_and_draws_the_attention(
    browser, reverse_runs: dict[str, Path], reverse_translators: dict, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = [t.text for t in reverse_translators["transformer"].translate(SOURCES)]
    wait = WebDriverWait(browser, 30)
    with serving([f"reverse={reverse_runs['transformer']}"], log_dir=tmp_path) as server:
        browser.get(server.url + "/")
        status = browser.find_element(By.ID, "status")
        wait.until(lambda _: status.text == "Ready.")
        assert browser.find_element(By.ID, "model").get_attribute("value") == "reverse"

        browser.find_element(By.ID, "source").send_keys("\n".join(SOURCES))
        browser.find_element(By.ID, "go").click()
        wait.until(
            lambda _: "line(s) in" in status.text or "error" in status.get_attribute("class")
        )
        assert "line(s) in" in status.text, status.text
        items = browser.find_elements(By.CSS_SELECTOR, "#outputs > li")
        outputs = [li.text.rsplit(" (", 1)[0] for li in items]
        assert outputs == expected

        canvas = browser.find_element(By.ID, "heatmap")
        first = browser.execute_script(
            "const r = await fetch('/v1/translate', {method: 'POST',"
            " headers: {'Content-Type': 'application/json'},"
            " body: JSON.stringify({texts: [arguments[0]], attention: true})});"
            " return (await r.json()).results[0];",
            SOURCES[0],
        )
        cells = len(first["source_tokens"]) * len(first["output_tokens"])
        assert cells > 0 and canvas.get_attribute("data-cells") == str(cells)
        shades = browser.execute_script(
            "const c = arguments[0], d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            " for (let i = 0; i < d.length; i += 4) if (d[i] < 200 && d[i + 2] > 200) n++;"
            " return n;",
            canvas,
        )
        assert shades > 100  # bluish cells were drawn, not just labels on white

        # Point at the strongest cell of the first output piece: the page names it.
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        box = canvas.rect
        weights = first["attention"][0]
        x = weights.index(max(weights))
        left = box["width"] - 4 - len(first["source_tokens"]) * 26
        top = box["height"] - 4 - len(first["output_tokens"]) * 26
        ActionChains(browser).move_to_element_with_offset(
            canvas, int(left + x * 26 + 13 - box["width"] / 2), int(top + 13 - box["height"] / 2)
        ).perform()
        named = f"{first['output_tokens'][0]} ← {first['source_tokens'][x]}: {weights[x]:.3f}"
        assert browser.find_element(By.ID, "cell").text == named

        browser.find_element(By.CSS_SELECTOR, "#outputs > li:nth-child(2)").click()
        assert browser.find_element(By.ID, "sentence").get_attribute("value") == "1"
        assert browser.save_screenshot(str(tmp_path / "page.png"))


def test_the_page_shows_a_request_error(
    browser, reverse_runs: dict[str, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    with serving(
        [f"reverse={reverse_runs['transformer']}"], "--max-chars", "10", log_dir=tmp_path
    ) as server:
        browser.get(server.url + "/")
        status = browser.find_element(By.ID, "status")
        wait.until(lambda _: status.text == "Ready.")
        browser.find_element(By.ID, "source").send_keys("a b c d e f g h i j k l")
        browser.find_element(By.ID, "go").click()
        wait.until(lambda _: "error" in status.get_attribute("class"))
        assert status.text == "texts[0]: 23 characters; the limit is 10 (--max-chars)"
        assert browser.find_element(By.ID, "go").is_enabled()
