"""The console's aiohttp application: routes, the sign-in guard, and the handlers.

Every route but ``/login`` needs a session (pages answer 303 to /login without one, actions
401), and every POST but ``/login`` a session's CSRF token (else 403): see :meth:`Console.guard`.
Each action calls the function its CLI command calls (connector/operations.py).
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from importlib.resources import files
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiDictProxy

from connector import operations
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
from connector.console.pages import (
    AGES,
    TargetLive,
    by_tenant,
    letter_rows,
    mapped_record,
    status_json,
    templates,
    timeline,
)
from connector.keys import split_key
from connector.logs import mask
from connector.operations import operator_reason, set_pause, status_rows
from connector.store.base import DeadLetterPick, Replayed, Store

PUBLIC = frozenset({"/login"})  # the only path served without a session
MAX_REASON = 200  # characters of a pause reason
MAX_FORM_BYTES = 256 * 1024  # room for a few thousand selected dead letters
SHOWN_LETTERS = 200  # dead letters listed on a page
MAX_IDS = 100  # contacts re-written in one go from the console
MAX_SELECTED = 500  # dead letters ticked at once (a page shows 200; aiohttp takes 1000 fields)
ID = re.compile(r"[0-9]{1,18}")  # a dead letter's id as sent: ASCII digits the stores can hold
KEPT_REPLAYS = 50  # replays whose outcomes can still be followed
BACK = frozenset({"/", "/targets"})  # where a pause or resume may return to

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION = web.RequestKey("session", Session)  # the signed-in session, set by the guard
Form = MultiDictProxy[str | bytes | Any]

# No third-party code, no inline script, no framing; nothing cached.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def _nothing_live() -> dict[str, TargetLive]:
    return {}


@dataclass(frozen=True)
class Backend:
    """What the console reads from the running service, looked up on each call (reloads)."""

    settings: Callable[[], AdminSettings]
    config: Callable[[], Config]
    store: Callable[[], Store]
    live: Callable[[], Awaitable[dict[str, TargetLive]]] = _nothing_live


@dataclass(frozen=True)
class LetterFilter:
    """The dead-letter list's filters, as the page's form sends them."""

    tenant: str = ""
    target: str = ""  # a target key ("tenant/name")
    reason: str = ""
    age: str = ""  # a key of AGES

    @classmethod
    def read(cls, values: Mapping[str, Any], config: Config, strict: bool = False) -> LetterFilter:
        """The filters sent; one naming no tenant, target or age configured is left out, or,
        ``strict`` (an action on all that match), refused with ValueError: never widened."""

        def text(name: str) -> str:
            value = values.get(name)
            return value.strip()[:MAX_REASON] if isinstance(value, str) else ""

        tenant, target, age = text("tenant"), text("target"), text("age")
        known = {
            "tenant": tenant in config.tenants,
            "target": target in {t.key for t in config.targets},
            "age": age in AGES,
        }
        sent = {"tenant": tenant, "target": target, "age": age}
        unknown = [name for name, ok in known.items() if sent[name] and not ok]
        if strict and unknown:
            raise ValueError(f"no such {unknown[0]} now: {sent[unknown[0]]!r}; filter again")
        return cls(
            tenant=tenant if known["tenant"] else "",
            target=target if known["target"] else "",
            reason=text("reason"),
            age=age if known["age"] else "",
        )

    def pick(self, config: Config) -> DeadLetterPick:
        targets: list[str] | None = None
        if self.target:
            targets = [self.target]
        elif self.tenant:
            targets = [t.key for t in config.targets if t.tenant == self.tenant]
        seconds = AGES[self.age][1] if self.age else None
        return DeadLetterPick(
            targets=targets,
            failed_before=time.time() - seconds if seconds is not None else None,
            error_contains=self.reason or None,
            not_replayed=True,
        )

    def query(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


@dataclass(frozen=True)
class ReplayDone:
    report: list[Replayed]
    at: float  # wall clock, when it was made


class Console:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.sessions = Sessions()
        self.refusals = sign_in_refusals()
        self.script = (files("connector.console") / "static" / "console.js").read_bytes()
        self.replays: OrderedDict[str, ReplayDone] = OrderedDict()
        self._token: str | None = None  # the admin token the sessions were opened with

    @property
    def config(self) -> Config:
        return self.backend.config()

    @property
    def store(self) -> Store:
        return self.backend.store()

    # --- the guard ---------------------------------------------------------------------------

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
        request[SESSION] = session
        if request.method not in ("GET", "HEAD"):
            sent = (await request.post()).get("csrf")
            if not isinstance(sent, str) or not csrf_matches(session, sent):
                message = "This form has expired or did not come from the console: reload it."
                return _page("message.html", 403, title="Refused", message=message)
        return await handler(request)

    def _session(self, request: web.Request) -> Session | None:
        token = self.backend.settings().token.get_secret_value()
        if token != self._token:  # rotated by a reload: whoever signed in with the old one is out
            if self._token is not None:
                log.info("admin token changed: every console session ended")
            self.sessions, self._token = Sessions(), token
        return self.sessions.find(request.cookies.get(SESSION_COOKIE))

    def _render(
        self, request: web.Request, template: str, status: int = 200, **values: Any
    ) -> web.Response:
        """A page of a signed-in operator: its forms carry the session's CSRF token."""
        session = request[SESSION]
        return _page(template, status, csrf=session.csrf, path=request.path, **values)

    def _problem(
        self, request: web.Request, title: str, message: str, status: int = 400
    ) -> web.Response:
        return self._render(request, "message.html", status, title=title, message=message)

    # --- signing in and out ------------------------------------------------------------------

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
        self._session(request)  # a token rotated since the last request: start afresh
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

    # --- overview and targets ----------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        rows = await status_rows(self.config, self.store)
        tenants = by_tenant(rows, await self.backend.live(), time.time())
        return self._render(request, "overview.html", tenants=tenants)

    async def status(self, request: web.Request) -> web.StreamResponse:
        rows = await status_rows(self.config, self.store)
        shown = status_json(rows, await self.backend.live(), time.time())
        return web.Response(body=orjson.dumps(shown), content_type="application/json")

    async def console_js(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.script, content_type="text/javascript")

    async def targets(self, request: web.Request) -> web.StreamResponse:
        rows = await status_rows(self.config, self.store)
        tenants = by_tenant(rows, await self.backend.live(), time.time())
        kinds = {t.key: t.settings.type for t in self.config.targets}
        return self._render(request, "targets.html", tenants=tenants, kinds=kinds)

    async def pause(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key = self._target(form.get("target"))
        reason = form.get("reason")
        reason = (reason if isinstance(reason, str) else "").strip() or "maintenance"
        if key is None or len(reason) > MAX_REASON:
            problem = "no such target" if key is None else f"at most {MAX_REASON} characters"
            return self._problem(request, "Not paused", problem)
        await set_pause(self.store, key, operator_reason(reason))
        log.info("target paused from the console", target=key, reason=reason)
        return _see(_back(form))

    async def resume(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key = self._target(form.get("target"))
        if key is None:
            return self._problem(request, "Not resumed", "no such target")
        was = await set_pause(self.store, key, None)
        log.info("target resumed from the console", target=key, was=was)
        return _see(_back(form))

    async def resync(self, request: web.Request) -> web.StreamResponse:
        """A full re-write of contacts, as `resync ID… --tenant T --target N`."""
        form = await request.post()
        key = self._target(form.get("target"))
        sent = form.get("ids")
        ids = list(dict.fromkeys((sent if isinstance(sent, str) else "").split()))
        if key is None or not ids or len(ids) > MAX_IDS or any(len(i) > MAX_REASON for i in ids):
            problem = (
                "no such target" if key is None
                else "give the Mimeeq id of at least one contact" if not ids
                else f"at most {MAX_IDS} ids of at most {MAX_REASON} characters"
            )  # fmt: skip
            return self._problem(request, "Nothing re-written", problem)
        queued = (await operations.resync(self.store, [key], ids))[key]
        log.info("full re-write asked from the console", target=key, contacts=len(ids))
        return self._render(
            request, "resynced.html", target=key, ids=ids, queued=queued, missing=len(ids) - queued
        )

    def _target(self, sent: Any) -> str | None:
        """The key of a configured target named by a form, or None."""
        keys = {t.key for t in self.config.targets}
        return sent if isinstance(sent, str) and sent in keys else None

    # --- dead letters ------------------------------------------------------------------------

    async def dead_letters(self, request: web.Request) -> web.StreamResponse:
        config = self.config
        chosen = LetterFilter.read(request.query, config)
        letters = await self.store.dead_letters(limit=SHOWN_LETTERS + 1, pick=chosen.pick(config))
        purged = request.query.get("purged", "")
        return self._render(
            request,
            "dead_letters.html",
            chosen=chosen,
            tenants=sorted(config.tenants),
            targets=[t.key for t in config.targets],
            ages=AGES,
            letters=letter_rows(letters[:SHOWN_LETTERS], time.time()),
            more=len(letters) > SHOWN_LETTERS,
            purged=int(purged) if ID.fullmatch(purged) else None,
        )

    async def dead_letter(self, request: web.Request) -> web.StreamResponse:
        letter = await self.store.dead_letter(int(request.match_info["id"]))
        if letter is None:
            return self._problem(request, "No such dead letter", "It may have been purged.", 404)
        target = next((t for t in self.config.targets if t.key == letter.target), None)
        record, problem = mapped_record(target, letter)
        return self._render(
            request,
            "dead_letter.html",
            letter=operations.letter_dict(letter),
            rows=letter_rows([letter], time.time()),
            record=record,
            problem=problem,
        )

    async def replay(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        config = self.config
        targets = [t.key for t in config.targets]
        try:
            ids, pick = self._chosen_letters(form)
        except ValueError as exc:
            return self._problem(request, "Nothing replayed", str(exc))
        if ids is None and pick is None:
            return self._problem(request, "Nothing replayed", "Select dead letters first.")
        since = time.time()  # before: a contact may die again while a long replay runs
        report = await operations.replay(self.store, ids, targets, pick)
        rid = secrets.token_urlsafe(12)
        self.replays[rid] = ReplayDone(report, since)
        while len(self.replays) > KEPT_REPLAYS:
            self.replays.popitem(last=False)
        log.info("dead letters replayed from the console", replayed=len(report))
        return _see(f"/replays/{rid}")

    async def replayed(self, request: web.Request) -> web.StreamResponse:
        done = self.replays.get(request.match_info["rid"])
        if done is None:
            return self._problem(request, "Replay not found", "It is no longer kept.", 404)
        outcomes = await self._outcomes(done)
        return self._render(
            request,
            "replayed.html",
            report=done.report[:SHOWN_LETTERS],
            outcomes=outcomes,
            more=max(len(done.report) - SHOWN_LETTERS, 0),
            rid=request.match_info["rid"],
        )

    async def replay_outcomes(self, request: web.Request) -> web.StreamResponse:
        done = self.replays.get(request.match_info["rid"])
        if done is None:
            raise web.HTTPNotFound()
        outcomes = await self._outcomes(done)
        return web.Response(body=orjson.dumps(outcomes, option=orjson.OPT_NON_STR_KEYS),
                            content_type="application/json")  # fmt: skip

    async def _outcomes(self, done: ReplayDone) -> dict[int, str]:
        """What became of a replay's contacts; a target's message masked like the logs."""
        found = await operations.replay_outcomes(self.store, done.report, done.at)
        return {letter: mask(outcome) for letter, outcome in found.items()}

    async def purge(self, request: web.Request) -> web.StreamResponse:
        """Purge what was ticked or matches, once confirmed: exactly the letters counted (none
        newer, the same age limit), not replayed meanwhile."""
        form = await request.post()
        try:
            ids, pick = self._chosen_letters(form)
            through, before = _confirmed(form)
        except ValueError as exc:
            return self._problem(request, "Nothing purged", str(exc))
        if ids is not None:
            pick = DeadLetterPick(ids=ids, not_replayed=True)
        if pick is None:
            return self._problem(request, "Nothing purged", "Select dead letters first.")
        if through is None:
            count, last = await _count(self.store, pick)
            if not count:
                return self._problem(request, "Nothing purged", "No dead letter is left to purge.")
            fields = [*_fields(form), ("through", str(last))]
            if pick.failed_before is not None:
                fields.append(("before", repr(pick.failed_before)))
            return self._render(request, "confirm_purge.html", count=count, form=fields)
        pick = replace(pick, through_id=through, failed_before=before or pick.failed_before)
        purged = await self.store.purge(pick)
        log.info("dead letters purged from the console", purged=purged)
        return _see(f"/dead-letters?purged={purged}")

    def _chosen_letters(self, form: Form) -> tuple[list[int] | None, DeadLetterPick | None]:
        """The dead letters an action takes: the ones ticked, or all that match the filters."""
        if form.get("scope") == "matching":
            return None, LetterFilter.read(form, self.config, strict=True).pick(self.config)
        ids = [int(v) for v in form.getall("id", []) if isinstance(v, str) and ID.fullmatch(v)]
        if len(ids) > MAX_SELECTED:
            raise ValueError(f"at most {MAX_SELECTED} ticked at once: use all matching instead")
        return (ids or None), None

    # --- trace -------------------------------------------------------------------------------

    async def trace_page(self, request: web.Request) -> web.StreamResponse:
        mimeeq_id = request.query.get("id", "").strip()
        if not mimeeq_id:
            return self._render(request, "trace.html", query="", found=None, matches=None)
        return await self._trace(request, mimeeq_id, query=mimeeq_id)

    async def trace_search(self, request: web.Request) -> web.StreamResponse:
        """Searched by POST: an e-mail address stays out of URLs, history and logs."""
        sent = (await request.post()).get("q")
        query = (sent if isinstance(sent, str) else "").strip()[:MAX_REASON]
        if "@" not in query:
            return await self._trace(request, query, query=query)
        matches = await self.store.contacts_by_email(query)
        if len(matches) == 1:
            return await self._trace(request, matches[0][1], query="")
        return self._render(request, "trace.html", query="", found=None, matches=matches)

    async def _trace(self, request: web.Request, mimeeq_id: str, query: str) -> web.Response:
        found = await self.store.trace(mimeeq_id) if mimeeq_id else None
        if found is not None and operations.trace_is_empty(found):
            found = None
        targets = [t.key for t in self.config.targets if split_key(t.key)[0] in _tenants(found)]
        return self._render(
            request,
            "trace.html",
            query=query,
            mimeeq_id=mimeeq_id,
            kind=operations.object_of(mimeeq_id),
            found=found,
            entries=timeline(found) if found else [],
            targets=targets,
            matches=None,
            retention=self.config.store.retention_days,
        )


def _tenants(found: Any) -> set[str]:
    return {e.tenant for e in found.events} if found else set()


async def _count(store: Store, pick: DeadLetterPick) -> tuple[int, int]:
    """How many dead letters ``pick`` chooses, and the last one's id (the purge confirms them)."""
    counted, after = 0, 0
    while letters := await store.dead_letters(limit=1000, pick=replace(pick, after_id=after)):
        counted += len(letters)
        after = letters[-1].id
    return counted, after


def _confirmed(form: Form) -> tuple[int | None, float | None]:
    """The last id and the age limit a purge's confirmation counted with (None: not confirmed)."""
    through, before = form.get("through"), form.get("before")
    if through is None:
        return None, None
    if not isinstance(through, str) or not ID.fullmatch(through):
        raise ValueError("this confirmation is not one the console made: purge again")
    try:
        return int(through), float(before) if isinstance(before, str) else None
    except ValueError:
        raise ValueError("this confirmation is not one the console made: purge again") from None


def _fields(form: Form) -> list[tuple[str, str]]:
    """A form's fields (but its token), to send again once confirmed."""
    return [(k, v) for k, v in form.items() if isinstance(v, str) and k != "csrf"]


def _back(form: Form) -> str:
    sent = form.get("back")
    return sent if isinstance(sent, str) and sent in BACK else "/"


def create_console_app(backend: Backend) -> web.Application:
    console = Console(backend)
    app = web.Application(middlewares=[console.guard], client_max_size=MAX_FORM_BYTES)
    app.router.add_get("/login", console.login_page)
    app.router.add_post("/login", console.sign_in)
    app.router.add_post("/logout", console.sign_out)
    app.router.add_get("/", console.overview)
    app.router.add_get("/status.json", console.status)
    app.router.add_get("/console.js", console.console_js)
    app.router.add_get("/targets", console.targets)
    app.router.add_post("/targets/pause", console.pause)
    app.router.add_post("/targets/resume", console.resume)
    app.router.add_post("/targets/resync", console.resync)
    app.router.add_get("/dead-letters", console.dead_letters)
    app.router.add_get(r"/dead-letters/{id:\d{1,18}}", console.dead_letter)
    app.router.add_post("/dead-letters/replay", console.replay)
    app.router.add_post("/dead-letters/purge", console.purge)
    app.router.add_get("/replays/{rid}", console.replayed)
    app.router.add_get("/replays/{rid}/outcomes.json", console.replay_outcomes)
    app.router.add_get("/trace", console.trace_page)
    app.router.add_post("/trace", console.trace_search)
    return app


def _page(template: str, status: int, **values: Any) -> web.Response:
    text = templates.get_template(template).render(**values)
    return web.Response(text=text, status=status, content_type="text/html")


def _see(location: str) -> web.Response:
    """303 See Other: after a POST, the browser GETs the page (no resubmission on reload)."""
    return web.Response(status=303, headers={"Location": location})
