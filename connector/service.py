"""The running service: store, adapters, workers and HTTP server, started and stopped as one."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time

from aiohttp import web

from connector.config import DEMO_TOKEN, AdminSettings, Config, Target, load_config
from connector.console import Backend, TargetLive, create_console_app
from connector.delivery import TargetWorker
from connector.errors import ConfigError
from connector.health import StoreHealth, describe_error
from connector.http_server import WebhookSite
from connector.logs import get_logger, log_loop_exception
from connector.metrics import Metrics, MetricsReporter
from connector.ratelimit import RateLimiter, account_key, shared_limiter
from connector.receiver import Intake, create_app
from connector.store import open_store
from connector.store.base import Store, TargetStatus
from connector.store.url import shown

log = get_logger("connector.service")

PRUNE_EVERY = 3600.0  # seconds between two retention passes
GAUGES_MAX_AGE = 5.0  # seconds a scrape may reuse the queue figures of the one before
LIVE_TIMEOUT = 2.0  # seconds the console waits for a shared rate budget's count


class StartupError(Exception):
    """The service cannot start; the message says why, for one log line (no traceback)."""


class Service:
    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.store = store or open_store(config, exclusive=True)
        self.metrics = Metrics()
        self.store_health = StoreHealth(self.store)
        self.workers: dict[str, TargetWorker] = {}
        self._budgets: dict[str, RateLimiter] = {}  # each rate-limited target's account budget
        self.accepting = False
        self._runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None  # the operator console, when configured
        self._pruner: asyncio.Task[None] | None = None
        self._gauges_at = 0.0
        self._reloading = asyncio.Lock()
        self.port: int | None = None
        self.admin_port: int | None = None

    def notify(self, tenant: str, events: int = 1) -> None:
        """New events for ``tenant`` (queued here or by another replica): wake its workers."""
        for worker in self.workers.values():
            if worker.target.tenant == tenant:
                worker.notify(events)

    async def readiness_problem(self) -> str | None:
        if not self.accepting:
            return "starting or draining"
        if not all(worker.running for worker in self.workers.values()):
            return "a target worker is not running"
        problem = await self.store_health.problem()
        if problem:
            return problem
        try:
            async with asyncio.timeout(2):
                await self.store.ping()
        except Exception as exc:
            return f"store unreachable: {type(exc).__name__}"
        return None

    async def render_metrics(self) -> bytes:
        if time.monotonic() - self._gauges_at > GAUGES_MAX_AGE:
            self._gauges_at = time.monotonic()
            try:
                async with asyncio.timeout(2):
                    statuses = await self.store.status()
            except Exception as exc:  # the counters are served all the same: they say the most
                log.warning("queue gauges not refreshed", error=describe_error(exc))
                return self.metrics.render()
            found = {s.target: s for s in statuses}
            empty = TargetStatus("", 0, 0, 0, 0, None, None, None)
            self.metrics.set_queue(
                [found.get(key) or dataclasses.replace(empty, target=key) for key in self.workers]
                + [s for key, s in found.items() if key not in self.workers]
            )
        return self.metrics.render()

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Open the store, start the workers, listen. :class:`StartupError` says what failed."""
        try:
            await self.store.open()
            released = await self.store.recover()
        except ConfigError:
            raise
        except Exception as exc:  # disk full at migration, database refusing, ...
            problem = describe_error(exc)
            raise StartupError(f"the store {self._store_name()} cannot be used: {problem}") from exc
        if released:
            log.info("released claims left by an earlier run", claims=released)
        for target in self.config.targets:
            if target.settings.enabled:
                await self._start_worker(target)
        self.store.watch(self.notify)  # events other replicas queue wake these workers too

        server = self.config.server
        self._runner = web.AppRunner(
            create_app(self._intake()),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=server.drain_timeout,
        )
        await self._runner.setup()
        # Read deadlines, a connection cap, header limits: see WebhookSite.
        listen_host = host if host is not None else server.host
        listen_port = port if port is not None else server.port
        refused = self.metrics.connections_refused.inc
        site = WebhookSite(self._runner, server, listen_host, listen_port, on_refused=refused)
        await _listen(site, listen_host, listen_port)
        self.port = site.port
        admin = self.config.admin
        if admin is not None:
            await self._start_console(admin)
        self._pruner = asyncio.create_task(self._prune_forever(), name="retention")
        self.accepting = True
        log.info(
            "connector ready",
            listen=f"http://{listen_host}:{self.port}",
            tenants=len(self.config.tenants),
            targets=len(self.workers),
            console=f"http://{admin.host}:{self.admin_port}" if admin else None,
        )
        self._warn_of_demo_token(listen_host)

    async def _start_console(self, admin: AdminSettings) -> None:
        """The operator console, on its own listener: the webhook port serves none of it."""
        backend = Backend(
            settings=lambda: self.config.admin or admin,  # a reload may rotate the token
            config=lambda: self.config,
            store=lambda: self.store,
            live=self.live,
        )
        self._admin_runner = web.AppRunner(
            create_console_app(backend),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.config.server.drain_timeout,
        )
        await self._admin_runner.setup()
        await _listen(
            web.TCPSite(self._admin_runner, admin.host, admin.port), admin.host, admin.port
        )
        self.admin_port = int(self._admin_runner.addresses[0][1])

    def _warn_of_demo_token(self, host: str) -> None:
        """The published demo token lets anyone who can reach the port post webhooks."""
        for tenant in self.config.tenants.values():
            if DEMO_TOKEN.encode() in tenant.tokens:
                local = host in ("127.0.0.1", "::1", "localhost")
                log.warning(
                    "THE PUBLISHED DEMO WEBHOOK TOKEN IS IN USE: anyone who can reach "
                    + ("this machine" if local else f"{host}:{self.port}")
                    + " can post webhooks for this tenant; set a long random token "
                    "(e.g. DEMO_WEBHOOK_TOKEN for config.example.yaml) before real use",
                    tenant=tenant.slug,
                )

    def _intake(self) -> Intake:
        # Looked up on each call, not bound once: the config reloads, and tests replace methods.
        return Intake(
            tenant=lambda slug: self.config.tenants.get(slug),  # follows config reloads
            limits=self.config.server,
            accepting=lambda: self.accepting,
            append=lambda event: self.store.append(event),
            notify=lambda tenant: self.notify(tenant),
            store_health=self.store_health,
            events=self.metrics.events,
            render_metrics=lambda: self.render_metrics(),
            readiness_problem=lambda: self.readiness_problem(),
        )

    def _store_name(self) -> str:
        return shown(self.config.store.url, self.config.base_dir)  # never the password

    async def _start_worker(self, target: Target) -> None:
        report = MetricsReporter(self.metrics, target.tenant, target.name)

        def limiter(base_url: str, secret: str, requests: int, per_seconds: float) -> RateLimiter:
            self._budgets[target.key] = self._limiter(base_url, secret, requests, per_seconds)
            return self._budgets[target.key]

        context = target.context(report, limiter)
        adapter = target.adapter(target.settings, context)
        await adapter.open()
        worker = TargetWorker(target, adapter, self.store, self.metrics)
        self.workers[target.key] = worker
        worker.start()

    def _limiter(
        self, base_url: str, secret: str, requests: int, per_seconds: float
    ) -> RateLimiter:
        """An account's request budget: shared through the store when it can (replicas)."""
        shared = self.store.rate_limiter(account_key(base_url, secret), requests, per_seconds)
        return shared or shared_limiter(base_url, secret, requests, per_seconds)

    async def live(self) -> dict[str, TargetLive]:
        """What this process knows of each target beyond the store: for the console."""
        found = {}
        for key, worker in self.workers.items():
            budget = self._budgets.get(key)
            used = None
            if budget is not None:
                with contextlib.suppress(Exception):  # the store is down: shown as unknown
                    async with asyncio.timeout(LIVE_TIMEOUT):
                        used = await budget.in_window()
            found[key] = TargetLive(
                budget=(used, budget.requests) if budget is not None else None,
                last_error=worker.last_error,
            )
        return found

    async def _stop_worker(self, key: str, grace: float) -> None:
        worker = self.workers.pop(key)
        self._budgets.pop(key, None)
        await worker.stop(grace)
        try:
            await worker.adapter.close()
        except Exception:
            log.exception("adapter close failed", target=key)

    async def stop(self) -> None:
        """Drain: refuse new webhooks, let pushes in flight finish, release the rest."""
        started = time.monotonic()
        grace = self.config.server.drain_timeout
        self.accepting = False
        if self._pruner is not None:
            self._pruner.cancel()
        async with self._reloading:
            await asyncio.gather(*(self._stop_worker(key, grace) for key in list(self.workers)))
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self._runner is not None:
            await self._runner.cleanup()  # waits for requests being handled
        await self.store.close()
        log.info("connector stopped", seconds=round(time.monotonic() - started, 2))

    async def reload(self) -> bool:
        """Apply the config file again (SIGHUP): tenants, targets and mappings.

        A broken config is refused and the running one kept. Targets whose settings changed
        (or whose mapping has other fields) are restarted after their pushes in flight finish;
        a mapping that only computes its fields differently is swapped in for the next push.
        Server and store settings, and where the console listens, need a restart.
        """
        async with self._reloading:
            try:
                new = load_config(self.config.path)
            except ConfigError as exc:
                log.error("config reload refused: the running config stays", problems=exc.problems)
                return False
            if new.server != self.config.server or new.store != self.config.store:
                log.error("config reload refused: server and store settings need a restart")
                return False
            if _admin_listener(new.admin) != _admin_listener(self.config.admin):
                log.error("config reload refused: the admin listener needs a restart")
                return False
            grace = self.config.server.drain_timeout
            wanted = {t.key: t for t in new.targets if t.settings.enabled}
            for key in [k for k in self.workers if k not in wanted]:
                await self._stop_worker(key, grace)
            for key, target in wanted.items():
                worker = self.workers.get(key)
                if (
                    worker is not None
                    and worker.target.settings == target.settings
                    and worker.target.mapping.fields == target.mapping.fields
                ):
                    worker.target = target  # the next push maps with the new mapping
                    continue
                # New options, or new fields (a CSV's columns): a new adapter, after the old
                # one's pushes in flight.
                if worker is not None:
                    await self._stop_worker(key, grace)
                await self._start_worker(target)
            self.config = new
            log.info("config reloaded", tenants=len(new.tenants), targets=len(self.workers))
            return True

    async def _prune_forever(self) -> None:
        """Delete what retention no longer asks to keep, now and then (trace reads the rest)."""
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            try:
                pruned = await self.store.prune(self.config.store.retention_days * 86_400)
            except Exception:
                log.exception("retention pass failed")
            else:
                if any(pruned.values()):
                    log.info("retention pass", **pruned)

    async def run(self, host: str | None = None, port: int | None = None) -> None:
        """Run until SIGTERM or SIGINT, then drain. SIGHUP reloads the config."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[bool]] = set()

        def reload() -> None:
            task = asyncio.create_task(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.set_exception_handler(log_loop_exception)  # one JSON line, not asyncio's text
        try:
            await self.start(host, port)
        except BaseException:
            with contextlib.suppress(Exception):  # the cause is what gets told
                if self.workers or self._runner is not None:  # what did start is stopped
                    await self.stop()
                else:
                    await self.store.close()  # (closing a store twice is harmless)
            raise
        try:
            await stop.wait()
            log.info("stopping: draining work in flight")
        finally:
            await self.stop()


async def _listen(site: web.BaseSite, host: str, port: int) -> None:
    """Start listening, or a one-line :class:`StartupError` saying why not."""
    try:
        await site.start()
    except OSError as exc:  # the port is in use, the address is not this machine's, ...
        reason = os.strerror(exc.errno) if exc.errno else describe_error(exc)
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from exc


def _admin_listener(admin: AdminSettings | None) -> tuple[str, int] | None:
    """Where the console listens: a reload can change its token, not this."""
    return None if admin is None else (admin.host, admin.port)
