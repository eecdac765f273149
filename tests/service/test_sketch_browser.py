"""The drawing canvas of the web page in headless Chromium (Debian's chromium +
chromium-driver, Selenium): `cbir serve INDEX --sketch-model RUN` shows it, a drawing made
with the mouse searches the index (POST /search/sketch), the tag box re-runs it; without a
sketch model the canvas stays hidden and the route answers 404."""

from __future__ import annotations

import httpx

from tests.conftest import needs_fashion
from tests.service.conftest import serve_subprocess
from tests.service.test_browser import browser, pytestmark  # noqa: F401 (fixture, skip mark)


@needs_fashion
def test_draw_on_the_canvas_and_search_by_the_drawing(browser, small_index, sketch_run):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _photos, idx = small_index
    run, _ = sketch_run
    wait = WebDriverWait(browser, 30)

    def results() -> list:
        return browser.find_elements(By.CSS_SELECTOR, "#results figure.result")

    def query() -> str:
        return browser.find_element(By.ID, "results").get_attribute("data-query") or ""

    with serve_subprocess(idx, "--sketch-model", str(run)) as url:
        browser.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "sketch-panel").is_displayed())
        canvas = browser.find_element(By.ID, "sketch")

        # searching a blank canvas says what to do
        browser.find_element(By.ID, "sketch-search").click()
        wait.until(lambda d: "draw something" in d.find_element(By.ID, "status").text)
        assert results() == []

        # draw a shoe-like outline with the mouse: a sole, a heel, the upper
        chain = ActionChains(browser).move_to_element_with_offset(canvas, -80, 40)
        chain.click_and_hold()
        for dx, dy in [(160, 0), (0, -30), (-40, -10), (-50, -40), (-40, 0), (-30, 80)]:
            chain.move_by_offset(dx, dy)
        chain.release().perform()
        browser.find_element(By.ID, "sketch-search").click()
        wait.until(lambda d: query().startswith("sketch:") and len(results()) == 13)
        assert browser.find_element(By.ID, "query-img").is_displayed()
        scores = [float(r.find_element(By.CSS_SELECTOR, ".score").text) for r in results()]
        assert scores == sorted(scores, reverse=True)

        # the same search from the API gives the same ranking as the page shows
        png = browser.execute_script(
            "return document.getElementById('sketch').toDataURL('image/png').split(',')[1]"
        )
        import base64

        r = httpx.post(
            url + "/search/sketch",
            files={"file": ("d.png", base64.b64decode(png), "image/png")},
            data={"k": "20"},
        )
        assert r.status_code == 200, r.text
        page_ids = [int(e.get_attribute("data-id")) for e in results()]
        assert [h["id"] for h in r.json()["results"]] == page_ids

        # clearing the canvas blanks it again
        browser.find_element(By.ID, "sketch-clear").click()
        browser.find_element(By.ID, "sketch-search").click()
        wait.until(lambda d: "draw something" in d.find_element(By.ID, "status").text)

    logs = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not logs, logs

    # without --sketch-model: no canvas, and the route says how to get one
    with serve_subprocess(idx) as url:
        browser.get(url + "/")
        wait.until(lambda d: "13 images" in d.find_element(By.ID, "info").text)
        assert not browser.find_element(By.ID, "sketch-panel").is_displayed()
        r = httpx.post(url + "/search/sketch", files={"file": ("d.png", b"x", "image/png")})
        assert r.status_code == 404 and "--sketch-model" in r.json()["error"]
