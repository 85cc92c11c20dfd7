"""The operator console in a real headless Chromium, against the real server process: sign-in,
the overview refreshing itself, pause and resume through the forms, and its use at 200 % zoom
and by keyboard."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from testkit.browser import Page
from testkit.payloads import FAKE_MAPPING, contact, write_config
from testkit.service import ServerProcess, free_port, post_all
from testkit.waiting import eventually_blocking

pytestmark = pytest.mark.browser

ADMIN_TOKEN = "admin-token-0123456789"
TARGET = "sheet"  # a CSV target: the child process loads it from the installed package


class Server:
    """``mimeeq-connector serve`` in a child process: webhooks at ``webhooks``, the operator
    console at ``console`` (URLs)."""

    def __init__(self, process: ServerProcess, admin_port: int) -> None:
        self.webhooks = process.url
        self.console = f"http://127.0.0.1:{admin_port}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    admin_port = free_port()
    targets = {TARGET: {"type": "csv", "path": "sheet.csv", "mapping": FAKE_MAPPING}}
    config = write_config(
        tmp_path, targets, admin={"host": "127.0.0.1", "port": admin_port, "token": ADMIN_TOKEN}
    )
    server = ServerProcess(config, free_port())
    try:
        server.start()  # once the webhook port listens; the console's may open a moment later
        eventually_blocking(lambda: _connects(admin_port))
        yield Server(server, admin_port)
    finally:
        server.stop()


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def page(browser: Page, server: Server) -> Page:
    browser.base_url = server.console
    return browser


def sign_in(page: Page) -> None:
    page.go("/login")
    page.fill("Admin token", ADMIN_TOKEN)
    page.click("Sign in")
    page.wait_for_text("Overview")


def test_sign_in_watch_deliveries_arrive_then_pause_and_resume(page: Page, server: Server) -> None:
    page.go("/")  # not signed in: the sign-in page
    page.wait_for_text("Admin token")
    page.screenshot("login")
    sign_in(page)
    assert page.cell(TARGET, "Delivered") == "0"
    assert page.cell(TARGET, "State") == "active"
    page.screenshot("overview-empty")

    # The figures refresh from /status.json, without a reload: the page keeps this mark.
    page.driver.execute_script("window.sameDocument = true")
    events = [("contact-created", contact(n)) for n in range(3)]
    asyncio.run(post_all(server.webhooks, events))

    def delivered() -> bool:
        assert page.cell(TARGET, "Delivered") == "3", page.text()
        return True

    eventually_blocking(delivered)
    assert page.driver.execute_script("return window.sameDocument") is True
    assert page.cell(TARGET, "Pending") == "0"
    page.screenshot("overview")

    page.fill(f"Reason for pausing {TARGET}", "CRM maintenance window")
    page.click(f"Pause {TARGET}")
    page.wait_for_text(f"Resume {TARGET}")
    state = page.cell(TARGET, "State")
    assert state.startswith("paused") and "CRM maintenance window" in state, state
    page.screenshot("overview-paused")

    page.click(f"Resume {TARGET}")
    page.wait_for_text(f"Pause {TARGET}")
    assert page.cell(TARGET, "State") == "active"


def test_a_wrong_token_is_refused_on_the_sign_in_page(page: Page) -> None:
    page.go("/login")
    page.fill("Admin token", "not-the-admin-token-at-all")
    page.click("Sign in")
    page.wait_for_text("That is not the admin token.")
    page.screenshot("login-refused")
    page.go("/")
    assert "Overview" not in page.text()  # still not signed in


def test_the_overview_needs_no_sideways_scrolling_at_200_percent_zoom(page: Page) -> None:
    sign_in(page)
    assert not page.has_horizontal_scroll()
    page.zoom(200)
    try:
        page.go("/")
        page.wait_for_text(f"Pause {TARGET}")
        page.screenshot("overview-zoom-200")
        assert not page.has_horizontal_scroll(), "the overview scrolls sideways at 200 % zoom"
    finally:
        page.zoom(100)


def test_sign_in_by_keyboard_alone(page: Page) -> None:
    page.go("/login")
    page.wait_for_text("Admin token")
    # From the heading, above the field (which has the focus already: autofocus).
    page.driver.find_element(By.TAG_NAME, "h1").click()
    seen = []
    for _ in range(10):
        page.press_tab()
        seen.append(page.focused_text())
        if seen[-1] == "Sign in":
            break
    assert seen[-1] == "Sign in" and "Admin token" in seen, f"Tab went through {seen}"
    page.press_tab(-1)  # back to the field
    assert page.focused_text() == "Admin token"
    page.keys(ADMIN_TOKEN, Keys.ENTER)
    page.wait_for_text("Overview")
    page.press_tab()
    assert page.focused_text(), "nothing on the overview takes the keyboard focus"
