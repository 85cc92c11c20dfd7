"""Backlog benchmark: a million pending events in the SQLite store.

A real server process accepts 1,000,000 webhooks (each a new contact) while its only target, a
``null`` target that accepts everything, is paused by an operator; then the target is resumed and
the server drains the backlog. Reports the server's peak resident memory while accepting and
while draining (target <= 200 MB each) and the events drained per second.

    python bench/backlog.py [--events 1000000]

Uses ``wrk`` to post when it is installed, else a pool of aiohttp clients in a child process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bench/ (hubspot.py)
from bench.common import ROOT, free_port, machine, wait_for_port
from bench.ingest import BODY, TOKEN, WRK_SCRIPT, write_config

CLI = [sys.executable, "-m", "connector"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """Samples a process's resident memory in the background; ``peak`` since the last reset."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return

    def reset(self) -> float:
        peak, self.peak = self.peak, 0.0
        return peak

    def stop(self) -> None:
        self._stop.set()


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return int(conn.execute(sql).fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_config(folder)
        db = folder / "connector.db"
        target = ["--config", str(config), "--tenant", "demo", "--target", "sink"]
        subprocess.run([*CLI, "pause", *target, "--reason", "benchmark"], check=True,
                       capture_output=True, cwd=ROOT)  # fmt: skip
        port = free_port()
        server = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--port", str(port), "--log-level",
             "warning"], cwd=ROOT,
        )  # fmt: skip
        wait_for_port(port)
        memory = PeakMemory(server.pid)
        idle = rss_mb(server.pid)
        print(f"server up ({idle:.0f} MB); accepting {args.events:,} webhooks...", flush=True)
        load = _start_load(folder, port, args.connections)
        started = time.monotonic()
        try:
            while (stored := count(db, "SELECT COALESCE(MAX(seq), 0) FROM events")) < args.events:
                time.sleep(2)
                print(f"  {stored:>9,} stored  {time.monotonic() - started:6.0f} s  "
                      f"{rss_mb(server.pid):5.0f} MB", flush=True)  # fmt: skip
        finally:
            load.terminate()
            load.wait()
        accepting_seconds = time.monotonic() - started
        time.sleep(1)
        stored = count(db, "SELECT COALESCE(MAX(seq), 0) FROM events")
        accepting_peak = memory.reset()
        pending = count(db, "SELECT SUM(events) FROM queue")
        print(f"{stored:,} stored, {pending:,} pending; draining...", flush=True)

        subprocess.run([*CLI, "resume", *target], check=True, capture_output=True, cwd=ROOT)
        started = time.monotonic()
        while (left := count(db, "SELECT COUNT(*) FROM queue")) > 0:
            time.sleep(1)
            print(f"  {left:>9,} left  {time.monotonic() - started:6.0f} s  "
                  f"{rss_mb(server.pid):5.0f} MB", flush=True)  # fmt: skip
        # The workers notice a resume within 2 s: that wait is not drain time.
        draining_seconds = max(time.monotonic() - started - 1.0, 0.001)
        draining_peak = memory.reset()
        memory.stop()
        server.terminate()
        server.wait(60)
        size = sum(f.stat().st_size for f in folder.glob("connector.db*")) / 2**20

    figures = {
        "benchmark": "backlog",
        "machine": machine(),
        "events": stored,
        "accept_per_s": round(stored / accepting_seconds),
        "accepting_peak_rss_mb": round(accepting_peak, 1),
        "draining_peak_rss_mb": round(draining_peak, 1),
        "drain_per_s": round(pending / draining_seconds),
        "database_mb": round(size),
    }
    print()
    print(f"peak RSS while accepting {figures['accepting_peak_rss_mb']} MB, while draining "
          f"{figures['draining_peak_rss_mb']} MB (target <= 200 MB)")  # fmt: skip
    print(
        f"drained {pending:,} events at {figures['drain_per_s']:,}/s to a null target; "
        f"accepted at {figures['accept_per_s']:,}/s; database {figures['database_mb']} MB"
    )
    print(json.dumps(figures))


def _start_load(folder: Path, port: int, connections: int) -> subprocess.Popen[bytes]:
    url = f"http://127.0.0.1:{port}/webhooks/demo/contact-created"
    if shutil.which("wrk"):
        script = folder / "post.lua"
        body = json.dumps(BODY).replace(BODY["id"], "CONTACT_ID")
        script.write_text(WRK_SCRIPT.replace("BODY", body).replace("TOKEN", TOKEN))
        return subprocess.Popen(
            ["wrk", "-t2", f"-c{connections}", "-d3600s", "-s", str(script), url],
            stdout=subprocess.DEVNULL,
        )
    base = url.rsplit("/webhooks", 1)[0]
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from bench import ingest
        asyncio.run(ingest.client_load({base!r}, 3600, {connections}, None))
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
