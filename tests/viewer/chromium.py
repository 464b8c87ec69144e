"""Finding the Chromium the browser tests drive; a missing browser fails the test, never skips it."""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL_HINT = (
    "install it with `apt-get install -y chromium` and `pip install -e '.[viewer]'` "
    "(scripts/install.sh does both), or set CSC_CHROMIUM to a Chromium executable"
)


def chromium_path() -> str:
    """The Chromium executable the tests drive; fails the test with how to install it."""
    path = os.environ.get("CSC_CHROMIUM")
    if path:
        if not shutil.which(path) and not os.access(path, os.X_OK):
            pytest.fail(f"CSC_CHROMIUM={path} is not an executable; {INSTALL_HINT}")
        return path
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no Chromium found for the viewer's browser tests; {INSTALL_HINT}")
    raise AssertionError  # unreachable
