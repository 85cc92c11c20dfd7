"""Prometheus metrics: what operators graph and alert on.

One :class:`Metrics` per running service (its own registry, so tests and embedders never share
counters). Labels are bounded: tenants and targets come from the config, events from Mimeeq's list,
outcomes from fixed sets — never a contact, an e-mail or anything a caller can invent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from connector import __version__
from connector.adapter import TargetReporter
from connector.keys import split_key
from connector.store.base import TargetStatus

PREFIX = "mimeeq_connector"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge(f"{PREFIX}_info", "The connector's version.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        self.events = Counter(
            f"{PREFIX}_events_received", "Webhooks received, by what became of them.",
            ["tenant", "event", "outcome"], registry=r,
        )  # fmt: skip
        self.connections_refused = Counter(
            f"{PREFIX}_connections_refused", "Connections answered 503: max_connections reached.",
            registry=r,
        )  # fmt: skip
        self.deliveries = Counter(
            f"{PREFIX}_deliveries", "Records pushed to targets, by outcome.",
            ["tenant", "target", "outcome"], registry=r,
        )  # fmt: skip
        self.crm_seconds = Histogram(
            f"{PREFIX}_crm_request_seconds", "Time of each request to a CRM.",
            ["tenant", "target"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.crm_responses = Counter(
            f"{PREFIX}_crm_responses", "Answers of CRMs, by HTTP status (error: no answer).",
            ["tenant", "target", "status"], registry=r,
        )  # fmt: skip
        self.rate_waits = Counter(
            f"{PREFIX}_rate_limit_wait_seconds", "Seconds spent waiting for a rate limit.",
            ["tenant", "target"], registry=r,
        )  # fmt: skip
        self.pending = Gauge(
            f"{PREFIX}_queue_pending", "Undelivered events.", ["tenant", "target"], registry=r
        )
        self.oldest = Gauge(
            f"{PREFIX}_queue_oldest_age_seconds", "Age of the oldest undelivered event.",
            ["tenant", "target"], registry=r,
        )  # fmt: skip
        self.dead = Gauge(
            f"{PREFIX}_dead_letters", "Dead letters not replayed or purged.",
            ["tenant", "target"], registry=r,
        )  # fmt: skip
        self.paused = Gauge(
            f"{PREFIX}_target_paused", "1 while a target is paused.", ["tenant", "target"],
            registry=r,
        )  # fmt: skip

    def set_queue(self, statuses: Sequence[TargetStatus], now: float | None = None) -> None:
        """Refresh the gauges from the store's view of every target."""
        now = time.time() if now is None else now
        for status in statuses:
            tenant, target = split_key(status.target)
            self.pending.labels(tenant, target).set(status.pending)
            age = now - status.oldest_pending_at if status.oldest_pending_at else 0.0
            self.oldest.labels(tenant, target).set(max(age, 0.0))
            self.dead.labels(tenant, target).set(status.dead)
            self.paused.labels(tenant, target).set(1 if status.paused else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsReporter(TargetReporter):
    """An adapter's reports, counted under its tenant and target."""

    def __init__(self, metrics: Metrics, tenant: str, target: str) -> None:
        self._metrics, self._labels = metrics, (tenant, target)

    def request(self, status: int | str, seconds: float) -> None:
        self._metrics.crm_seconds.labels(*self._labels).observe(seconds)
        self._metrics.crm_responses.labels(*self._labels, str(status or "error")).inc()

    def rate_wait(self, seconds: float) -> None:
        if seconds > 0:
            self._metrics.rate_waits.labels(*self._labels).inc(seconds)
