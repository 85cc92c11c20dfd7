"""Run the fake HubSpot for local trials: ``python -m fake_hubspot --port 8089``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from fake_hubspot.server import FakeHubSpot


async def _serve(port: int, rate_limit: int, interval: float) -> None:
    fake = FakeHubSpot(rate_limit=rate_limit, interval=interval)
    url = await fake.start(port=port)
    print(f"fake HubSpot at {url}, token {fake.token}", flush=True)
    try:
        await asyncio.Event().wait()  # until interrupted
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fake_hubspot", description=__doc__)
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--rate-limit", type=int, default=100, help="requests per interval")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.rate_limit, args.interval))


if __name__ == "__main__":
    main()
