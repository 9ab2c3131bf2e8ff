"""Opening a page in real headless Chromium (Debian's package, driven by Playwright)."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# The table cells (headers, numbers) whose text a line break splits inside a word: two letters or digits next to
# each other in the text, laid out on different lines ("fram|e", "edge_los|s", "0.00039812|3").
BROKEN_WORDS = """Array.from(document.querySelectorAll('th, td.num')).filter(cell => {
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT), chars = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange(); range.setStart(node, i); range.setEnd(node, i + 1);
      const box = range.getBoundingClientRect();
      chars.push([node.data[i], box.height ? box.top : null]);
    }
  }
  return chars.some(([c, top], i) => i && top !== null && chars[i - 1][1] !== null && /[A-Za-z0-9]/.test(c)
                    && /[A-Za-z0-9]/.test(chars[i - 1][0]) && top > chars[i - 1][1] + 1);
}).map(cell => cell.textContent)"""


def open_in_chromium(page_path: Path, width: int = 1280) -> dict:
    """Load ``page_path`` in a window ``width`` pixels wide and return what a reader would meet: console
    errors, page errors, failed requests, each image's (src, loaded width), the links, and how many pixels
    the page is wider than the window (``overflow``: a horizontal scrollbar when > 0). Skips without
    Chromium, unless CI requires it."""
    if CHROMIUM is None:
        if os.environ.get("QVEDIT_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required here (QVEDIT_REQUIRE_BROWSER=1) but not installed: apt-get update && apt-get install -y chromium")
        pytest.skip("Chromium is not installed (Debian: apt-get update && apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    found = {"console_errors": [], "page_errors": [], "failed": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.on("console", lambda m: found["console_errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda err: found["page_errors"].append(str(err)))
            page.on("requestfailed", lambda request: found["failed"].append(request.url))
            page.goto(Path(page_path).resolve().as_uri())
            page.wait_for_load_state("load")
            found["title"] = page.title()
            found["images"] = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
            found["links"] = page.evaluate("Array.from(document.links).map(a => a.getAttribute('href'))")
            found["overflow"] = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth")
            found["text"] = page.evaluate("document.body.innerText")
            found["broken_words"] = page.evaluate(BROKEN_WORDS)
            found["fonts"] = page.evaluate(
                "Object.fromEntries(Array.from(document.querySelectorAll('[lang]')).map("
                "e => [e.textContent, getComputedStyle(e).fontFamily]))")
        finally:
            browser.close()
    return found


def assert_page_is_whole(page_path: Path) -> dict:
    """The page loads without errors, every image it shows is there and decodes, every link is relative
    and points at a file that exists."""
    found = open_in_chromium(page_path)
    assert found["overflow"] <= 0, f"the page is {found['overflow']} px wider than a 1280 px window"
    assert not found["console_errors"] and not found["page_errors"] and not found["failed"], found
    assert found["images"] and all(width > 0 for _, width in found["images"]), found["images"]
    assert not found["broken_words"], f"table cells broken inside a word: {found['broken_words']}"
    for href in found["links"]:
        assert "://" not in href and not href.startswith("/"), href
        assert (Path(page_path).parent / href).is_file(), href
    return found
