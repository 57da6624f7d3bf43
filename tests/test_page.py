"""The search page at ``/`` (`retriever serve`), in headless Chromium driven by Selenium.

It needs Debian's ``chromium`` and ``chromium-driver`` packages, which ``.ci/run``
installs. Without them these tests skip, saying so, except under
``RETRIEVER_TESTS_STRICT=1`` (set by ``.ci/run``), where they fail. The screenshot is saved
under the test's tmp_path and, when ``RETRIEVER_TEST_ARTIFACTS`` names a folder, there too.
"""

from __future__ import annotations

import os
import shutil
import time
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


def _open_with_key(browser: Any, server: str) -> Any:
    """The page, keyed: without the key it says so; typed in, the methods load."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 1400)
    browser.get(server + "/")
    browser.execute_script("sessionStorage.clear()")  # the key an earlier test typed
    browser.refresh()
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: "API key" in b.find_element(By.ID, "status").text)
    browser.find_element(By.TAG_NAME, "summary").click()
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "query").click()  # leaves the key field: its change event
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#method option"))
    return wait


def _search(browser: Any, wait: Any, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys(text)
    browser.find_element(By.ID, "go").click()
    wait.until(
        lambda b: (
            b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error")
        )
    )
    state = browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")
    assert state == "done", browser.find_element(By.ID, "status").text


def _screenshot(browser: Any, tmp_path: Path, name: str) -> None:
    """Saved under tmp_path and, when RETRIEVER_TEST_ARTIFACTS names a folder, there too."""
    screenshot = tmp_path / name
    assert browser.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    artifacts = os.environ.get("RETRIEVER_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / name)


def test_search_in_the_browser_shows_hits_and_lens(
    server: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    wait = _open_with_key(browser, server)
    assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#method option")] == ["dense"]
    # Every control has a label.
    for control in ("method", "k", "query"):
        assert (
            browser.execute_script(f"return document.getElementById('{control}').labels.length")
            == 1
        )
    browser.execute_script(STATUS_RECORDER)
    _search(browser, wait, "vitamin D and bone")

    # The page shows what the API answers: titles (with ids) and scores, in order.
    query = urllib.parse.urlencode({"query": "vitamin D and bone", "k": 5})
    status, expected = call(server, f"/search?{query}", headers={"X-API-Key": KEY})
    assert status == 200 and len(expected["hits"]) == 5
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits li.hit")
    assert [h.find_element(By.CSS_SELECTOR, ".title").text for h in hits] == [
        f"{hit['title'] or '(untitled)'} {hit['id']}" for hit in expected["hits"]
    ]
    scores = [h.find_element(By.CSS_SELECTOR, ".score") for h in hits]
    assert [s.text for s in scores] == [f"{hit['score']:.4f}" for hit in expected["hits"]]
    assert {s.get_attribute("title") for s in scores} == {"cosine similarity (filtered vectors)"}
    assert "Scores: cosine similarity" in browser.find_element(By.ID, "score-label").text
    # Each phase said what it was doing; the lenses came in one request, no explain.
    statuses = browser.execute_script("return window.statuses")
    assert statuses[0].startswith("searching: encoding the query")
    assert any(s.endswith("reading their lenses...") for s in statuses), statuses
    calls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => n.includes('/lens') || n.includes('/search'))"
    )
    assert [c.split("/")[-1].split("?")[0] for c in calls] == ["search", "lenses"], calls
    assert "explain" not in calls[0]

    for hit in hits:
        sides = hit.find_elements(By.CSS_SELECTOR, "svg.lens")
        assert len(sides) == 2 and len(sides[0].find_elements(By.CSS_SELECTOR, "rect.bar")) > 4
        # Each bar carries its value, so near-equal bars still read apart.
        values = [v.text for v in sides[1].find_elements(By.CSS_SELECTOR, "text.value")]
        assert values and all(float(v) == float(v) for v in values)
        # "in both" lists exactly the words the picture highlights.
        drawn = {
            w.text.strip() for w in sides[1].find_elements(By.CSS_SELECTOR, "text.word.shared")
        }
        caption = hit.find_element(By.CSS_SELECTOR, ".shared-list").text
        listed = set(caption.removeprefix("in both (orange): ").split(", ")) if drawn else set()
        assert listed == drawn, (caption, drawn)
    assert browser.find_elements(By.CSS_SELECTOR, "#hits svg.lens text.word.shared")
    _screenshot(browser, tmp_path, "page-1280.png")


STATUS_RECORDER = """
window.statuses = [];
const status = document.getElementById('status');
new MutationObserver(() => window.statuses.push(status.textContent))
  .observe(status, {childList: true, characterData: true, subtree: true});
performance.clearResourceTimings();
"""


def test_a_new_search_cancels_the_one_under_way(server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    wait = _open_with_key(browser, server)
    # The first search's answer is held back 1.5 s in the page, so it arrives last.
    browser.execute_script(SLOW_FOX)
    box = browser.find_element(By.ID, "query")
    box.send_keys("the quick brown fox")
    browser.find_element(By.ID, "go").click()
    _search(browser, wait, "vitamin D and bone")
    time.sleep(2)  # the held-back answer has come by now: it must not be drawn
    query = urllib.parse.urlencode({"query": "vitamin D and bone", "k": 5})
    expected = call(server, f"/search?{query}", headers={"X-API-Key": KEY})[1]
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits li.hit")
    assert [h.find_element(By.CSS_SELECTOR, ".doc-id").text.strip() for h in hits] == [
        hit["id"] for hit in expected["hits"]
    ]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#hits .lens-pair")) == len(hits)


SLOW_FOX = """
const plain = window.fetch;
window.fetch = (url, init) => plain(url, init).then((response) =>
  String(url).includes("quick") ? new Promise((done) => setTimeout(() => done(response), 1500))
                                : response);
"""


def test_the_lens_fits_a_narrow_screen(server: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    wait = _open_with_key(browser, server)
    for width in (400, 360):
        browser.set_window_size(width, 1400)
        _search(browser, wait, "vitamin D and bone")
        outside = browser.execute_script(
            "return [...document.querySelectorAll('li.hit')].flatMap(card => {"
            "  const box = card.getBoundingClientRect();"
            "  return [...card.querySelectorAll('svg.lens')]"
            "    .map(svg => svg.getBoundingClientRect())"
            "    .filter(r => r.right > box.right + 0.5 || r.left < box.left - 0.5).length; })"
        )
        assert sum(outside) == 0, f"a lens spills out of its card at {width} px"
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
        ), f"the page scrolls sideways at {width} px"
        if width == 400:
            _screenshot(browser, tmp_path, "page-400.png")
    assert browser.find_elements(By.CSS_SELECTOR, "#hits svg.lens")


def test_the_api_docs_render_offline(server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 1400)
    browser.get(server + "/docs")
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock"))
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/search", "/batch_search", "/lenses"} <= paths
    assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")  # the key can be set
    # Nothing blocked by the page's own content security policy, nothing fetched elsewhere.
    browser.get_log("browser")  # what the earlier pages logged
    browser.refresh()
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock"))
    refused = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert refused == []
