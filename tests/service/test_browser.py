"""End to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)
against `cbir serve` on a free loopback port: upload, see results, click one, give feedback,
filter by tag, and see "no match" under a threshold."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cbir.index.store import IndexStore
from tests.service.conftest import KEY, flipped, noise_png, photo, serve_subprocess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (`make system-deps` installs them)",
)

ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for a in ARGS:
        opts.add_argument(a)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_search_click_feedback_tag_and_no_match_in_a_browser(
    browser, index_copy, photos_dir, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    store = IndexStore.open(index_copy)
    names = {Path(r["path"]).stem: r["id"] for r in store.rows()}
    store.set_tags(names["chelsea"], "animal")
    store.set_tags(names["horse"], "animal,farm")
    store.close()
    wait = WebDriverWait(browser, 20)

    def results() -> list:
        return browser.find_elements(By.CSS_SELECTOR, "#results figure.result")

    def query() -> str:
        return browser.find_element(By.ID, "results").get_attribute("data-query") or ""

    key = tmp_path / "key"
    key.write_text(KEY)
    key.chmod(0o600)
    with serve_subprocess(index_copy, "--api-key-file", str(key)) as url:
        browser.get(url + "/")
        wait.until(lambda d: "13 images" in d.find_element(By.ID, "info").text)
        browser.find_element(By.ID, "key").send_keys(KEY)  # feedback is a write: it needs the key

        # upload an image: its results appear, the photo itself first
        browser.find_element(By.ID, "file").send_keys(str(photo(photos_dir, "horse")))
        wait.until(lambda d: query().startswith("sha256:") and len(results()) == 13)
        first = results()[0]
        assert first.find_element(By.CSS_SELECTOR, ".path").text == photo(photos_dir, "horse").name
        assert first.find_element(By.CSS_SELECTOR, ".score").text == "1.000"
        assert browser.find_element(By.ID, "nomatch").is_displayed() is False
        assert browser.find_element(By.ID, "query-img").is_displayed()

        # click the second result: the page searches by it
        second_id = int(results()[1].get_attribute("data-id"))
        results()[1].find_element(By.CSS_SELECTOR, "button.open").click()
        wait.until(lambda d: query() == f"id:{second_id}")
        assert int(results()[0].get_attribute("data-id")) == second_id
        assert browser.current_url.endswith(f"#id={second_id}")

        # thumbs up on one result, down on another: stored in the index
        up_id, down_id = (int(r.get_attribute("data-id")) for r in results()[1:3])
        results()[1].find_element(By.CSS_SELECTOR, "button.up").click()
        wait.until(lambda d: results()[1].get_attribute("data-feedback") == "up")
        results()[2].find_element(By.CSS_SELECTOR, "button.down").click()
        wait.until(lambda d: results()[2].get_attribute("data-feedback") == "down")
        assert "feedback stored" in browser.find_element(By.ID, "status").text
        store = IndexStore.open(index_copy)
        fb = [(f["query"], f["result_id"], f["relevant"]) for f in store.feedback()]
        assert fb == [(f"id:{second_id}", up_id, 1), (f"id:{second_id}", down_id, 0)]

        # the tag filter re-runs the query with only tagged images
        tag = browser.find_element(By.ID, "tag")
        tag.send_keys("animal", Keys.ENTER)
        wait.until(lambda d: "tagged" in d.find_element(By.ID, "status").text)
        assert {int(r.get_attribute("data-id")) for r in results()} == {
            names["chelsea"],
            names["horse"],
        }
        tag.clear()
        tag.send_keys(Keys.ENTER)

        # with a threshold in the index, an unrelated image is "no match"
        store.set_meta("threshold", {"score": 0.9})
        store.close()
        noise = tmp_path / "noise.png"
        noise.write_bytes(noise_png(128, seed=7))
        browser.find_element(By.ID, "file").send_keys(str(noise))
        wait.until(lambda d: d.find_element(By.ID, "nomatch").is_displayed())
        assert results() and "threshold 0.900" in browser.find_element(By.ID, "status").text

        # a known image is a match again (a variant: a mirrored copy)
        mirrored = tmp_path / "mirrored.jpg"
        mirrored.write_bytes(flipped(photo(photos_dir, "chelsea"), "JPEG"))
        browser.find_element(By.ID, "file").send_keys(str(mirrored))
        wait.until(lambda d: not d.find_element(By.ID, "nomatch").is_displayed())
        wait.until(
            lambda d: (
                results()
                and results()[0].find_element(By.CSS_SELECTOR, ".path").text.startswith("chelsea")
            )
        )

        # a file that is not an image gives a clear message, not a broken page
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda d: "not-an-image" in d.find_element(By.ID, "status").text)
        assert results() == []

    # no script errors or Content-Security-Policy violations (refused requests aside)
    logs = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert all("Failed to load resource" in m and "415" in m for m in logs), logs


def test_text_box_and_where_filter_in_a_browser(browser, photos_dir, tmp_path):
    """An index built with an image-text backbone (the tiny ONNX CLIP): words typed in the
    text box find the picture they describe; the where filter narrows text and image
    searches; a text search that finds nothing says why on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from cbir.pipeline import index_folder
    from cbir_testing.tiny_clip import write_colour_images, write_tiny_clip

    root = tmp_path / "photos"
    shutil.copytree(photos_dir, root)
    write_colour_images(root / "plain")
    idx = tmp_path / "idx"
    model = write_tiny_clip(tmp_path / "tiny-clip")
    index_folder(root, idx, backbone=f"onnx-clip:{model}", progress=False)
    store = IndexStore.open(idx)
    n = store.count()  # the photos and the 6 plain pictures
    store.close()
    wait = WebDriverWait(browser, 20)

    def results() -> list:
        return browser.find_elements(By.CSS_SELECTOR, "#results figure.result")

    def names() -> list[str]:
        return [r.find_element(By.CSS_SELECTOR, ".path").text for r in results()]

    def query() -> str:
        return browser.find_element(By.ID, "results").get_attribute("data-query") or ""

    with serve_subprocess(idx) as url:
        browser.get(url + "/")
        wait.until(lambda d: f"{n} images" in d.find_element(By.ID, "info").text)
        text = browser.find_element(By.ID, "text")
        text.send_keys("green", Keys.ENTER)
        wait.until(lambda d: query() == "text:green" and len(results()) == min(n, 20))
        assert names()[0] == "plain-green.png"
        assert browser.current_url.endswith("#text=green")
        text.clear()
        text.send_keys("blue")
        browser.find_element(By.ID, "text-go").click()
        wait.until(lambda d: query() == "text:blue" and names()[0] == "plain-blue.png")
        assert not results()[0].find_elements(By.CSS_SELECTOR, ".feedback")  # no key, text

        # the where filter re-runs the text search with only the images passing it
        where = browser.find_element(By.ID, "where")
        where.send_keys("not path contains 'plain'", Keys.ENTER)
        wait.until(lambda d: "passing" in d.find_element(By.ID, "status").text)
        assert len(names()) == n - 6 and not any(n.startswith("plain-") for n in names())
        # ... and an image search too (a click on a result searches by it)
        first = int(results()[0].get_attribute("data-id"))
        results()[0].find_element(By.CSS_SELECTOR, "button.open").click()
        wait.until(lambda d: query() == f"id:{first}")
        assert len(names()) == n - 6 and not any(n.startswith("plain-") for n in names())

        # nothing passes: the page says why instead of an empty grid
        where.clear()
        where.send_keys("name = 'no such file.png'", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("0 results"))
        text.clear()
        text.send_keys("red", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "why").is_displayed())
        assert "no image passed --where" in browser.find_element(By.ID, "why").text
        where.clear()
        where.send_keys(Keys.ENTER)
        wait.until(lambda d: query() == "text:red" and results())
        assert names()[0] == "plain-red.png"
        assert not browser.find_element(By.ID, "why").is_displayed()

    logs = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not logs, logs
