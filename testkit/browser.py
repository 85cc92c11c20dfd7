"""A real headless Chromium for the browser tests (tests/browser/), driven through Selenium.

Offline by design: Debian's ``chromium`` and its ``chromedriver`` (``apt-get install chromium
chromium-driver``), never a downloaded one. Both paths are always given to Selenium, so Selenium
Manager (which would download a driver) is never run.

:class:`Page` acts as a person does: fields are found by their label, buttons and links by their
visible text, and every wait polls what it asserts (testkit/waiting.py), never a fixed sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from testkit.payloads import ROOT
from testkit.waiting import DEADLINE, eventually_blocking

SCREENSHOTS = ROOT / "browser-screenshots"  # git-ignored
MISSING = (
    "Debian's chromium and chromium-driver are not installed: "
    "apt-get install chromium chromium-driver"
)
WINDOW = (1280, 900)
T = TypeVar("T")


def browser_paths() -> tuple[str, str] | None:
    """Chromium's and chromedriver's paths, or None when either is missing."""
    chromium_path = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if chromium_path is None or driver_path is None:
        return None
    return chromium_path, driver_path


@contextmanager
def chromium(page_load_timeout: float = DEADLINE) -> Iterator[webdriver.Chrome]:
    """A headless Chromium through chromedriver, quit afterwards. Raises when either is missing
    (the ``browser`` fixture of tests/browser/conftest.py skips or fails first)."""
    paths = browser_paths()
    if paths is None:
        raise RuntimeError(MISSING)
    chromium_path, driver_path = paths
    options = Options()
    options.binary_location = chromium_path
    for flag in (
        "--headless=new",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--disable-dev-shm-usage",  # containers' /dev/shm is small (64 MB): use /tmp instead
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",  # offline: no update or safe-browsing calls out
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    if os.geteuid() == 0:
        # Chromium refuses to start its sandbox as root (CI containers run as root); the pages
        # are our own console on 127.0.0.1, not the web.
        options.add_argument("--no-sandbox")
    with tempfile.TemporaryDirectory(prefix="chromedriver-") as logs:
        # The path given: Selenium skips Selenium Manager, which would download a driver.
        service = Service(executable_path=driver_path, log_output=str(Path(logs) / "log"))
        driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.implicitly_wait(0)  # waits are explicit, on what is asserted
            driver.set_page_load_timeout(page_load_timeout)
            yield driver
        finally:
            driver.quit()


class Page:
    """The browser as a person uses it, on the site at ``base_url``."""

    def __init__(self, driver: webdriver.Chrome, base_url: str = "") -> None:
        self.driver = driver
        self.base_url = base_url

    def go(self, path: str) -> None:
        """Open ``path`` (relative to ``base_url``, or a whole URL) and wait until it loaded."""
        self.driver.get(urljoin(self.base_url, path))

    def fill(self, label_text: str, value: str, timeout: float = DEADLINE) -> None:
        """Type ``value`` into the field whose ``<label>`` reads ``label_text`` (its ``for``, or
        the field inside it): a field without a label cannot be filled, as it cannot be named."""

        def field() -> WebElement:
            for label in self.driver.find_elements(By.TAG_NAME, "label"):
                if _words(label.text) != _words(label_text):
                    continue
                target = label.get_attribute("for")
                if target:
                    return self.driver.find_element(By.ID, target)
                return label.find_element(By.CSS_SELECTOR, "input, select, textarea")
            raise AssertionError(f"no label {label_text!r} on {self.driver.current_url}")

        element = self._retry(field, timeout)
        element.clear()
        element.send_keys(value)

    def click(self, text: str, timeout: float = DEADLINE) -> None:
        """Click the button or link whose visible text is ``text``."""

        def control() -> WebElement:
            for element in self.driver.find_elements(
                By.CSS_SELECTOR, "button, a[href], input[type=submit], input[type=button]"
            ):
                shown = element.text or (element.get_attribute("value") or "")
                if _words(shown) == _words(text) and element.is_displayed():
                    return element
            raise AssertionError(f"no button or link {text!r} on {self.driver.current_url}")

        self._retry(control, timeout).click()

    def text(self) -> str:
        """The page's visible text."""
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def wait_for_text(self, text: str, timeout: float = DEADLINE) -> str:
        """Wait until the page shows ``text``; return the page's text."""

        def shows() -> str:
            body = self.text()
            assert text in body, f"{text!r} not in {self.driver.current_url}:\n{body}"
            return body

        return self._retry(shows, timeout)

    def cell(self, row: str, column: str) -> str:
        """The text of a table's cell, by its row header's text (its ``th``, else its first cell)
        and its column header's text (as a screen reader names them); AssertionError when none."""
        found: object = self.driver.execute_script(_CELL, _words(row), _words(column))
        assert isinstance(found, str), f"no cell ({row!r}, {column!r}):\n{self.text()}"
        return found

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the viewport as browser-screenshots/<name>.png; return its path."""
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name).removesuffix('.png')}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path

    def zoom(self, percent: int) -> None:
        """Zoom as a person does (Ctrl +): at 200 % the window holds half the CSS pixels, each
        drawn twice as large. 100 undoes it. Kept across navigations, in this tab."""
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        if percent == 100:
            return
        width, height = self.driver.execute_script("return [innerWidth, innerHeight]")
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": round(width * 100 / percent),
                "height": round(height * 100 / percent),
                "deviceScaleFactor": percent / 100,
                "mobile": False,
            },
        )

    def has_horizontal_scroll(self) -> bool:
        """Whether the page is wider than the window (reading it would need scrolling sideways)."""
        return bool(
            self.driver.execute_script(
                "const e = document.documentElement; return e.scrollWidth > e.clientWidth"
            )
        )

    def press_tab(self, n: int = 1) -> None:
        """Press Tab ``n`` times, as a keyboard user moves through the page; Shift+Tab for a
        negative ``n`` (backwards)."""
        actions = ActionChains(self.driver)
        if n < 0:
            actions.key_down(Keys.SHIFT)
        for _ in range(abs(n)):
            actions.send_keys(Keys.TAB)
        if n < 0:
            actions.key_up(Keys.SHIFT)
        actions.perform()

    def keys(self, *keys: str) -> None:
        """Type into whatever has the focus: text, or keys such as ``Keys.ENTER``."""
        ActionChains(self.driver).send_keys(*keys).perform()

    def focused_text(self) -> str:
        """What has the keyboard focus, named as a person sees it: a field's label, else the
        element's text (a button's, a link's), else its value; "" for the page itself."""
        return str(self.driver.execute_script(_FOCUSED))

    def _retry(self, find: Callable[[], T], timeout: float) -> T:
        """``find()`` until it returns, across a page still loading or being replaced (an element
        gone stale, or a node of the page being replaced: "does not belong to the document")."""

        def attempt() -> T:
            try:
                return find()
            except WebDriverException as exc:
                raise AssertionError(str(exc).splitlines()[0]) from exc

        return eventually_blocking(attempt, timeout)


def _words(text: str) -> str:
    return " ".join(text.split())


_FOCUSED = """
const e = document.activeElement;
if (!e || e === document.body) return "";
const label = e.labels && e.labels.length ? e.labels[0].innerText : "";
return (label || e.innerText || e.value || e.getAttribute("aria-label") || "").trim();
"""

_CELL = """
const words = (s) => s.split(/\\s+/).filter(Boolean).join(" ");
const [row, column] = arguments;
for (const table of document.querySelectorAll("table")) {
  const heads = [...table.querySelectorAll("thead th")].map((th) => words(th.innerText));
  const index = heads.indexOf(column);
  if (index < 0) continue;
  for (const tr of table.querySelectorAll("tbody tr")) {
    const cells = [...tr.children];
    const header = tr.querySelector("th") || cells[0];  // the row's header, else its first cell
    if (cells.length > index && words(header.innerText) === row) {
      return cells[index].innerText.trim();
    }
  }
}
return null;
"""
