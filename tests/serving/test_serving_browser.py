"""End to end in a real browser: Debian's chromium, driven by Playwright, against a local server."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect
from conftest import HOSTILE_TEXT, ODD_ID, FakeReranker, live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
IMAGE_ITEMS = 5  # items of the serving index that have an image


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"chromium is not installed at {CHROMIUM} (install it with: apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def server_with_reranker(tiny_retriever, serving_index):
    from lamra.serving.app import create_app

    with live_server(create_app(tiny_retriever, serving_index, reranker=FakeReranker())) as url:
        yield url


# The page's Content-Security-Policy forbids eval, which Playwright's wait_for_function needs:
# the waits below use locator assertions and page.evaluate (run by the devtools protocol) instead.


def wait_for_thumbnails(page, count, timeout_s=20.0):
    """Until ``count`` thumbnails are in the grid and every one has decoded (bounded wait)."""
    script = ("() => { const imgs = [...document.querySelectorAll('#results img.thumb')];"
              " return [imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0).length]; }")
    deadline = time.monotonic() + timeout_s
    while True:
        shown, loaded = page.evaluate(script)
        if shown == loaded == count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{loaded} of {shown} thumbnails loaded, expected {count}")
        time.sleep(0.05)


def test_search_page_with_text_and_uploaded_image(browser_context, server_with_reranker, image_files, artifacts_dir):
    page = browser_context.new_page()
    page_errors = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.goto(server_with_reranker + "/")
    expect(page.locator("#server-info")).to_contain_text("9 items")
    assert page.is_visible("#rerank-toggle")  # this server has a reranker

    page.fill("#query", "a red circle")
    page.set_input_files("#image-input", str(image_files[0]))
    page.wait_for_selector("#image-preview:not([hidden])")
    page.fill("#instruction", "Find me an everyday image that matches the given caption.")
    page.click("#search-button")
    expect(page.locator("#results .result")).to_have_count(9)
    wait_for_thumbnails(page, IMAGE_ITEMS)

    cards = page.locator("#results .result")
    assert cards.count() == 9
    assert "9 results" in page.inner_text("#status")
    first_score = cards.nth(0).locator(".scores").inner_text()
    assert first_score.startswith("score ")
    # Item text is shown as text: the hostile item's markup is not run or parsed.
    hostile = page.locator('#results .result[data-id="txt-hostile"] .text')
    assert hostile.inner_text() == HOSTILE_TEXT
    assert page.title() == "lamra search" and page.locator("#results img[src='x']").count() == 0
    assert page.locator(f'#results .result[data-id="{ODD_ID}"] img.thumb').count() == 1
    page.screenshot(path=str(artifacts_dir / "serving-page.png"), full_page=True)

    # Rerank: fused scores are shown and text-only items (the fake reranker's favourites) lead.
    page.check("#rerank")
    page.click("#search-button")
    expect(page.locator("#status")).to_contain_text("reranked")
    wait_for_thumbnails(page, IMAGE_ITEMS)
    assert cards.nth(0).locator(".scores").inner_text().startswith("fused ")
    assert cards.nth(0).locator("img.thumb").count() == 0
    page.screenshot(path=str(artifacts_dir / "serving-page-reranked.png"), full_page=True)
    assert page_errors == []


def test_drag_and_drop_an_image_and_empty_query_message(browser_context, server_with_reranker, image_files):
    page = browser_context.new_page()
    page.goto(server_with_reranker + "/")
    page.click("#search-button")
    assert "Type a query or add an image" in page.inner_text("#status")

    data = base64.b64encode(image_files[3].read_bytes()).decode()
    transfer = page.evaluate_handle(
        """data => { const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                     const t = new DataTransfer();
                     t.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
                     return t; }""", data)
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#image-preview:not([hidden])")
    page.select_option("#k", "5")
    page.click("#search-button")
    expect(page.locator("#results .result")).to_have_count(5)
    assert "5 results" in page.inner_text("#status")


def test_page_hides_the_rerank_toggle_without_a_reranker(browser_context, tiny_retriever, serving_index):
    from lamra.serving.app import create_app

    with live_server(create_app(tiny_retriever, serving_index)) as url:
        page = browser_context.new_page()
        page.goto(url + "/")
        expect(page.locator("#server-info")).to_contain_text("9 items")
        assert not page.is_visible("#rerank-toggle")
        page.fill("#query", "a dog")
        page.press("#query", "Enter")
        expect(page.locator("#results .result")).to_have_count(9)

