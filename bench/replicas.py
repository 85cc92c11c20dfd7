"""Scaling benchmark: accepted webhooks per second with 1 and with 3 replicas on PostgreSQL.

Each run starts N real server processes on a fresh schema of one PostgreSQL database (a ``null``
target, paused, so the figure is the receivers' and the shared store's), loads all of them at once
for the same time (one load generator per replica, connections split between them: ``wrk`` when
installed, else aiohttp clients) and sums what they accepted. Everything shares this machine's
cores with PostgreSQL, so read the figures with ``machine`` in mind; the CPU each webhook costs
the connector and PostgreSQL (from /proc) says how far replicas go once each has its own cores.

    python bench/replicas.py [--seconds 10] [--connections 64] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import yaml

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bench/ (hubspot.py)
from bench.common import (
    ROOT,
    cpu_seconds,
    cpu_used,
    free_port,
    machine,
    processes_named,
    wait_for_port,
)
from bench.ingest import BODY, CUSTOMER, TOKEN, WRK_SCRIPT, load_in_child
from testkit.postgres import with_search_path

DEFAULT_URL = os.environ.get("CONNECTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


async def fresh_schema(url: str) -> str:
    name = f"bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    return name


async def drop_schema(url: str, name: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        stored = int(await conn.fetchval(f'SELECT COUNT(*) FROM "{name}".events'))
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
        return stored
    finally:
        await conn.close()


def run(replicas: int, args: argparse.Namespace, folder: Path, generator: str) -> dict[str, float]:
    schema = asyncio.run(fresh_schema(args.postgres))
    config = folder / f"config-{replicas}.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0},
        "store": {"url": with_search_path(args.postgres, schema)},
        "tenants": {"demo": {"customer_id": CUSTOMER, "auth": {"values": [TOKEN]},
                             "targets": {"sink": {"type": "null", "mapping": str(
                                 ROOT / "mappings" / "csv-contacts.yaml")}}}},
    }))  # fmt: skip
    cli = [sys.executable, "-m", "connector"]
    subprocess.run([*cli, "pause", "--config", str(config), "--tenant", "demo", "--target",
                    "sink"], check=True, capture_output=True, cwd=ROOT)  # fmt: skip
    ports = [free_port() for _ in range(replicas)]
    servers = [
        subprocess.Popen(
            [*cli, "serve", "--config", str(config), "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
        )
        for port in ports
    ]
    try:
        for port in ports:
            wait_for_port(port)
        script = folder / "post.lua"
        per = max(args.connections // replicas, 4)
        pids = [server.pid for server in servers]
        before = cpu_seconds(pids), cpu_seconds(processes_named("postgres"))
        print(f"{replicas} replica(s): loading for {args.seconds} s...", flush=True)
        if generator == "wrk":
            code = (
                "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
                "from bench.ingest import run_wrk;"
                "print(json.dumps(run_wrk(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),"
                " Path(sys.argv[5]))))"
            )
            procs = [  # one wrk per replica, all at once
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        code,
                        str(ROOT),
                        f"http://127.0.0.1:{port}/webhooks/demo/contact-created",
                        str(args.seconds),
                        str(per),
                        str(script),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for port in ports
            ]
            results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        else:
            results = [load_in_child(f"http://127.0.0.1:{port}", args.seconds, per, None)
                       for port in ports]  # fmt: skip
        connector_cpu = cpu_used(before[0], cpu_seconds(pids))
        postgres_cpu = cpu_used(before[1], cpu_seconds(processes_named("postgres")))
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(60)
    stored = asyncio.run(drop_schema(args.postgres, schema))
    accepted = sum(r["requests"] - r["errors"] for r in results)
    return {
        "rps": sum(r["rps"] for r in results),
        "accepted": accepted,
        "lost": max(0, accepted - stored),
        "p99_ms": max(r["p99"] for r in results),
        # CPU per webhook: what decides how far replicas scale once each has cores of its own.
        "connector_cpu_ms": 1000 * connector_cpu / accepted,
        "postgres_cpu_ms": 1000 * postgres_cpu / accepted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64, help="in total, split")
    parser.add_argument("--postgres", default=DEFAULT_URL)
    args = parser.parse_args()
    generator = "wrk" if shutil.which("wrk") else "aiohttp"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        body = json.dumps(BODY).replace(BODY["id"], "CONTACT_ID")
        (folder / "post.lua").write_text(WRK_SCRIPT.replace("BODY", body).replace("TOKEN", TOKEN))
        one = run(1, args, folder, generator)
        three = run(3, args, folder, generator)
    figures = {
        "benchmark": "replicas",
        "generator": generator,
        "machine": machine(),
        "one_replica_rps": round(one["rps"]),
        "three_replicas_rps": round(three["rps"]),
        "scaling": round(three["rps"] / one["rps"], 2),
        "one_replica_p99_ms": round(one["p99_ms"], 1),
        "three_replicas_p99_ms": round(three["p99_ms"], 1),
        "lost": int(one["lost"] + three["lost"]),
        "one_replica_cpu_ms_per_webhook": round(one["connector_cpu_ms"], 3),
        "three_replicas_cpu_ms_per_webhook": round(three["connector_cpu_ms"], 3),
        "one_replica_postgres_cpu_ms_per_webhook": round(one["postgres_cpu_ms"], 3),
        "three_replicas_postgres_cpu_ms_per_webhook": round(three["postgres_cpu_ms"], 3),
    }
    print()
    print(f"1 replica   {figures['one_replica_rps']:>7} webhooks/s  (p99 "
          f"{figures['one_replica_p99_ms']} ms)")  # fmt: skip
    print(f"3 replicas  {figures['three_replicas_rps']:>7} webhooks/s  (p99 "
          f"{figures['three_replicas_p99_ms']} ms)   x{figures['scaling']}")  # fmt: skip
    for n, name in ((1, "one_replica"), (3, "three_replicas")):
        print(f"CPU per webhook, {n} replica(s): connector "
              f"{figures[f'{name}_cpu_ms_per_webhook']:.3f} ms, PostgreSQL "
              f"{figures[f'{name}_postgres_cpu_ms_per_webhook']:.3f} ms")  # fmt: skip
    print(f"acknowledged but not stored: {figures['lost']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
