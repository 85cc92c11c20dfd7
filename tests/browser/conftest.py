"""The ``browser`` fixture: a headless Chromium (testkit/browser.py) on a fresh profile per test.

Without Debian's chromium and chromium-driver the tests are skipped, with the command that
installs them; under CI=true they fail instead (CI must run them: .ci/run installs both)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.browser import MISSING, Page, browser_paths, chromium
from testkit.postgres import in_ci


@pytest.fixture
def browser() -> Iterator[Page]:
    """A :class:`Page` on a new headless Chromium; set its ``base_url`` or give ``go`` URLs."""
    if browser_paths() is None:
        if in_ci():
            pytest.fail(f"{MISSING} (CI=true: the browser tests must run in CI)", pytrace=False)
        pytest.skip(f"{MISSING} (under CI=true these tests fail instead)")
    with chromium() as driver:
        yield Page(driver)
