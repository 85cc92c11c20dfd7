"""The console's aiohttp application: routes, the sign-in guard, and the handlers.

Every route but ``/login`` needs a session (pages answer 303 to /login without one, actions
401), and every POST but ``/login`` a session's CSRF token (else 403): see :meth:`Console.guard`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import orjson
from aiohttp import web

from connector.config import AdminSettings, Config
from connector.console.auth import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    Session,
    Sessions,
    csrf_matches,
    log,
    sign_in_refusals,
    token_matches,
)
from connector.console.pages import by_tenant, status_json, templates
from connector.operations import operator_reason, set_pause, status_rows
from connector.store.base import Store

PUBLIC = frozenset({"/login"})  # the only path served without a session
MAX_REASON = 200  # characters of a pause reason
MAX_FORM_BYTES = 16 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# No third-party code, no inline script, no framing; nothing cached.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Backend:
    """What the console reads from the running service, looked up on each call (reloads)."""

    settings: Callable[[], AdminSettings]
    config: Callable[[], Config]
    store: Callable[[], Store]


class Console:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.sessions = Sessions()
        self.refusals = sign_in_refusals()
        self.script = (files("connector.console") / "static" / "console.js").read_bytes()

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await self._guarded(request, handler)
        except web.HTTPException as exc:  # aiohttp's own 404 and 405
            exc.headers.update(HEADERS)
            raise
        response.headers.update(HEADERS)
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC:
            return await handler(request)
        session = self._session(request)
        if session is None:
            if request.method in ("GET", "HEAD"):
                return _see("/login")
            return _page("message.html", 401, title="Not signed in", message="Sign in first.")
        if request.method not in ("GET", "HEAD"):
            sent = (await request.post()).get("csrf")
            if not isinstance(sent, str) or not csrf_matches(session, sent):
                message = "This form has expired or did not come from the console: reload it."
                return _page("message.html", 403, title="Refused", message=message)
        return await handler(request)

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.find(request.cookies.get(SESSION_COOKIE))

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is not None:
            return _see("/")
        return _page("login.html", 200, message=None)

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        sent = (await request.post()).get("token")
        sent = sent if isinstance(sent, str) else ""
        expected = self.backend.settings().token.get_secret_value()
        if not token_matches(sent, expected):
            self.refusals("wrong token" if sent else "no token", remote=request.remote)
            # The same page and words whatever was wrong: nothing to learn from the answer.
            return _page("login.html", 401, message="That is not the admin token.")
        sid, _ = self.sessions.open()
        log.info("console sign-in", remote=request.remote)
        response = _see("/")
        response.set_cookie(
            SESSION_COOKIE,
            sid,
            max_age=int(SESSION_SECONDS),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.backend.settings().secure_cookie,
        )
        return response

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        self.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = _see("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def overview(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        assert session is not None  # the guard let it through
        rows = await status_rows(self.backend.config(), self.backend.store())
        tenants = by_tenant(rows, time.time())
        return _page("overview.html", 200, tenants=tenants, csrf=session.csrf)

    async def status(self, request: web.Request) -> web.StreamResponse:
        rows = await status_rows(self.backend.config(), self.backend.store())
        return web.Response(
            body=orjson.dumps(status_json(rows, time.time())), content_type="application/json"
        )

    async def console_js(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.script, content_type="text/javascript")

    async def pause(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key = self._target(form.get("target"))
        reason = form.get("reason")
        reason = (reason if isinstance(reason, str) else "").strip() or "maintenance"
        if key is None or len(reason) > MAX_REASON:
            problem = "no such target" if key is None else f"at most {MAX_REASON} characters"
            return _page("message.html", 400, title="Not paused", message=problem)
        await set_pause(self.backend.store(), key, operator_reason(reason))
        log.info("target paused from the console", target=key, reason=reason)
        return _see("/")

    async def resume(self, request: web.Request) -> web.StreamResponse:
        key = self._target((await request.post()).get("target"))
        if key is None:
            return _page("message.html", 400, title="Not resumed", message="no such target")
        was = await set_pause(self.backend.store(), key, None)
        log.info("target resumed from the console", target=key, was=was)
        return _see("/")

    def _target(self, sent: Any) -> str | None:
        """The key of a configured target named by a form, or None."""
        keys = {t.key for t in self.backend.config().targets}
        return sent if isinstance(sent, str) and sent in keys else None


def create_console_app(backend: Backend) -> web.Application:
    console = Console(backend)
    app = web.Application(middlewares=[console.guard], client_max_size=MAX_FORM_BYTES)
    app.router.add_get("/login", console.login_page)
    app.router.add_post("/login", console.sign_in)
    app.router.add_post("/logout", console.sign_out)
    app.router.add_get("/", console.overview)
    app.router.add_get("/status.json", console.status)
    app.router.add_get("/console.js", console.console_js)
    app.router.add_post("/targets/pause", console.pause)
    app.router.add_post("/targets/resume", console.resume)
    return app


def _page(template: str, status: int, **values: Any) -> web.Response:
    text = templates.get_template(template).render(**values)
    return web.Response(text=text, status=status, content_type="text/html")


def _see(location: str) -> web.Response:
    """303 See Other: after a POST, the browser GETs the page (no resubmission on reload)."""
    return web.Response(status=303, headers={"Location": location})
