"""The running service: store, adapters, workers and HTTP server, started and stopped as one."""

from __future__ import annotations

import asyncio
import signal
import time

from aiohttp import web

from connector.config import Config
from connector.delivery import TargetWorker
from connector.observability import get_logger
from connector.receiver import create_app
from connector.store import open_store
from connector.store.base import Store
from connector.targets import Adapter, TargetContext

log = get_logger("connector.service")

PRUNE_EVERY = 3600.0  # seconds between two retention passes


class Service:
    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.store = store or open_store(config, exclusive=True)
        self.workers: dict[str, TargetWorker] = {}
        self.adapters: list[Adapter] = []
        self.accepting = False
        self._by_tenant: dict[str, list[TargetWorker]] = {}
        self._runner: web.AppRunner | None = None
        self._pruner: asyncio.Task[None] | None = None
        self.port: int | None = None

    def notify(self, tenant: str) -> None:
        """New events for ``tenant``: wake its workers."""
        for worker in self._by_tenant.get(tenant, ()):
            worker.notify()

    async def readiness_problem(self) -> str | None:
        if not self.accepting:
            return "starting or draining"
        if not all(worker.running for worker in self.workers.values()):
            return "a target worker is not running"
        try:
            async with asyncio.timeout(2):
                await self.store.ping()
        except Exception as exc:
            return f"store unreachable: {type(exc).__name__}"
        return None

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        await self.store.open()
        released = await self.store.recover()
        if released:
            log.info("released claims left by an earlier run", claims=released)
        for target in self.config.targets:
            if not target.settings.enabled:
                continue
            adapter = target.adapter(
                target.settings, TargetContext(target.tenant, target.name, target.mapping)
            )
            await adapter.open()
            self.adapters.append(adapter)
            worker = TargetWorker(target, adapter, self.store)
            self.workers[target.key] = worker
            self._by_tenant.setdefault(target.tenant, []).append(worker)
            worker.start()

        server = self.config.server
        self._runner = web.AppRunner(
            create_app(self),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=server.drain_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            host if host is not None else server.host,
            port if port is not None else server.port,
            backlog=1024,
        )
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._pruner = asyncio.create_task(self._prune_forever(), name="retention")
        self.accepting = True
        log.info(
            "connector ready",
            listen=f"http://{host or server.host}:{self.port}",
            tenants=len(self.config.tenants),
            targets=len(self.workers),
        )

    async def stop(self) -> None:
        """Drain: refuse new webhooks, let pushes in flight finish, release the rest."""
        started = time.monotonic()
        grace = self.config.server.drain_timeout
        self.accepting = False
        if self._pruner is not None:
            self._pruner.cancel()
        await asyncio.gather(*(w.stop(grace) for w in self.workers.values()))
        if self._runner is not None:
            await self._runner.cleanup()  # waits for requests being handled
        for adapter in self.adapters:
            try:
                await adapter.close()
            except Exception:
                log.exception("adapter close failed", target=adapter.context.key)
        await self.store.close()
        log.info("connector stopped", seconds=round(time.monotonic() - started, 2))

    async def _prune_forever(self) -> None:
        """Delete what retention no longer asks to keep, now and then (trace reads the rest)."""
        retention = self.config.store.retention_days * 86_400
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            try:
                pruned = await self.store.prune(retention)
            except Exception:
                log.exception("retention pass failed")
            else:
                if any(pruned.values()):
                    log.info("retention pass", **pruned)

    async def run(self, host: str | None = None, port: int | None = None) -> None:
        """Run until SIGTERM or SIGINT, then drain."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start(host, port)
            await stop.wait()
            log.info("stopping: draining work in flight")
        finally:
            await self.stop()
