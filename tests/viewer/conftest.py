"""A real headless Chromium for the viewer's browser tests (the system's, driven by Playwright).

The browser tests fail, never skip, when the browser or Playwright is missing: CI must run them.
Install with ``apt-get install -y chromium`` and ``pip install -e ".[viewer]"`` (both done by
``scripts/install.sh``), or point ``CSC_CHROMIUM`` at another Chromium/Chrome executable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from chromium import INSTALL_HINT, chromium_path


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright), shared by the session's browser tests."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright for Python is not installed; {INSTALL_HINT}")
    executable = chromium_path()
    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


class PageErrors(list):
    """Console errors and uncaught exceptions of a page, collected while it runs."""

    def watch(self, page: Any) -> Any:
        page.on("console", lambda m: m.type == "error" and self.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.append(f"pageerror: {e}"))
        return page


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """``open_page(path)`` -> (page, errors): a fresh context (its own localStorage) showing
    the HTML file at ``path`` once it rendered its first screen."""
    contexts = []

    def _open(path: Any, context: Any = None, viewport: tuple[int, int] = (1280, 900)) -> Any:
        if context is None:
            context = browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True
            )
            contexts.append(context)
        errors = PageErrors()
        page = errors.watch(context.new_page())
        page.goto(f"file://{path}")
        page.wait_for_selector("body[data-ready]")
        return page, errors

    yield _open
    for context in contexts:
        context.close()
