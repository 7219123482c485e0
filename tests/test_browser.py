"""End to end in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's chromedriver, against
the real WSGI server (waitress) serving the bundled sample index.

It types the North Korea question, waits for the highlighted answer, follows "more like this", checks the keyboard
shortcuts and the phone layout; on a dated fixture corpus (two outlets covering one story, a third one's copy) it
checks the article page's story, duplicates, related stories and timeline and the home page's holdings; and it saves
screenshots to ``tests/artifacts/`` (git-ignored). ``make test``
installs ``chromium`` and ``chromium-driver`` with apt-get where it can; where no browser is installed the test
skips and says why.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from api.app import create_app
from search.service import SearchService

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
NK_QUESTION = "why is North Korea accusing the US?"
NK_ID = "north-korea-accuses-us-asia-style-nato"
# Headless as root on a machine whose only network is loopback: no sandbox (root), no GPU, and none of Chromium's
# background connections (they are refused here, many at a time, and slow the start).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]
WAIT = 30  # seconds; a page here loads in well under one


def _chromedriver() -> str | None:
    return shutil.which("chromedriver") or (str(p) if (p := Path("/usr/bin/chromedriver")).exists() else None)


@contextmanager
def serving(service: SearchService) -> Iterator[str]:
    """The real server for ``service`` on a free loopback port, in a thread; yields its base URL."""
    import waitress

    server = waitress.create_server(create_app(service=service), host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(sample_service: SearchService) -> Iterator[str]:
    """The sample index served for this module's tests."""
    with serving(sample_service) as url:
        yield url


@pytest.fixture(scope="module")
def dated_url(dated_service: SearchService) -> Iterator[str]:
    """The dated fixture corpus (tests/fixtures/dated.jsonl) served."""
    with serving(dated_service) as url:
        yield url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    driver_path = _chromedriver()
    if not CHROMIUM.exists() or driver_path is None:
        pytest.skip(
            "no browser: the browser test needs Debian's chromium and chromium-driver (/usr/bin/chromium and "
            "chromedriver); `make test` installs them with apt-get when run as root or with sudo"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")  # a fresh profile every test
    service = webdriver.ChromeService(executable_path=driver_path)  # Debian's driver: Selenium Manager stays idle
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def api(base_url: str, path: str) -> Any:
    with urllib.request.urlopen(base_url + path, timeout=WAIT) as response:
        return json.load(response)


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), path
    return path


def test_search_answer_and_more_like_this(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(base_url + "/")
    box = browser.find_element(By.ID, "q")
    assert browser.switch_to.active_element == box  # the empty page puts the cursor in the search box
    box.send_keys(NK_QUESTION, Keys.ENTER)
    answer = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "li.result mark.answer")))

    # the state is in the URL, so this page can be bookmarked or shared
    assert parse_qs(urlsplit(browser.current_url).query)["q"] == [NK_QUESTION]
    first = browser.find_elements(By.CSS_SELECTOR, "li.result")[0]
    assert first.find_element(By.TAG_NAME, "h2").text.startswith("North Korea")
    assert answer == first.find_element(By.CSS_SELECTOR, "mark.answer")
    assert "NATO" in answer.text or "hostility" in answer.text
    assert answer.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")
    expected = api(base_url, "/api/search?k=10&q=" + quote(NK_QUESTION))["results"][0]["passages"][0]
    assert answer.text == expected["text"][expected["highlight"]["start"] : expected["highlight"]["end"]].strip()
    screenshot(browser, "search.png")

    # keyboard: "/" from anywhere focuses the search box, Escape leaves it, j and k move between results
    keys = ActionChains(browser)
    box = browser.find_element(By.ID, "q")  # the results page's own box
    browser.execute_script("document.activeElement.blur()")
    keys.send_keys("/").perform()
    assert browser.switch_to.active_element == box
    keys.send_keys(Keys.ESCAPE).perform()
    assert browser.switch_to.active_element != box
    titles = browser.find_elements(By.CSS_SELECTOR, "li.result h2 a")
    keys.send_keys("j").perform()
    assert browser.switch_to.active_element == titles[0]
    keys.send_keys("j").perform()
    keys.send_keys("j").perform()
    keys.send_keys("k").perform()
    assert browser.switch_to.active_element == titles[1]
    assert box.get_attribute("value") == NK_QUESTION  # the keys went to the page, not into the box

    # more like this
    first.find_element(By.LINK_TEXT, "More like this").click()
    wait.until(ec.url_contains("/similar"))
    assert parse_qs(urlsplit(browser.current_url).query) == {"id": [NK_ID]}
    heading = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "h1.page-title")))
    assert "North Korea" in heading.text
    titles = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "li.result h2")]
    similar = api(base_url, f"/api/similar?k=10&id={NK_ID}")["results"]
    assert titles == [r["article"]["title"] for r in similar] and len(titles) >= 5
    assert all("North Korea" not in t for t in titles)  # not the article itself
    screenshot(browser, "similar.png")

    # a similar article opens its own page, which has its own "more like this"
    browser.find_elements(By.CSS_SELECTOR, "li.result h2 a")[0].click()
    wait.until(ec.url_contains("/article"))
    assert browser.find_element(By.TAG_NAME, "h1").text == titles[0]
    assert browser.find_element(By.LINK_TEXT, "More like this").is_displayed()


def test_mode_control_reruns_the_search(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(base_url + "/?q=" + quote("Honduras election"))
    Select(browser.find_element(By.ID, "mode")).select_by_value("lexical")
    WebDriverWait(browser, WAIT).until(ec.url_contains("mode=lexical"))
    status = browser.find_element(By.ID, "status").text
    assert "lexical" in status
    ids = [
        parse_qs(urlsplit(a.get_attribute("href")).query)["id"][0]
        for a in browser.find_elements(By.CSS_SELECTOR, "li.result a.more")
    ]
    expected = api(base_url, "/api/search?k=10&mode=lexical&q=" + quote("Honduras election"))["results"]
    assert ids == [r["article"]["id"] for r in expected]


def test_readable_on_a_phone(browser: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(390, 844)
    browser.get(base_url + "/?q=" + quote(NK_QUESTION))
    width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width  # nothing wider than the screen: no sideways scrolling
    box = browser.find_element(By.ID, "q")
    assert box.size["width"] >= 200  # the search box takes the width, not a sliver of it
    assert browser.find_element(By.CSS_SELECTOR, "li.result mark.answer").is_displayed()
    screenshot(browser, "phone.png")


def test_article_page_and_home_page_on_a_dated_corpus(browser: Any, dated_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(dated_url + "/")
    holdings = wait.until(ec.visibility_of_element_located((By.ID, "holdings")))
    assert browser.find_element(By.ID, "date-range").text == "2024-03-05 to 2024-06-04"
    sources = browser.find_element(By.ID, "sources").text
    assert all(s in sources for s in ("Daily Courier", "Harbour Wire", "Valley Gazette"))
    assert holdings.is_displayed()
    screenshot(browser, "home.png")

    # an example query drawn from the index leads to its story's article page
    browser.find_elements(By.CSS_SELECTOR, "a.example")[0].click()
    first = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "li.result h2 a")))
    label = browser.find_element(By.CSS_SELECTOR, "li.result .relevance")
    assert label.text.endswith("match") and "dense" in label.get_attribute("title")
    browser.get(dated_url + "/article?id=" + quote("wire/opec-cut-1", safe=""))
    wait.until(ec.visibility_of_element_located((By.ID, "timeline")))
    story = browser.find_element(By.ID, "story")
    assert "Oil jumps as OPEC ministers approve output cut in Vienna" in story.text
    assert "2024-04-02" in story.text and "Daily Courier" in story.text
    assert "Valley Gazette" in browser.find_element(By.ID, "duplicates").text
    related = browser.find_element(By.ID, "related")
    assert "OPEC keeps output cut in place at June meeting" in related.text
    assert "Cocoa" not in related.text
    timeline = browser.find_element(By.ID, "timeline")
    entries = timeline.find_elements(By.CSS_SELECTOR, "li.card")
    assert len(entries) >= 4 and entries[0].text.startswith("Oil prices slide for a third month")
    assert timeline.find_element(By.CSS_SELECTOR, "li.self").is_displayed()
    screenshot(browser, "article.png")
    browser.execute_script("arguments[0].scrollIntoView()", related)
    screenshot(browser, "article-timeline.png")
    assert first is not None


def test_api_docs_render_offline(browser: Any, dated_url: str) -> None:
    """Swagger UI, served by newsdesk itself, renders every operation of the OpenAPI document (no CDN here)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(dated_url + "/api/docs")
    WebDriverWait(browser, WAIT).until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".opblock")))
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    spec = api(dated_url, "/api/openapi.json")
    assert len(paths) == len(spec["paths"]) and "/api/search" in {p.replace("\u200b", "") for p in paths}
    screenshot(browser, "api-docs.png")
