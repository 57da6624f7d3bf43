"""The search page at ``/`` (`retriever serve`), in headless Chromium driven by Selenium.

It needs Debian's ``chromium`` and ``chromium-driver`` packages, which ``.ci/run``
installs. Without them these tests skip, saying so, except under
``RETRIEVER_TESTS_STRICT=1`` (set by ``.ci/run``), where they fail. The screenshot is saved
under the test's tmp_path and, when ``RETRIEVER_TEST_ARTIFACTS`` names a folder, there too.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from retriever.serve.app import create_app  # noqa: E402
from tests.conftest import TOY_DOCS, require, synthetic_docs  # noqa: E402
from tests.test_server import Running, _build, call  # noqa: E402

INSTALL = (
    "the search page's tests need Debian's chromium and chromium-driver packages and "
    "the selenium Python package, which .ci/run installs "
    "(apt-get install chromium chromium-driver; pip install -e '.[test]')"
)
KEY = "page-test-key"
EITHER = "give either text (read as a query) or doc_id, not both"


def _browser_parts() -> tuple[Any, str, str]:
    """``(selenium.webdriver, chromium, chromedriver)``, or a skip (a failure in CI) saying
    why."""
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    require("selenium is missing", webdriver is not None, INSTALL)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    require("chromium or chromedriver is not on PATH", None not in (chromium, driver), INSTALL)
    return webdriver, chromium, driver


@pytest.fixture(scope="module")
def index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = TOY_DOCS + synthetic_docs(10, seed=5)
    return _build(tiny_model, docs, tmp_path_factory.mktemp("page") / "index")


@pytest.fixture(scope="module")
def server(index: Path) -> Iterator[str]:
    running = Running(create_app(index, api_key=KEY))
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver, chromium, driver = _browser_parts()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # CI runs as root (hence --no-sandbox), on machines without a display or GPU.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1100,1400")
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    chrome.set_page_load_timeout(60)
    yield chrome
    chrome.quit()


def _fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers.get("content-type", ""), response.read()


def test_the_page_and_its_assets_are_served_without_the_key(server: str) -> None:
    status, kind, body = _fetch(server + "/")
    assert status == 200 and kind.startswith("text/html")
    assert b'<script src="/static/app.js">' in body
    for asset, expected in (("app.js", "javascript"), ("style.css", "text/css")):
        status, kind, body = _fetch(f"{server}/static/{asset}")
        assert status == 200 and expected in kind and body
    # Nothing from elsewhere: every src and href is one of this server's paths.
    page = _fetch(server + "/")[2].decode()
    assert "//" not in page  # no http://, https:// or protocol-relative //host
    # The data itself still needs the key.
    assert call(server, "/info")[0] == 401


def test_lens_of_a_stored_document(server: str) -> None:
    headers = {"X-API-Key": KEY}
    status, lens = call(server, "/lens?doc_id=d1&top=5", headers=headers)
    assert (
        status == 200
        and lens["text"] == "Vitamin D Vitamin D deficiency is associated with bone disease."
    )
    assert len(lens["raw"]) == 5 and len(lens["filtered"]) == 5
    assert call(server, "/lens?doc_id=nope", headers=headers)[0] == 404
    for path, message in (
        ("/lens?doc_id=d1&text=bone", EITHER),
        ("/lens", EITHER),
        ("/lens?text=%20", "empty text: give some text to look at"),
        ("/lens?text=fox&top=0", "top must be at least 1, got 0"),
    ):
        assert call(server, path, headers=headers) == (400, {"error": message})


def test_search_in_the_browser_shows_hits_and_lens(
    server: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    # Keyed server: without the key the page says so; typed in, the methods load.
    wait.until(lambda b: "API key" in b.find_element(By.ID, "status").text)
    browser.find_element(By.TAG_NAME, "summary").click()
    key_field = browser.find_element(By.ID, "api-key")
    key_field.send_keys(KEY)
    browser.find_element(By.ID, "query").click()  # leaves the key field: its change event
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#method option"))
    assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#method option")] == ["dense"]

    box = browser.find_element(By.ID, "query")
    box.send_keys("vitamin D and bone")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", (
        browser.find_element(By.ID, "status").text
    )

    # The page shows what the API answers: titles (with ids) and scores, in order.
    query = urllib.parse.urlencode({"query": "vitamin D and bone", "k": 5})
    status, expected = call(server, f"/search?{query}", headers={"X-API-Key": KEY})
    assert status == 200 and len(expected["hits"]) == 5
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits li.hit")
    assert [h.find_element(By.CSS_SELECTOR, ".title").text for h in hits] == [
        f"{hit['title'] or '(untitled)'} {hit['id']}" for hit in expected["hits"]
    ]
    assert [h.find_element(By.CSS_SELECTOR, ".score").text for h in hits] == [
        f"{hit['score']:.4f}" for hit in expected["hits"]
    ]
    lenses = browser.find_elements(By.CSS_SELECTOR, "#hits svg.lens")
    assert len(lenses) == 5
    first = lenses[0]
    assert len(first.find_elements(By.CSS_SELECTOR, "rect.bar")) > 4
    shared = browser.find_elements(By.CSS_SELECTOR, "#hits svg.lens text.word.shared")
    assert shared, "no shared word highlighted in any lens"
    shared_words = {w.text for w in first.find_elements(By.CSS_SELECTOR, "text.word.shared")}
    assert shared_words, "the top hit's lens highlights no shared word"

    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    artifacts = os.environ.get("RETRIEVER_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / "page.png")
