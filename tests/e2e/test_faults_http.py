"""Faults on the HTTP side, on the real server process: clear answers, quiet JSON logs, recovery.

The store stops writing (SQLite full, PostgreSQL cut off or refusing), connections flood in over
``max_connections``, a chunked body breaks after its head, requests aiohttp would answer in
plain text: each gets a JSON answer (503 with Retry-After when the event was not stored, never a
500, never a 202 for an event that is not stored), a few log lines each a JSON object, and the
service recovers by itself once the fault is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testkit.payloads import CUSTOMER, ROOT, TOKEN, contact
from testkit.postgres import postgres_schema
from testkit.service import ServerProcess, free_port
from testkit.waiting import DEADLINE, eventually

AUTH = {"X-Mimeeq-Token": TOKEN}
SHEET = "sheet.csv"
STORE_FULL_LINE = "webhooks refused: the store cannot write"


def write_config(folder: Path, store: dict[str, Any], **server: Any) -> Path:
    """Tenant ``demo`` with a CSV target that retries soon and holds claims briefly."""
    sheet = {"type": "csv", "path": SHEET, "mapping": {"fields": {"first": "firstName"}},
             "linger": 0, "push_timeout": 1, "backoff": {"initial": 0.2, "max": 1}}  # fmt: skip
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "drain_timeout": 5, **server},
        "store": store,
        "tenants": {"demo": {"customer_id": CUSTOMER, "auth": {"values": [TOKEN]},
                             "targets": {"sheet": sheet}}},
    }  # fmt: skip
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def log_lines(server_log: Path) -> list[dict[str, Any]]:
    """Every line the process wrote, each of which must be one JSON object."""
    entries = []
    for line in server_log.read_text().splitlines():
        entry = json.loads(line)  # fails the test on a line that is not JSON
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


async def post(
    http: aiohttp.ClientSession, server: ServerProcess, n: int
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(f"{server.url}/webhooks/demo/contact-created", json=contact(n),
                         headers=AUTH) as response:  # fmt: skip
        assert response.content_type == "application/json"
        return response.status, await response.json(), response.headers


def assert_refused(status: int, body: dict[str, Any], headers: Any) -> None:
    """503, JSON, Retry-After: the sender keeps the event and tries again."""
    assert status == 503, body
    assert "not accepted" in body["error"]
    assert int(headers["Retry-After"]) > 0


class Sender:
    """Posts webhooks to one server: which were acknowledged, how many refused (503)."""

    def __init__(self, http: aiohttp.ClientSession, server: ServerProcess) -> None:
        self.http, self.server = http, server
        self.acked: set[str] = set()
        self.refused = 0
        self.statuses: list[int] = []

    async def send(self, n: int) -> int:
        status, body, headers = await post(self.http, self.server, n)
        self.statuses.append(status)
        if status == 202:
            self.acked.add(contact(n)["id"])
        else:
            assert_refused(status, body, headers)
            self.refused += 1
        return status


async def readyz(http: aiohttp.ClientSession, server: ServerProcess) -> tuple[int, Any]:
    async with http.get(f"{server.url}/readyz") as response:
        return response.status, await response.json()


async def events_counted(http: aiohttp.ClientSession, server: ServerProcess, outcome: str) -> float:
    async with http.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mimeeq_connector_events_received_total"
        and sample.labels.get("outcome") == outcome
    )


def sheet_ids(folder: Path) -> set[str]:
    path = folder / SHEET
    if not path.exists():
        return set()
    return {line.split(",", 1)[0] for line in path.read_text().splitlines()[1:]}


# --- SQLite: the disk is full -----------------------------------------------------------------


def fill(db: Path, size_mb: float) -> None:
    """Fill ``db`` up to ``size_mb`` with a ballast table, from a connection of the test's own.

    ``PRAGMA max_page_count`` holds for the connection that sets it: the server's (set from
    ``store.max_size_mb``) and this one share the same cap, so what fills it here is full there.
    """
    with contextlib.closing(sqlite3.connect(db, timeout=30, isolation_level=None)) as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {int(size_mb * 2**20 // page)}")
        conn.execute("CREATE TABLE IF NOT EXISTS ballast (b BLOB)")
        for size in (65536, 4096, 256, 16):
            while True:
                try:
                    conn.execute("INSERT INTO ballast VALUES (zeroblob(?))", (size,))
                except sqlite3.OperationalError as exc:
                    assert "full" in str(exc), exc
                    break


def make_room(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db, timeout=30, isolation_level=None)) as conn:
        conn.execute("DROP TABLE ballast")


async def test_a_full_sqlite_store_answers_503_until_there_is_room_again(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    db = tmp_path / "connector.db"
    server = server_process(write_config(tmp_path, {"url": "sqlite:///connector.db",
                                                    "max_size_mb": 1}))  # fmt: skip
    server.start()
    async with aiohttp.ClientSession() as http:
        sender = Sender(http, server)
        send = sender.send

        for n in range(5):
            assert await send(n) == 202
        await eventually(lambda: sheet_ids(tmp_path) == sender.acked)

        fill(db, 1)
        started = time.monotonic()
        sent = iter(range(100, 100_000))

        async def until_refused() -> bool:
            return await send(next(sent)) == 503

        # Appends may still fit in pages already there for a little while: then it is full.
        await eventually(until_refused)
        for n in range(1000, 1100):  # a hundred more: all refused, and quietly so
            assert await send(n) == 503
        status, ready = await readyz(http, server)
        assert status == 503 and "database or disk is full" in ready["reason"], ready
        assert await events_counted(http, server, "store_unavailable") == sender.refused
        busy_seconds = time.monotonic() - started

        make_room(db)

        async def ready_again() -> bool:
            status, ready = await readyz(http, server)
            assert status == 200, ready
            return True

        await eventually(ready_again)  # by itself: no webhook needed
        for n in range(2000, 2010):
            assert await send(n) == 202
        await eventually(lambda: sheet_ids(tmp_path) == sender.acked, 2 * DEADLINE)
    assert server.stop() == 0

    with contextlib.closing(sqlite3.connect(db)) as conn:
        stored = {row[0] for row in conn.execute("SELECT contact_id FROM events")}
    assert sender.acked <= stored
    entries = log_lines(server.log)
    failures = [e for e in entries if e["event"] == STORE_FULL_LINE]
    assert 1 <= len(failures) <= busy_seconds + 2, failures  # a line a second at most
    assert sum(e["refused"] for e in failures) == sender.refused
    assert all("database or disk is full" in e["error"] for e in failures)
    assert all("exception" not in e for e in failures)  # an expected failure: no traceback
    assert [e["refused"] for e in entries if e["event"] == "the store writes again"] == [
        sender.refused
    ]


# --- Start-up failures: one JSON line, a non-zero exit ------------------------------------------


def serve_once(config_path: Path, port: int) -> tuple[int, list[dict[str, Any]]]:
    """Run ``serve`` until it exits by itself; its exit code and its log lines (all JSON)."""
    log = config_path.parent / "start.log"
    with log.open("wb") as out:
        code = subprocess.run(
            [sys.executable, "-m", "connector", "serve", "--config", str(config_path),
             "--port", str(port), "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, timeout=DEADLINE,
        ).returncode  # fmt: skip
    return code, log_lines(log)


def the_error(entries: list[dict[str, Any]]) -> dict[str, Any]:
    (error,) = [e for e in entries if e["level"] == "error"]
    assert error["event"] == "cannot start"
    assert "exception" not in error  # the problem is named: no traceback needed
    return error


def test_a_store_full_at_start_is_one_json_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"url": "sqlite:///connector.db", "max_size_mb": 1})
    fill(tmp_path / "connector.db", 1)  # no room left for the schema's tables
    code, entries = serve_once(config, free_port())
    assert code == 1
    error = the_error(entries)
    assert "connector.db" in error["error"] and "database or disk is full" in error["error"]


def test_postgres_refusing_at_start_is_one_json_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://connector:s3cret-pw@127.0.0.1:{port}/db"
    code, entries = serve_once(write_config(tmp_path, {"url": url}), free_port())
    assert code == 1
    error = the_error(entries)
    assert f"127.0.0.1:{port}/db" in error["error"] and "refused" in error["error"]
    assert "s3cret-pw" not in json.dumps(entries)


def test_a_port_in_use_is_one_json_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"url": "sqlite:///connector.db"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, entries = serve_once(config, port)
    assert code == 1
    assert (
        the_error(entries)["error"]
        == f"cannot listen on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}"
    )


def test_an_invalid_config_is_one_json_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"url": "sqlite:///connector.db", "retention_days": -1})
    code, entries = serve_once(config, free_port())
    assert code == 1
    assert any("retention_days" in problem for problem in the_error(entries)["problems"])


# --- PostgreSQL: connections cut, then refused --------------------------------------------------


def with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [*urllib.parse.parse_qsl(parts.query), *params.items()]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by 127.0.0.1:``port``."""
    parts = urllib.parse.urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


class Proxy:
    """A TCP proxy to PostgreSQL that can be switched off: its connections are cut and new
    ones refused (nothing listens), until it is switched on again on the same port."""

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()
        await server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._open -= {writer, up_writer}


async def stored_contacts(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {row[0] for row in await conn.fetch("SELECT contact_id FROM events")}
    finally:
        await conn.close()


async def test_postgres_connections_terminated_answer_503_never_500(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    name = f"faults-{secrets.token_hex(4)}"  # the server's connections, and only them
    async with postgres_schema() as url:
        store = {"url": with_query(url, application_name=name)}
        server = server_process(write_config(tmp_path, store))
        server.start()
        admin = await asyncpg.connect(url)
        try:
            async with aiohttp.ClientSession() as http:
                sender = Sender(http, server)
                send = sender.send

                async def terminate() -> None:
                    for _ in range(5):
                        await admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = $1", name)  # fmt: skip
                        await asyncio.sleep(0.05)

                for n in range(5):
                    assert await send(n) == 202
                # Cut every connection, again and again, while webhooks keep coming.
                await asyncio.gather(terminate(), *(send(n) for n in range(100, 200)))
                assert set(sender.statuses) <= {202, 503}

                async def accepted(n: int) -> bool:
                    return await send(n) == 202

                for n in range(300, 310):  # the pool reconnects by itself
                    await eventually(lambda n=n: accepted(n))
        finally:
            await admin.close()
        # A 503 may come for an event stored after all (the connection died before the answer):
        # the sender's redelivery is then a duplicate. A 202 always means stored.
        await eventually(lambda: sender.acked <= sheet_ids(tmp_path), 2 * DEADLINE)
        assert server.stop() == 0
        assert sender.acked <= await stored_contacts(url)
    log_lines(server.log)  # every line JSON, the asyncpg pool's own messages included


async def test_postgres_refusing_connections_answers_503_and_recovers(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    async with postgres_schema() as url:
        proxy = Proxy(url)
        await proxy.start()
        server = server_process(write_config(tmp_path, {"url": via(url, proxy.port)}))
        try:
            await asyncio.to_thread(server.start)  # the proxy needs this loop meanwhile
            async with aiohttp.ClientSession() as http:
                sender = Sender(http, server)
                send = sender.send

                for n in range(5):
                    assert await send(n) == 202
                await proxy.stop()  # connections cut, and nothing listens any more
                for n in range(100, 150):
                    assert await send(n) == 503
                status, ready = await readyz(http, server)
                assert status == 503, ready
                # Metrics are served all the same: the refusals are counted.
                assert await events_counted(http, server, "store_unavailable") == sender.refused

                await proxy.start()

                async def ready_again() -> bool:
                    status, ready = await readyz(http, server)
                    assert status == 200, ready
                    return True

                await eventually(ready_again)
                for n in range(200, 210):
                    assert await send(n) == 202
            await eventually(lambda: sender.acked <= sheet_ids(tmp_path), 2 * DEADLINE)
            assert await asyncio.to_thread(server.stop) == 0
        finally:
            await proxy.stop()
        assert sender.acked <= await stored_contacts(url)
    entries = log_lines(server.log)
    failures = [e for e in entries if e["event"] == STORE_FULL_LINE]
    assert sum(e["refused"] for e in failures) == sender.refused
    assert len(failures) <= 10, failures


# --- Connections over max_connections, on uvloop ------------------------------------------------

HEAD = (
    b"POST /webhooks/demo/contact-created HTTP/1.1\r\nHost: connector\r\n"
    b"X-Mimeeq-Token: " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
)
BODY = json.dumps(contact(1)).encode()
REQUEST = HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


Answer = tuple[int, dict[str, str], Any]  # status, headers, JSON body


async def answer(port: int, *steps: bytes | float, within: float = 10) -> Answer:
    """Send ``steps`` (bytes, or seconds to pause) and read one answer: status, headers, JSON."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(within):
            for step in steps:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    writer.write(step)
                    await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in head[1:] if line)
            body = await reader.readexactly(int(headers["Content-Length"]))
            assert headers["Content-Type"] == "application/json", headers
            return int(head[0].split()[1]), headers, json.loads(body)
    finally:
        writer.close()


async def test_a_connection_flood_gets_503s_and_a_log_line_a_second(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    limit, flood = 8, 1000
    server = server_process(write_config(tmp_path, {"url": "sqlite:///connector.db"},
                                         max_connections=limit, read_timeout=60))  # fmt: skip
    server.start()  # the real server: on uvloop
    held = []
    count = 0  # connections refused
    try:
        for _ in range(limit):  # every slot taken by a request still arriving
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(HEAD)
            held.append(writer)

        async def refused() -> bool:
            nonlocal count
            status, headers, body = await answer(server.port, REQUEST)
            assert status == 503 and "too many connections" in body["error"]
            assert headers["Retry-After"] == "1"
            count += 1
            return True

        await eventually(refused)  # once the held ones are in
        started = time.monotonic()
        for _ in range(flood // 100):
            await asyncio.gather(*(refused() for _ in range(100)))
        seconds = time.monotonic() - started
    finally:
        for writer in held:
            writer.close()

    async def accepted() -> bool:
        nonlocal count
        status, _, body = await answer(server.port, REQUEST)
        if status == 503:  # the held connections are not closed on the server's side yet
            count += 1
        assert status == 202, body
        return True

    await eventually(accepted)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
        metrics = await response.text()
    assert count > flood
    assert f"mimeeq_connector_connections_refused_total {count}.0" in metrics

    def logged() -> list[dict[str, Any]]:
        lines = [e for e in log_lines(server.log) if e["event"].startswith("connections refused")]
        assert sum(e["refused"] for e in lines) == count
        return lines

    lines = await eventually(logged)  # the last count comes at the end of its second
    assert len(lines) <= seconds + 3
    assert server.stop() == 0
    assert all("exception" not in e for e in log_lines(server.log))


# --- Answers aiohttp would give in plain text or late ------------------------------------------


async def test_a_chunked_body_broken_after_its_head_gets_400_at_once(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    server = server_process(write_config(tmp_path, {"url": "sqlite:///connector.db"},
                                         read_timeout=30))  # fmt: skip
    server.start()
    chunked = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    started = time.monotonic()
    status, headers, body = await answer(server.port, chunked + b'5\r\n{"id"\r\n', 0.2,
                                         b"q\r\n\r\n")  # fmt: skip
    assert (status, headers["Connection"]) == (400, "close")
    assert "malformed" in body["error"]
    assert time.monotonic() - started < 5  # not the read timeout's 30 s
    assert server.stop() == 0
    entries = log_lines(server.log)
    assert [e for e in entries if e["level"] != "info"] == []  # no error, no traceback
    assert [e["status"] for e in entries if e["event"] == "webhook refused"] == [400]


@pytest.mark.parametrize(
    "request_head",
    [b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
     b"OPTIONS * HTTP/1.1\r\nHost: connector\r\n\r\n"],
    ids=["CONNECT", "OPTIONS *"],
)  # fmt: skip
async def test_requests_that_are_not_for_a_path_get_json(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess], request_head: bytes
) -> None:
    server = server_process(write_config(tmp_path, {"url": "sqlite:///connector.db"}))
    server.start()
    status, headers, body = await answer(server.port, request_head)
    assert (status, body) == (404, {"error": "no such route"})
    assert headers["Server"] == "mimeeq-connector"
    assert server.stop() == 0


async def test_no_answer_names_python_or_aiohttp(
    tmp_path: Path, server_process: Callable[[Path], ServerProcess]
) -> None:
    server = server_process(write_config(tmp_path, {"url": "sqlite:///connector.db"}))
    server.start()
    answers = [
        await answer(server.port, REQUEST),  # 202
        await answer(server.port, b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n"),
        await answer(server.port, b"GET /nowhere HTTP/1.1\r\nHost: c\r\n\r\n"),
        await answer(server.port, b"HELLO THERE\r\n\r\n"),  # malformed: 400
    ]
    assert [status for status, _, _ in answers] == [202, 200, 404, 400]
    assert all(headers["Server"] == "mimeeq-connector" for _, headers, _ in answers)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
        assert response.headers["Server"] == "mimeeq-connector"
    assert server.stop() == 0


# --- Every line is JSON -----------------------------------------------------------------------

LOGGING_PROBE = """
import asyncio, logging, threading, warnings
from connector.logs import configure_logging, log_loop_exception
from connector.runtime import server_runner

configure_logging("json", "info")

class Broken:
    def fail(self):
        raise RuntimeError("callback failed for jane.doe@example.com")

async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(log_loop_exception)
    for _ in range(200):  # a flood of the same error, each of another object: a line or two
        loop.call_soon(Broken().fail)
    await asyncio.sleep(1.5)  # the count of the ones left out follows within the second

with server_runner() as runner:
    runner.run(main())
logging.getLogger("asyncpg.pool").warning("Failed to restore the pool connection floor; retrying")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("aiohttp.server").exception("Error handling request\\nsecond line")
for _ in range(50):
    logging.getLogger("aiohttp.server").error("the same thing again")
warnings.warn("something is deprecated", DeprecationWarning, stacklevel=1)
thread = threading.Thread(target=lambda: 1 / 0, name="side-thread")
thread.start()
thread.join()
"""


def test_every_line_is_one_json_object_whoever_logs_it() -> None:
    """Foreign records (asyncpg, aiohttp, warnings) and the event loop's errors (uvloop's) are
    JSON lines too, masked like the connector's own, with tracebacks inside, and not a flood."""
    done = subprocess.run([sys.executable, "-W", "always", "-c", LOGGING_PROBE], cwd=ROOT,
                          capture_output=True, text=True, timeout=DEADLINE)  # fmt: skip
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    loop_errors = [e for e in entries if e["event"].startswith("Exception in callback")]
    assert 1 <= len(loop_errors) <= 3
    assert sum(e["occurrences"] for e in loop_errors) == 200
    assert "RuntimeError: callback failed for j***@example.com" in loop_errors[0]["exception"]
    assert "jane.doe" not in done.stderr
    (pool,) = [e for e in entries if e.get("logger") == "asyncpg.pool"]
    assert pool["level"] == "warning"
    (crash,) = [e for e in entries if e["event"].startswith("Error handling request")]
    assert "ZeroDivisionError" in crash["exception"] and crash["logger"] == "aiohttp.server"
    again = [e for e in entries if e["event"] == "the same thing again"]
    assert len(again) == 1  # the same record, 50 times within a second
    assert any("something is deprecated" in e["event"] for e in entries)
    (thread,) = [e for e in entries if e["event"] == "unexpected error in a thread"]
    assert thread["thread"] == "side-thread" and "ZeroDivisionError" in thread["exception"]
