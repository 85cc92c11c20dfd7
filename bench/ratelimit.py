"""Rate-limit benchmark: requests sent per window against HubSpot's limit, under a backlog.

The whole service (receiver, SQLite queue, HubSpot target through hubspot-api-client) drains a
backlog into the fake HubSpot, whose limit is set to the target's (by default 10 requests per
second: HubSpot's 100 per 10 s, compressed). One contact per call keeps the target saturated.
Reports the busiest window (must never exceed the limit), the throughput reached as a share of
the limit (target >= 90%) and the 429s the fake answered.

    python bench/ratelimit.py [--requests 10] [--per-seconds 1] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bench/ (hubspot.py)
from bench.common import ROOT, machine
from connector.config import load_config
from connector.logs import configure_logging
from connector.runtime import server_runner
from connector.service import Service
from fake_hubspot import FakeHubSpot

TOKEN = "bench-token-0123456789"
CUSTOMER = "CUST-e3115ba6-0cce-4ba5-9803-aadf90ba2a96"


async def run(
    requests: int, per_seconds: float, seconds: float, latency: float
) -> dict[str, object]:
    fake = FakeHubSpot(token="hs-bench", rate_limit=requests, interval=per_seconds, latency=latency)
    await fake.start()
    fake.add_property("mimeeq_contact_id", object_type="contacts", unique=True)
    backlog = int(seconds * requests / per_seconds * 1.5)  # more than can drain in time
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump({
            "server": {"host": "127.0.0.1", "port": 0},
            "store": {"url": "sqlite:///connector.db"},
            "tenants": {"demo": {
                "customer_id": CUSTOMER,
                "auth": {"values": [TOKEN]},
                "targets": {"hubspot": {
                    "type": "hubspot", "access_token": "hs-bench", "base_url": fake.url,
                    "mapping": {"fields": {"firstname": "firstName", "lastname": "lastName"}},
                    "batch_size": 1, "concurrency": 8, "linger": 0,
                    "rate_limit": {"requests": requests, "per_seconds": per_seconds},
                }},
            }},
        }))  # fmt: skip
        service = Service(load_config(config_path))
        await service.start()
        body = json.loads((ROOT / "tests" / "data" / "contact-created.json").read_text())
        async with aiohttp.ClientSession() as http:
            for n in range(backlog):
                body["id"] = f"CONT-{n:08d}"
                async with http.post(
                    f"http://127.0.0.1:{service.port}/webhooks/demo/contact-created",
                    json=body,
                    headers={"X-Mimeeq-Token": TOKEN},
                ) as response:
                    assert response.status == 202
        print(f"backlog of {backlog} contacts queued; draining for {seconds:g} s...", flush=True)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            await asyncio.sleep(1)
            done = len(fake.contacts)
            print(f"  {time.monotonic() - start:5.1f} s  {done} contacts in HubSpot", flush=True)
        await service.stop()
    await fake.stop()

    calls = sorted(c.at for c in fake.calls if c.at >= start)
    calls = [t for t in calls if t < start + seconds]
    window = per_seconds
    busiest = max(sum(1 for t in calls if s <= t < s + window) for s in calls)
    # Throughput over whole windows after the first one (the start-up burst is not the steady state)
    steady = [t for t in calls if t >= start + window]
    rate = len(steady) / (seconds - window) * window
    return {
        "benchmark": "ratelimit",
        "machine": machine(),
        "limit": f"{requests}/{per_seconds:g}s",
        "seconds": seconds,
        "requests": len(calls),
        "busiest_window": busiest,
        "per_window": round(rate, 2),
        "share_of_limit": round(rate / requests, 3),
        "answered_429": fake.count(429),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--per-seconds", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latency", type=float, default=0.05, help="the fake's answer time (s)")
    args = parser.parse_args()
    configure_logging("console", "warning")
    with server_runner() as runner:  # the loop and collector of `serve`
        figures = runner.run(run(args.requests, args.per_seconds, args.seconds, args.latency))
    print()
    print(f"limit {figures['limit']}: busiest window {figures['busiest_window']} requests "
          f"(never above {args.requests}), steady {figures['per_window']} per window = "
          f"{float(figures['share_of_limit']):.0%} of the limit (target >= 90%), "
          f"{figures['answered_429']} answered 429")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
