"""The operator console in a real headless Chromium, against the real server process: sign-in,
the overview refreshing itself, pause and resume through the forms, and its use at 200 % zoom
and by keyboard."""

from __future__ import annotations

import asyncio
import csv
import re
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from testkit.browser import Page, chromium
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
        self.process = process
        self.webhooks = process.url
        self.console = f"http://127.0.0.1:{admin_port}"

    def reload(self) -> None:
        """SIGHUP: the server reads its config and mappings again."""
        assert self.process.proc is not None
        self.process.proc.send_signal(signal.SIGHUP)


@contextmanager
def serving(folder: Path, mapping: dict[str, Any] | str) -> Iterator[Server]:
    """The server on a CSV target ``sheet`` (``sheet.csv`` in ``folder``) with ``mapping``."""
    admin_port = free_port()
    targets = {TARGET: {"type": "csv", "path": "sheet.csv", "mapping": mapping}}
    config = write_config(
        folder, targets, admin={"host": "127.0.0.1", "port": admin_port, "token": ADMIN_TOKEN}
    )
    process = ServerProcess(config, free_port())
    try:
        process.start()  # once the webhook port listens; the console's may open a moment later
        eventually_blocking(lambda: _connects(admin_port))
        yield Server(process, admin_port)
    finally:
        process.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path, FAKE_MAPPING) as server:
        yield server


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


BROKEN = """fields:
  first: firstName
  email: "emails[0].mail"
  where: {from: addressDetails, join: ", "}
"""
FIXED = BROKEN.replace('{from: addressDetails, join: ", "}', "addressDetails.city")


def test_repair_a_dead_letter_then_trace_the_contact_by_email(tmp_path: Path) -> None:
    """An operator's round: a record the mapping cannot map is dead; they open it, the mapping
    is fixed and reloaded (SIGHUP), they replay it and watch it turn delivered, then trace the
    contact by e-mail and ask for a full re-write. A screenshot of every page on the way."""
    mapping = tmp_path / "sheet.yaml"
    mapping.write_text(BROKEN)
    with serving(tmp_path, str(mapping)) as server, chromium() as driver:
        page = Page(driver, server.console)
        sign_in(page)
        person = contact(1, emails=[{"type": "WORK", "mail": "Ada.Lovelace@example.com"}])
        other = contact(2)  # given up on, later: purged
        events = [("contact-created", person), ("contact-created", other)]
        asyncio.run(post_all(server.webhooks, events))
        eventually_blocking(lambda: page.cell(TARGET, "Dead").split()[0] == "2" or _missing(page))

        page.click("Dead letters")
        page.wait_for_text("join: expected a list, got an object")
        assert "Ada.Lovelace" not in page.text()  # masked, as in the logs
        page.screenshot("dead-letters")
        letters = {page.cell(f"#{n}", "Mimeeq id"): n for n in re.findall(r"#(\d+)", page.text())}
        letter, unwanted = letters[person["id"]], letters[other["id"]]
        reflows(page, "/dead-letters", "dead-letters")
        page.go("/dead-letters")
        page.wait_for_text("Act on the dead letters")
        seen = []
        for _ in range(40):  # every control of the page, by keyboard alone
            page.press_tab()
            seen.append(page.focused_text())
        for control in (f"Select dead letter {letter}", "Error contains", "Replay selected",
                        "Purge all matching", f"#{letter}"):  # fmt: skip
            assert control in seen, f"{control!r} not reached by Tab: {seen}"
        page.click(f"#{letter}")
        page.wait_for_text("Target's message")
        assert "Not shown:" in page.text()  # the current mapping still fails
        page.screenshot("dead-letter")

        mapping.write_text(FIXED)
        server.reload()

        def mapped_now() -> bool:
            page.go(f"/dead-letters/{letter}")
            assert '"where": "Example City"' in page.text()
            return True

        eventually_blocking(mapped_now)  # the detail shows the record as the server maps it
        page.click(f"Replay #{letter}")
        page.wait_for_text("Outcomes update by themselves")
        page.driver.execute_script("window.sameDocument = true")
        eventually_blocking(
            lambda: page.cell(f"#{letter}", "Outcome") == "delivered" or _missing(page)
        )
        assert page.driver.execute_script("return window.sameDocument") is True  # no reload
        page.screenshot("replay")
        with (tmp_path / "sheet.csv").open(newline="") as f:
            (row,) = list(csv.DictReader(f))
        assert row["where"] == "Example City" and row["email"] == "Ada.Lovelace@example.com"

        page.click("Trace")
        page.fill("Mimeeq id or e-mail address", "ada.lovelace@EXAMPLE.com")
        page.click("Look up")
        page.wait_for_text(f"Contact {person['id']}")
        timeline = page.text()
        assert "push dead" in timeline and "push delivered" in timeline
        assert "A***@example.com" in timeline and "Ada.Lovelace" not in timeline
        page.screenshot("trace")

        page.click(f"Write {person['id']} again in full to demo/{TARGET}")
        page.wait_for_text(f"demo/{TARGET}: 1 contact(s) queued for a full re-write.")
        page.screenshot("resync")
        page.click("Targets")
        page.wait_for_text("Write contacts again in full")
        page.screenshot("targets")

        page.click("Dead letters")
        page.wait_for_text("1 dead letter(s) not replayed yet")
        page.driver.find_element(By.ID, f"pick-{unwanted}").click()
        page.click("Purge selected")
        page.wait_for_text("Delete 1 dead letter(s) for good?")
        page.screenshot("purge-confirm")
        page.click("Delete 1 for good")
        page.wait_for_text("Purged 1 dead letter(s).")
        assert "No dead letters" in page.text()
        for path, name in (
            ("/", "overview"),
            ("/targets", "targets"),
            (f"/dead-letters/{letter}", "dead-letter"),
            (f"/trace?id={person['id']}", "trace"),
        ):
            reflows(page, path, name)


def reflows(page: Page, path: str, name: str) -> None:
    """At 200 % zoom the page needs no sideways scrolling (tables become labelled cards)."""
    page.zoom(200)
    try:
        page.go(path)
        page.wait_for_text("Sign out")
        page.screenshot(f"{name}-zoom-200")
        assert not page.has_horizontal_scroll(), f"{path} scrolls sideways at 200 % zoom"
    finally:
        page.zoom(100)


def _missing(page: Page) -> bool:
    raise AssertionError(f"not yet:\n{page.text()}")
