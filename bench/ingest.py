"""Ingest benchmark: accepted webhooks per second and time to 202, against a bare aiohttp app.

Both servers run as separate processes and are loaded in the same run by the same generator:
``wrk`` when it is installed (a Lua script gives every request its own contact), otherwise a pool
of aiohttp clients in a child process. Two real servers run on SQLite with a ``null`` target: one
with the target paused (the receiver alone: what the ratio target is about) and one draining the
queue at the same time, as in production. Runs alternate for several rounds and medians are kept,
so a noisy neighbour does not decide the figure.

    python bench/ingest.py [--seconds 8] [--rounds 3] [--connections 64] [--rate 500]

Prints a readable report and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bench/ (hubspot.py)
from bench.common import ROOT, free_port, machine, wait_for_port

TOKEN = "bench-token-0123456789"
CUSTOMER = "CUST-e3115ba6-0cce-4ba5-9803-aadf90ba2a96"
BODY = json.loads((ROOT / "tests" / "data" / "contact-created.json").read_text())

BARE_APP = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    async def handle(request):
        await request.read()
        return web.json_response({"eventId": "x", "status": "queued"}, status=202)
    app = web.Application()
    app.router.add_post("/webhooks/{tenant}/{event}", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)

WRK_SCRIPT = textwrap.dedent(
    """
    -- Every request a new contact: wrk's threads each number their own.
    local threads = 0
    function setup(thread)
        threads = threads + 1
        thread:set("tid", threads)
    end
    local counter = 0
    local template = [[BODY]]
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["X-Mimeeq-Token"] = "TOKEN"
    request = function()
        counter = counter + 1
        local id = string.format("CONT-RUN-%d-%09d", tid, counter)
        local body = string.gsub(template, "CONTACT_ID", id)
        return wrk.format(nil, "/webhooks/demo/contact-created", nil, body)
    end
    """
)


def write_config(folder: Path) -> Path:
    config = folder / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            server: {{host: 127.0.0.1, port: 0}}
            store: {{url: "sqlite:///connector.db"}}
            tenants:
              demo:
                customer_id: {CUSTOMER}
                auth: {{header: X-Mimeeq-Token, values: ["{TOKEN}"]}}
                targets:
                  sink: {{type: "null", mapping: "{ROOT / "mappings" / "csv-contacts.yaml"}"}}
            """
        )
    )
    return config


def run_wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, float]:
    # Contacts new to this run too: a body seen before would be a cheap duplicate.
    run_script = script.with_name(f"run-{time.monotonic_ns()}.lua")
    run_script.write_text(script.read_text().replace("RUN", str(time.monotonic_ns())))
    script = run_script
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures: dict[str, float] = {"errors": 0}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            figures["rps"] = float(words[1])
        elif line.strip().startswith(("50%", "99%")):
            figures["p" + words[0].rstrip("%")] = _ms(words[1])
        elif "requests in" in line:
            figures["requests"] = float(words[0])
        elif line.strip().startswith("Non-2xx"):
            figures["errors"] += float(words[-1])
        elif line.strip().startswith("Socket errors"):
            figures["errors"] += sum(float(w.rstrip(",")) for w in words[3::2])
    return figures


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


async def client_load(
    url: str, seconds: float, connections: int, rate: float | None
) -> dict[str, float]:
    """aiohttp load: as fast as possible, or at a fixed rate (open loop) when ``rate`` is set."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    deadline = time.monotonic() + seconds
    template = json.dumps(BODY)

    async def one(http: aiohttp.ClientSession) -> None:
        nonlocal counter, errors
        counter += 1
        body = template.replace(BODY["id"], f"CONT-{counter:08d}-{os.getpid()}")
        start = time.perf_counter()
        try:
            async with http.post(
                url + "/webhooks/demo/contact-created",
                data=body,
                headers={"X-Mimeeq-Token": TOKEN, "Content-Type": "application/json"},
            ) as response:
                await response.read()
                ok = response.status == 202
        except aiohttp.ClientError:
            ok = False
        latencies.append((time.perf_counter() - start) * 1000)
        errors += not ok

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as http:
        started = time.monotonic()
        if rate:
            tasks = []
            n = 0
            while time.monotonic() < deadline:
                due = started + n / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.create_task(one(http)))
                n += 1
            await asyncio.gather(*tasks)
        else:

            async def worker() -> None:
                while time.monotonic() < deadline:
                    await one(http)

            await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
        "errors": errors,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
    }


def load_in_child(
    url: str, seconds: float, connections: int, rate: float | None
) -> dict[str, float]:
    """Run the aiohttp generator in its own process, so it does not share the server's core."""
    code = (
        "import asyncio, json, sys; sys.path.insert(0, sys.argv[1]); from bench import ingest; "
        "print(json.dumps(asyncio.run(ingest.client_load(sys.argv[2], float(sys.argv[3]), "
        "int(sys.argv[4]), float(sys.argv[5]) or None))))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(Path(__file__).parent),
            url,
            str(seconds),
            str(connections),
            str(rate or 0),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def start_server(folder: Path, paused: bool) -> tuple[subprocess.Popen[bytes], int, Path]:
    folder.mkdir()
    config = write_config(folder)
    cli = [sys.executable, "-m", "connector"]
    if paused:  # the receiver alone: events queue up, nothing drains
        subprocess.run([*cli, "pause", "--config", str(config), "--tenant", "demo",
                        "--target", "sink"], check=True, capture_output=True, cwd=ROOT)  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        [*cli, "serve", "--config", str(config), "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
    )
    return process, port, folder / "connector.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="per load run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; medians reported")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, default=500, help="fixed rate for the latency run")
    parser.add_argument("--generator", choices=["auto", "wrk", "aiohttp"], default="auto")
    args = parser.parse_args()
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "aiohttp"

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "post.lua"
        body = json.dumps(BODY).replace(BODY["id"], "CONTACT_ID")
        script.write_text(WRK_SCRIPT.replace("BODY", body).replace("TOKEN", TOKEN))
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(bare_port)])
        draining, draining_port, draining_db = start_server(folder / "draining", paused=False)
        receiving, receiving_port, receiving_db = start_server(folder / "receiving", paused=True)
        servers = {"bare": bare_port, "draining": draining_port, "receiving": receiving_port}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        try:
            for port in servers.values():
                wait_for_port(port)
            # Steady traffic first, on a fresh server that delivers as it goes (after a short
            # warm-up: the first requests pay for imports and caches).
            print(f"fixed rate {args.rate:g}/s for {args.seconds} s (target draining)...",
                  flush=True)  # fmt: skip
            load_in_child(f"http://127.0.0.1:{draining_port}", 5, args.connections, args.rate)
            paced = load_in_child(f"http://127.0.0.1:{draining_port}", args.seconds,
                                  args.connections, args.rate)  # fmt: skip
            for round_ in range(1, args.rounds + 1):
                for name, port in servers.items():
                    url = f"http://127.0.0.1:{port}"
                    if generator == "wrk":
                        result = run_wrk(url + "/webhooks/demo/contact-created", args.seconds,
                                         args.connections, script)  # fmt: skip
                    else:
                        result = load_in_child(url, args.seconds, args.connections, None)
                    runs[name].append(result)
                    if name == "draining":  # let it catch up: an idle server for the others
                        _wait_drained(draining_db)
                    print(f"round {round_}: {name:<9} {result['rps']:8.0f} req/s  "
                          f"p99 {result['p99']:.1f} ms", flush=True)  # fmt: skip
        finally:
            for process in (bare, draining, receiving):
                process.terminate()
            for process in (bare, draining, receiving):
                process.wait(60)
        stored = {name: _stored(db) for name, db in (("draining", draining_db),
                                                     ("receiving", receiving_db))}  # fmt: skip

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    accepted = {name: sum(run["requests"] - run["errors"] for run in runs[name]) for name in stored}
    accepted["draining"] += paced["requests"] - paced["errors"]
    lost = sum(max(0, accepted[name] - stored[name]) for name in stored)
    bare_rps = median("bare", "rps")
    figures = {
        "benchmark": "ingest",
        "generator": generator,
        "machine": machine(),
        "connections": args.connections,
        "bare_rps": round(bare_rps),
        "receiving_rps": round(median("receiving", "rps")),
        "receiving_ratio": round(median("receiving", "rps") / bare_rps, 3),
        "receiving_p50_ms": round(median("receiving", "p50"), 2),
        "receiving_p99_ms": round(median("receiving", "p99"), 2),
        "draining_rps": round(median("draining", "rps")),
        "draining_ratio": round(median("draining", "rps") / bare_rps, 3),
        "draining_p99_ms": round(median("draining", "p99"), 2),
        "rate": args.rate,
        "rate_achieved": round(paced["rps"], 1),
        "rate_p50_ms": round(paced["p50"], 2),
        "rate_p99_ms": round(paced["p99"], 2),
        "accepted": int(sum(accepted.values())),
        "lost": lost,
    }
    print()
    print(f"bare aiohttp              {figures['bare_rps']:>7} req/s (median of {args.rounds})")
    print(f"connector, receiving      {figures['receiving_rps']:>7} req/s   ratio "
          f"{figures['receiving_ratio']:.2f} (target >= 0.5)   p50 {figures['receiving_p50_ms']}"
          f" ms  p99 {figures['receiving_p99_ms']} ms")  # fmt: skip
    print(f"connector, also draining  {figures['draining_rps']:>7} req/s   ratio "
          f"{figures['draining_ratio']:.2f}   p99 {figures['draining_p99_ms']} ms")  # fmt: skip
    print(f"at {args.rate:g} req/s: p50 {figures['rate_p50_ms']} ms, p99 {figures['rate_p99_ms']}"
          " ms (target p99 <= 20 ms)")  # fmt: skip
    print(f"{figures['accepted']} webhooks answered 202, {lost} of them missing from the store")
    print(json.dumps(figures))


def _wait_drained(db: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db, timeout=30) as conn:
            if not conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0]:
                return
        time.sleep(0.5)


def _stored(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


if __name__ == "__main__":
    main()
