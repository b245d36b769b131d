"""The search page in a real headless Chromium (selenium + Debian's chromium/chromium-driver).

Starts the service with the FakeCollection on a free 127.0.0.1 port, uploads a JPEG, checks the
result grid (a ``<script>`` file name and an HTML label are shown as text, no alert), clicks a
result, checks the token prompt and that /docs renders without network, and saves a
screenshot to ``$CONTRAHASH_SCREENSHOT`` (default: the test's tmp_path). The everyday-use test
pastes an image (a synthetic ``paste`` event carrying an image file: headless Chromium has no
clipboard to fill), pages with "More results" (no second encoding), filters by album, sets a
distance threshold, moves through the results with the arrow keys and Enter, opens an
original, and uses the Duplicates view. Every test reads the browser's console and fails on
any error other than the answers to requests it made fail on purpose.

Without Chromium or chromedriver the test is skipped with install instructions, except under
``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from contrahash.serve.app import create_app, swagger_assets_dir
from contrahash.serve.settings import ServeSettings
from serve_fakes import (
    HTML_LABEL,
    HTML_LABEL_ID,
    SCRIPT_ID,
    SCRIPT_NAME,
    FakeCollection,
    running_server,
)

INSTALL = ("install them with: apt-get install -y chromium chromium-driver "
           "(and pip install selenium)")
WAIT_S = 10.0


def _require(what: str, found: object) -> None:
    if found:
        return
    message = f"{what} not found; {INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _find(name: str, *candidates: str) -> str | None:
    for c in candidates:
        if Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return shutil.which(name)


@pytest.fixture()
def browser(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require("selenium", False)
    chromium = _find("chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
    driver_path = _find("chromedriver", "/usr/bin/chromedriver")
    _require("chromium", chromium)
    _require("chromedriver", driver_path)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never runs (it would try to download one).
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _console_errors(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    """SEVERE console entries (JavaScript errors, failed loads) except those whose message
    contains one of ``allowed`` (the requests a test makes fail on purpose)."""
    return [e["message"] for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and not any(a in e["message"] for a in allowed)]


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page replaces the result list while we poll: a stale element just means "again"
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d), message=f"timed out waiting for {what}")


def _shown(driver) -> list[tuple[str, str]]:
    """(id, distance) of the result cards, read in one script (no stale elements)."""
    return [tuple(x) for x in driver.execute_script(
        "return [...document.querySelectorAll('#results li.result')]"
        ".map(li => [li.dataset.id, li.dataset.distance]);")]


def _results(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#results li.result")


def _thumbnails_loaded(driver) -> bool:
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('#results img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);")


def _assert_no_alert(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    text = alert.text
    alert.dismiss()
    pytest.fail(f"an alert opened: {text!r} (data was interpreted as HTML)")


def test_search_page_end_to_end(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    start = time.monotonic()
    fake = FakeCollection()
    query_file = tmp_path / "query.jpg"
    query_file.write_bytes(fake.thumbnail(SCRIPT_ID))
    shot = Path(os.environ.get("CONTRAHASH_SCREENSHOT", tmp_path / "serve-page.png"))

    with running_server(create_app(fake)) as (url, _):
        browser.get(url + "/")
        _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body")
              .get_attribute("data-ready") == "true", "the page to load /api/info")
        options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#bits-select option")]
        assert options == ["16 bits", "64 bits"]
        assert "200 items" in browser.find_element(By.ID, "collection-info").text
        k_input = browser.find_element(By.ID, "k-input")
        k_input.clear()
        k_input.send_keys("12", Keys.TAB)  # commit now (nothing to re-run yet)

        # upload: the query's own item comes first, at distance 0, its <script> name as text
        browser.find_element(By.ID, "file-input").send_keys(str(query_file))
        _wait(browser, lambda d: len(_shown(d)) == 12, "12 results")
        _wait(browser, _thumbnails_loaded, "the result thumbnails")
        _assert_no_alert(browser)
        first = _results(browser)[0]
        assert first.get_attribute("data-id") == str(SCRIPT_ID)
        assert first.get_attribute("data-distance") == "0"
        assert first.find_element(By.CLASS_NAME, "result-name").text == SCRIPT_NAME
        assert SCRIPT_NAME in browser.find_element(By.ID, "results").text
        assert browser.find_elements(By.CSS_SELECTOR, "#results script") == []
        timings = browser.find_element(By.ID, "timings").text
        assert "server" in timings and "total" in timings and "batch of 1" in timings
        assert browser.find_element(By.ID, "query-title").text == "query.jpg"
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

        # click the second result: a search by its id, which now comes first at distance 0
        second = _results(browser)[1]
        clicked = second.get_attribute("data-id")
        second.find_element(By.TAG_NAME, "button").click()
        _wait(browser, lambda d: (r := _shown(d)) and r[0][0] == clicked,
              "the results of the clicked item")
        assert _shown(browser)[0] == (clicked, "0")
        assert f"(#{clicked})" in browser.find_element(By.ID, "query-title").text

        # every item at once: the label with HTML in it is shown as text, injects nothing
        k_input.clear()
        k_input.send_keys("200", Keys.TAB)  # the change event re-runs the last query
        _wait(browser, lambda d: len(_shown(d)) == 200, "200 results")
        _assert_no_alert(browser)
        card = browser.find_element(By.CSS_SELECTOR, f'#results li[data-id="{HTML_LABEL_ID}"]')
        labels = card.find_element(By.CLASS_NAME, "result-labels")
        assert labels.get_attribute("textContent") == HTML_LABEL
        assert browser.find_elements(By.CSS_SELECTOR, "#results b, #results li img[src='x']"
                                     ) == []

        # a bad upload shows the server's message and the page keeps working
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"not an image at all")
        browser.find_element(By.ID, "file-input").send_keys(str(bad))
        error = browser.find_element(By.ID, "error")
        _wait(browser, lambda d: error.is_displayed(), "the error message")
        assert "not a usable image" in error.text

        # /docs renders from the bundled Swagger UI assets (the browser has no network)
        if swagger_assets_dir() is not None:
            browser.get(url + "/docs")
            title = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR,
                                                             ".swagger-ui .info .title"),
                          "Swagger UI to render")
            assert "contrahash search" in title[0].text
        # the deliberate bad upload's 422 is the only failed request; no JavaScript error
        errors = _console_errors(browser)
        assert len(errors) == 1 and "/api/search" in errors[0] and "status of 422" in errors[0]
    assert time.monotonic() - start < 30


def test_page_asks_for_the_token_and_uses_it(browser):
    from selenium.webdriver.common.by import By

    app = create_app(FakeCollection(n=30), ServeSettings(token="tok-123"))
    with running_server(app) as (url, _):
        browser.get(url + "/")
        form = browser.find_element(By.ID, "token-form")
        _wait(browser, lambda d: form.is_displayed(), "the token prompt")
        browser.find_element(By.ID, "token-input").send_keys("wrong")
        form.find_element(By.TAG_NAME, "button").click()
        _wait(browser, lambda d: "refused" in form.text, "the token to be refused")
        browser.find_element(By.ID, "token-input").send_keys("tok-123")
        form.find_element(By.TAG_NAME, "button").click()
        _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body")
              .get_attribute("data-ready") == "true", "the page to load with the token")
        assert not form.is_displayed()
        browser.find_element(By.ID, "random-button").click()
        _wait(browser, lambda d: len(_shown(d)) == 24, "24 results")
        _wait(browser, _thumbnails_loaded, "thumbnails fetched with the token")
        srcs = browser.execute_script(
            "return [...document.querySelectorAll('#results img')].map(i => i.src);")
        assert all(s.startswith("blob:") for s in srcs)  # fetched with the header, not in URLs
        assert browser.execute_script("return sessionStorage.getItem('contrahash-token');"
                                      ) == "tok-123"
        # an original opens through the token (a blob: URL in a new tab)
        first = _results(browser)[0]
        first.find_element(By.CLASS_NAME, "result-original").click()
        _wait(browser, lambda d: len(d.window_handles) == 2, "the original's tab")
        main = browser.current_window_handle
        browser.switch_to.window([h for h in browser.window_handles if h != main][0])
        _wait(browser, lambda d: d.execute_script(
            "const i = document.querySelector('img');"
            "return i && i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0;"),
            "the original, fetched with the token")
        browser.close()
        browser.switch_to.window(main)
        assert _console_errors(browser, ("status of 401",)) == []


def _reference(fake: FakeCollection, query, bits: int) -> list[tuple[str, str]]:
    codes = fake.codes(bits)
    dist = np.count_nonzero(codes != query[None, :], axis=1)
    return [(str(i), str(int(dist[i]))) for i in np.lexsort((np.arange(len(dist)), dist))]


def test_everyday_features(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    fake = FakeCollection(n=60, duplicates=6)
    with running_server(create_app(fake)) as (url, _):
        browser.get(url + "/")
        _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body")
              .get_attribute("data-ready") == "true", "the page to load")
        k_input = browser.find_element(By.ID, "k-input")
        k_input.clear()
        k_input.send_keys("10", Keys.TAB)

        # paste an image: a paste event whose clipboard data holds item 9's JPEG
        browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('api/items/9/thumbnail').then(r => r.blob()).then(blob => {
              const data = new DataTransfer();
              data.items.add(new File([blob], 'pasted.jpg', {type: 'image/jpeg'}));
              document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data}));
              done();
            });""")
        _wait(browser, lambda d: len(_shown(d)) == 10, "10 results of the pasted image")
        assert browser.find_element(By.ID, "query-title").text == "pasted.jpg"
        assert browser.find_element(By.ID, "query-labels").text == "32×32 pixels"
        query = fake.encode([fake.decode_image(fake.thumbnail(9))])[64][0]
        ranking = _reference(fake, query, 64)
        assert _shown(browser) == ranking[:10] and _shown(browser)[0] == ("9", "0")

        # more results: the next page, from the kept code (no second encoding)
        batches = len(fake.encode_batches)
        more = browser.find_element(By.ID, "more-button")
        assert more.is_displayed()
        more.click()
        _wait(browser, lambda d: len(_shown(d)) == 20, "20 results")
        assert _shown(browser) == ranking[:20]
        assert len(fake.encode_batches) == batches

        # album filter: only album 2019, in the ranking's order
        Select(browser.find_element(By.ID, "album-select")).select_by_visible_text("2019 · 17")
        in_album = [h for h in ranking if fake.item(int(h[0])).album == "2019"]
        _wait(browser, lambda d: _shown(d) == in_album[:10], "the album's results")
        albums = browser.execute_script(
            "return [...document.querySelectorAll('#results .result-album')]"
            ".map(e => e.textContent);")
        assert set(albums) == {"album 2019"}
        Select(browser.find_element(By.ID, "album-select")).select_by_visible_text("all albums")

        # a distance threshold: only results within it, and no "more" past it
        d = int(ranking[6][1])
        threshold = browser.find_element(By.ID, "max-distance")
        threshold.send_keys(str(d), Keys.TAB)
        within = [h for h in ranking if int(h[1]) <= d]
        _wait(browser, lambda dr: _shown(dr) == within[:10], "the results within the threshold")
        threshold.clear()
        threshold.send_keys(Keys.TAB)
        _wait(browser, lambda dr: _shown(dr) == ranking[:10], "the unfiltered results again")

        # keyboard: arrows move between results, Enter searches by the focused one
        buttons = browser.find_elements(By.CSS_SELECTOR, "#results button.result-search")
        buttons[0].send_keys(Keys.ARROW_RIGHT)
        active = browser.switch_to.active_element
        target = browser.execute_script(
            "return document.activeElement.closest('li').dataset.id;")
        assert target == ranking[1][0] and active.tag_name == "button"
        active.send_keys(Keys.ENTER)
        _wait(browser, lambda dr: (r := _shown(dr)) and r[0] == (target, "0"),
              "the search by the focused item")

        # open an original: a new tab showing the JPEG served by id
        main = browser.current_window_handle
        _results(browser)[0].find_element(By.CLASS_NAME, "result-original").click()
        _wait(browser, lambda dr: len(dr.window_handles) == 2, "the original's tab")
        browser.switch_to.window([h for h in browser.window_handles if h != main][0])
        _wait(browser, lambda dr: dr.execute_script("return document.contentType;")
              == "image/jpeg", "the original image")
        assert browser.current_url.endswith(f"/api/items/{target}/original")
        browser.close()
        browser.switch_to.window(main)

        # the duplicates view: item 60 is a byte copy of item 0
        browser.find_element(By.ID, "view-duplicates").click()
        _wait(browser, lambda dr: dr.find_elements(By.CSS_SELECTOR, "#dup-groups .dup-group"),
              "duplicate groups")
        groups = browser.execute_script(
            "return [...document.querySelectorAll('#dup-groups .dup-group')].map(g => "
            "[...g.querySelectorAll('li.dup-member')].map(m => [m.dataset.id, m.dataset.exact]));")
        assert [["0", "true"], ["60", "true"]] in groups
        assert "groups" in browser.find_element(By.ID, "dup-summary").text
        browser.find_element(By.CSS_SELECTOR, '#dup-groups li[data-id="60"] button').click()
        _wait(browser, lambda dr: (r := _shown(dr)) and r[0][0] in ("0", "60"),
              "the search by a duplicate")
        assert browser.find_element(By.ID, "search-view").is_displayed()
        _assert_no_alert(browser)
        assert _console_errors(browser) == []
