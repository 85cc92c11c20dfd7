"""The operator console on its admin listener: sign-in, sessions, CSRF, the overview, pause and
resume, and its separation from the webhook port."""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from click.testing import CliRunner

from connector.cli import main
from connector.config import load_config
from connector.console import Backend, create_console_app
from connector.errors import ConfigError
from connector.service import Service, StartupError
from testkit.console import ADMIN_TOKEN, admin_config, at, sign_in
from testkit.payloads import TOKEN, contact
from testkit.service import send, status_reaches


async def cli_status(service: Service) -> dict[str, Any]:
    """`status --json`'s row for demo/fake: the CLI's own view of the store."""
    args = ["status", "--json", "--config", str(service.config.path)]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert result.exit_code == 0, result.output
    (row,) = [r for r in json.loads(result.stdout) if r["target"] == "fake"]
    return dict(row)


def console_routes() -> list[tuple[str, str]]:
    """Every (method, path) the console serves, from its router: a new route is tested too."""
    backend = Backend(settings=_unused, config=_unused, store=_unused)
    app = create_console_app(backend)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    return sorted(routes)


def _unused() -> Any:
    raise AssertionError("the router is only listed")


@pytest.mark.parametrize("secure", [False, True])
async def test_sign_in_sets_a_session_cookie_with_its_flags(
    tmp_path: Path, client: aiohttp.ClientSession, secure: bool
) -> None:
    service = Service(load_config(admin_config(tmp_path, secure_cookie=secure)))
    await service.start()
    try:
        async with client.get(at(service, "/login")) as response:
            assert response.status == 200
            page = await response.text()
        assert '<label for="token">Admin token</label>' in page and 'type="password"' in page
        data = {"token": ADMIN_TOKEN}
        async with client.post(at(service, "/login"), data=data, allow_redirects=False) as answer:
            assert answer.status == 303 and answer.headers["Location"] == "/"
            (cookie,) = answer.headers.getall("Set-Cookie")
        flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "path", "samesite", "max-age"} <= flags
        assert "SameSite=Strict" in cookie and "Path=/" in cookie
        assert ("secure" in flags) is secure
        if not secure:  # a Secure cookie is not sent back over plain HTTP: nothing more to see
            async with client.get(at(service, "/")) as response:
                assert response.status == 200 and "<h1>Overview</h1>" in await response.text()
                assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    finally:
        await service.stop()


async def test_a_wrong_token_is_401_the_same_whatever_was_wrong_and_logged_without_it(
    console: Service, client: aiohttp.ClientSession
) -> None:
    wrong = "typo-" + ADMIN_TOKEN
    pages = []
    with structlog.testing.capture_logs() as logs:
        for sent in (wrong, wrong, "", "x", ADMIN_TOKEN[:-1] + "!"):
            async with client.post(at(console, "/login"), data={"token": sent}) as response:
                assert response.status == 401
                assert "Set-Cookie" not in response.headers
                pages.append(await response.text())
    assert len(set(pages)) == 1 and "That is not the admin token." in pages[0]
    refused = [e for e in logs if e["event"] == "console sign-in refused (401)"]
    assert [e["reason"] for e in refused] == ["wrong token", "no token"]  # rate-limited
    assert ADMIN_TOKEN not in repr(logs) and wrong not in repr(logs)
    async with client.get(at(console, "/"), allow_redirects=False) as response:
        assert response.status == 303  # still not signed in


async def test_every_token_comparison_goes_through_compare_digest(
    console: Service, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    same_length = "x" * len(ADMIN_TOKEN)
    for sent, status in (("", 401), ("short", 401), (same_length, 401), (ADMIN_TOKEN, 200)):
        before = len(calls)
        async with client.post(at(console, "/login"), data={"token": sent}) as response:
            assert response.status == status
        assert len(calls) > before, f"no constant-time comparison for {sent!r}"
    async with client.post(at(console, "/logout"), data={}) as response:
        assert response.status == 403  # the missing CSRF token was compared too, and refused


async def test_every_admin_route_refuses_without_a_session(
    console: Service, client: aiohttp.ClientSession
) -> None:
    routes = console_routes()
    assert ("GET", "/") in routes and ("POST", "/targets/pause") in routes
    for cookie in (None, "not-a-session"):
        headers = {"Cookie": f"connector_console={cookie}"} if cookie else {}
        for method, path in routes:
            if path == "/login":
                continue
            async with client.request(
                method, at(console, path), headers=headers, allow_redirects=False
            ) as response:
                if method in ("GET", "HEAD"):
                    assert response.status == 303, (method, path)
                    assert response.headers["Location"] == "/login"
                else:
                    assert response.status == 401, (method, path)
    assert (await cli_status(console))["paused"] is False


async def test_a_post_without_the_right_csrf_token_is_403(
    console: Service, client: aiohttp.ClientSession
) -> None:
    csrf = await sign_in(client, console)
    posts = [path for method, path in console_routes() if method == "POST" and path != "/login"]
    assert "/targets/pause" in posts and "/logout" in posts
    for path in posts:
        for sent in ({}, {"csrf": ""}, {"csrf": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")}):
            form = {"target": "demo/fake", "reason": "forged", **sent}
            async with client.post(at(console, path), data=form) as response:
                assert response.status == 403, (path, sent)
    assert (await cli_status(console))["paused"] is False
    async with client.get(at(console, "/")) as response:
        assert response.status == 200  # the session itself is still good


async def test_the_webhook_port_serves_no_admin_route_and_the_admin_port_no_webhook(
    console: Service, client: aiohttp.ClientSession
) -> None:
    assert console.port != console.admin_port
    for method, path in console_routes():
        url = f"http://127.0.0.1:{console.port}{path}"
        async with client.request(method, url, allow_redirects=False) as response:
            assert response.status in (404, 405), (method, path)
    csrf = await sign_in(client, console)
    webhook = at(console, "/webhooks/demo/contact-created")
    headers = {"X-Mimeeq-Token": TOKEN}
    async with client.post(webhook, json=contact(1), headers=headers) as response:
        assert response.status == 403  # a JSON body carries no CSRF token
    async with client.post(webhook, data={"csrf": csrf}, headers=headers) as response:
        assert response.status == 404
    for path in ("/healthz", "/readyz", "/metrics"):
        async with client.get(at(console, path)) as response:
            assert response.status == 404, path


async def test_the_overview_shows_a_targets_counts_change(
    console: Service, client: aiohttp.ClientSession
) -> None:
    await sign_in(client, console)

    async def delivered_shown() -> tuple[str, Any]:
        async with client.get(at(console, "/")) as response:
            page = await response.text()
        row = re.search(r'<tr data-key="demo/fake".*?</tr>', page, re.S)
        assert row, page
        cell = re.search(r'data-field="delivered">(\d+)<', row.group(0))
        assert cell
        async with client.get(at(console, "/status.json")) as response:
            (entry,) = [r for r in await response.json() if r["target"] == "fake"]
        return cell.group(1), entry["shown"]["delivered"]

    assert await delivered_shown() == ("0", "0")
    await send(console, "contact-created", contact(1))
    await send(console, "contact-created", contact(2))
    await status_reaches(console, delivered=2, pending=0)
    assert await delivered_shown() == ("2", "2")


async def test_pause_then_resume_from_the_console_as_status_sees_it(
    console: Service, client: aiohttp.ClientSession
) -> None:
    csrf = await sign_in(client, console)
    form = {"csrf": csrf, "target": "demo/fake", "reason": "CRM upgrade <tonight>"}
    async with client.post(at(console, "/targets/pause"), data=form) as response:
        assert response.status == 200 and response.url.path == "/"
        page = await response.text()
    assert "paused: paused by an operator: CRM upgrade &lt;tonight&gt;" in page  # escaped
    assert "Resume fake</button>" in page
    row = await cli_status(console)
    assert row["paused"] is True
    assert row["paused_reason"] == "paused by an operator: CRM upgrade <tonight>"

    form = {"csrf": csrf, "target": "demo/fake"}
    async with client.post(at(console, "/targets/resume"), data=form) as response:
        assert response.status == 200
        page = await response.text()
    assert "Pause fake</button>" in page and '<label for="reason-demo/fake">' in page
    assert (await cli_status(console))["paused"] is False

    form = {"csrf": csrf, "target": "demo/nobody"}
    async with client.post(at(console, "/targets/pause"), data=form) as response:
        assert response.status == 400


async def test_sign_out_ends_the_session(console: Service, client: aiohttp.ClientSession) -> None:
    csrf = await sign_in(client, console)
    cookie = {c.key: c.value for c in client.cookie_jar}["connector_console"]
    async with client.post(at(console, "/logout"), data={"csrf": csrf}) as response:
        assert response.url.path == "/login"
    headers = {"Cookie": f"connector_console={cookie}"}  # the old cookie, replayed
    async with client.get(at(console, "/"), headers=headers, allow_redirects=False) as response:
        assert response.status == 303


async def test_an_admin_port_in_use_is_a_one_line_startup_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = Service(load_config(admin_config(tmp_path, port=port)))
        try:
            with pytest.raises(StartupError) as refused:
                await service.start()
        finally:
            await service.stop()
    assert (
        str(refused.value) == f"cannot listen on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}"
    )


async def test_the_console_is_off_unless_configured_and_its_token_is_checked(
    tmp_path: Path, running: Callable[..., Any]
) -> None:
    service = await running()
    assert service.config.admin is None and service.admin_port is None
    with pytest.raises(ConfigError) as short:
        load_config(admin_config(tmp_path, token="short-secret"))
    assert any("admin.token" in p and "16 characters" in p for p in short.value.problems)
    assert "short-secret" not in repr(short.value.problems)


async def test_rotating_the_admin_token_ends_every_session(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    path = admin_config(tmp_path)
    service = Service(load_config(path))
    await service.start()
    try:
        await sign_in(client, service)
        rotated = "rotated-admin-token-98765"
        path.write_text(path.read_text().replace(ADMIN_TOKEN, rotated))
        with structlog.testing.capture_logs() as logs:
            assert await service.reload()
            async with client.get(at(service, "/"), allow_redirects=False) as response:
                assert response.status == 303  # the old session is gone
        assert any(e["event"] == "admin token changed: every console session ended" for e in logs)
        async with client.post(at(service, "/login"), data={"token": ADMIN_TOKEN}) as response:
            assert response.status == 401
        async with client.post(at(service, "/login"), data={"token": rotated}) as response:
            assert response.status == 200 and response.url.path == "/"
    finally:
        await service.stop()
