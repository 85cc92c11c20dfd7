"""A corpus of hostile webhooks: every one gets the right status and a clear JSON error, nothing is
stored, and the server keeps serving.

Two tables: requests an HTTP client can send (``CASES``), and raw bytes on a socket for what no
well-behaved client sends (``RAW``): truncated and stalled bodies, broken chunked encoding,
oversized heads, slowloris. Then the connection limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from connector.config import load_config
from connector.service import Service
from testkit.payloads import CUSTOMER, FAKE_MAPPING, TOKEN, contact, example, write_config

OTHER_TOKEN = "other-token-9876543210"
OTHER_CUSTOMER = "CUST-00000000-0000-4000-8000-0000000000bb"
READ_TIMEOUT = 1.0
MAX_BODY = 1_048_576
SERVER = {
    "host": "127.0.0.1",
    "port": 0,
    "drain_timeout": 5,
    "max_body_bytes": MAX_BODY,
    "read_timeout": READ_TIMEOUT,
}
TENANTS = {
    "demo": {
        "customer_id": CUSTOMER,
        "auth": {"header": "X-Mimeeq-Token", "values": [TOKEN]},
        "targets": {"fake": {"type": "fake", "mapping": FAKE_MAPPING}},
    },
    "other": {
        "customer_id": OTHER_CUSTOMER,
        "auth": {"header": "X-Mimeeq-Token", "values": [OTHER_TOKEN]},
        "targets": {"fake": {"type": "fake", "mapping": FAKE_MAPPING}},
    },
}
AUTH = {"X-Mimeeq-Token": TOKEN, "Content-Type": "application/json"}
CREATED = "/webhooks/demo/contact-created"


def start(tmp_path: Path, **server: Any) -> Service:
    return Service(load_config(write_config(tmp_path, tenants=TENANTS, server=SERVER | server)))


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[Service]:
    service = start(tmp_path)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def stored(service: Service) -> int:
    with sqlite3.connect(service.config.base_dir / "connector.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


async def nothing_stored_and_still_serving(service: Service) -> None:
    assert stored(service) == 0
    assert all(not worker.adapter.pushes for worker in service.workers.values())  # type: ignore[attr-defined]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{service.port}/healthz") as response,
    ):
        assert response.status == 200


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def valid(**changes: Any) -> bytes:
    return dumps(contact(1, **changes))


def without(key: str) -> bytes:
    return dumps({k: v for k, v in contact(1).items() if k != key})


def nested(depth: int) -> bytes:
    """A valid contact with an unknown field ``depth`` arrays deep."""
    return valid()[:-1] + b', "extra": ' + b"[" * depth + b"]" * depth + b"}"


# --- Requests an HTTP client can send ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    words: str  # must appear in the JSON error
    body: bytes = field(default_factory=valid)
    path: str = CREATED
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    method: str = "POST"
    field: str | None = None  # the "field" the answer must name


def auth(**headers: str) -> dict[str, str]:
    return {"Content-Type": "application/json", **headers}


def typed(content_type: str) -> dict[str, str]:
    return {"X-Mimeeq-Token": TOKEN, "Content-Type": content_type}


UNAUTHORIZED = "missing or invalid authentication header"
# fmt: off
CASES = [
    # Authentication: checked first, the same answer whatever is wrong.
    Case("no auth header", 401, UNAUTHORIZED, headers=auth()),
    Case("wrong token", 401, UNAUTHORIZED, headers=auth(**{"X-Mimeeq-Token": "x" * 21})),
    Case("empty token", 401, UNAUTHORIZED, headers=auth(**{"X-Mimeeq-Token": ""})),
    Case("token with a suffix", 401, UNAUTHORIZED, headers=auth(**{"X-Mimeeq-Token": TOKEN + "x"})),
    Case("token prefix", 401, UNAUTHORIZED, headers=auth(**{"X-Mimeeq-Token": TOKEN[:-1]})),
    Case("token in another header", 401, UNAUTHORIZED, headers=auth(Authorization=TOKEN)),
    Case("bearer token", 401, UNAUTHORIZED, headers=auth(Authorization=f"Bearer {TOKEN}")),
    Case(
        "another tenant's token",
        401,
        UNAUTHORIZED,
        headers=auth(**{"X-Mimeeq-Token": OTHER_TOKEN}),
    ),
    Case("unknown tenant", 401, UNAUTHORIZED, path="/webhooks/nobody/contact-created"),
    Case("tenant in capitals", 401, UNAUTHORIZED, path="/webhooks/DEMO/contact-created"),
    Case("auth before the content type", 401, UNAUTHORIZED, headers={"Content-Type": "text/xml"}),
    Case("auth before the size", 401, UNAUTHORIZED, headers=auth(), body=b"x" * (MAX_BODY + 1)),
    # Path segments: traversal, encoded slashes, NUL, very long: never a 5xx.
    Case("traversal in tenant", 401, UNAUTHORIZED, path="/webhooks/..%2F..%2Fetc/contact-created"),
    Case("encoded slash in tenant", 401, UNAUTHORIZED, path="/webhooks/demo%2F/contact-created"),
    Case("NUL in tenant", 401, UNAUTHORIZED, path="/webhooks/demo%00/contact-created"),
    Case("very long tenant", 401, UNAUTHORIZED, path=f"/webhooks/{'a' * 4000}/contact-created"),
    Case("non-ASCII tenant", 401, UNAUTHORIZED, path="/webhooks/d%C3%A9mo/contact-created"),
    Case("unknown event", 404, "unknown event 'contact-merged'",
         path="/webhooks/demo/contact-merged"),
    Case("event in capitals", 404, "unknown event", path="/webhooks/demo/Contact-Created"),
    Case("traversal in event", 404, "unknown event", path="/webhooks/demo/..%2F..%2Fhealthz"),
    Case("NUL in event", 404, "unknown event", path="/webhooks/demo/contact-created%00"),
    Case("very long event", 404, "…", path=f"/webhooks/demo/{'e' * 4000}"),
    Case("extra path segment", 404, "no such route", path=f"{CREATED}/extra"),
    Case("GET on the webhook", 405, "method GET not allowed", method="GET"),
    Case("PUT on the webhook", 405, "method PUT not allowed", method="PUT"),
    # Content types and encodings.
    Case("form body", 415, "'application/x-www-form-urlencoded' is not accepted",
         headers=typed("application/x-www-form-urlencoded")),
    Case("multipart body", 415, "'multipart/form-data' is not accepted",
         headers=typed("multipart/form-data; boundary=x")),
    Case("XML body", 415, "'application/xml' is not accepted", headers=typed("application/xml")),
    Case("HTML body", 415, "'text/html' is not accepted", headers=typed("text/html")),
    Case("JSON in Latin-1", 415, "charset 'iso-8859-1' is not accepted",
         headers=typed("application/json; charset=iso-8859-1")),
    Case("gzip body", 415, "compressed bodies", body=gzip.compress(valid()),
         headers={**AUTH, "Content-Encoding": "gzip"}),
    Case("deflate body", 415, "compressed bodies", headers={**AUTH, "Content-Encoding": "deflate"}),
    # Size.
    Case("body over the limit", 413, f"larger than {MAX_BODY} bytes",
         body=valid(pad="x" * MAX_BODY)),
    # Not JSON, or not an object.
    Case("malformed JSON", 400, "not valid JSON", body=b"{id: 1"),
    Case("truncated JSON", 400, "not valid JSON", body=valid()[:50]),
    Case("empty body", 400, "not valid JSON", body=b""),
    Case("whitespace only", 400, "not valid JSON", body=b"  \r\n\t "),
    Case("JSON array", 400, "must be a JSON object, got an array", body=dumps([contact(1)])),
    Case("JSON string", 400, "must be a JSON object, got a string", body=b'"contact"'),
    Case("JSON null", 400, "must be a JSON object, got null", body=b"null"),
    Case("JSON number", 400, "must be a JSON object, got a number", body=b"12"),
    Case("JSON boolean", 400, "must be a JSON object, got a boolean", body=b"true"),
    Case("NaN", 400, "not valid JSON", body=valid()[:-1] + b', "score": NaN}'),
    Case("Infinity", 400, "not valid JSON", body=valid()[:-1] + b', "score": Infinity}'),
    Case("-Infinity", 400, "not valid JSON", body=valid()[:-1] + b', "score": -Infinity}'),
    Case("number overflowing to infinity", 400, "not valid JSON",
         body=valid()[:-1] + b', "score": 1e999}'),
    Case("invalid UTF-8", 400, "not valid JSON",
         body=valid(firstName="Jo").replace(b"Jo", b"J\xff")),
    Case("overlong UTF-8", 400, "not valid JSON",
         body=valid(firstName="Jo").replace(b"Jo", b"\xc0\xaf")),
    Case("lone surrogate escape", 400, "not valid JSON",
         body=valid(firstName="Jo").replace(b'"Jo"', b'"\\ud800"')),
    Case("UTF-16 body", 400, "not valid JSON", body=json.dumps(contact(1)).encode("utf-16")),
    Case("byte order mark", 400, "not valid JSON", body=b"\xef\xbb\xbf" + valid()),
    Case("trailing garbage", 400, "not valid JSON", body=valid() + b"x"),
    Case("two objects", 400, "not valid JSON", body=valid() + valid()),
    Case("single quotes", 400, "not valid JSON", body=b"{'id': 'CONT-1'}"),
    Case("trailing comma", 400, "not valid JSON", body=valid()[:-1] + b",}"),
    Case("comment", 400, "not valid JSON", body=valid()[:-1] + b"/* x */}"),
    Case("raw control character", 400, "not valid JSON",
         body=valid(firstName="Jo").replace(b"Jo", b"J\x01")),
    Case("nesting past the parser's limit", 400, "not valid JSON", body=nested(5000)),
    Case("deep nesting", 400, "nests deeper than 32 levels", body=nested(40)),
    Case("duplicate key", 400, "duplicate key 'customerId'",
         body=valid()[:-1] + f', "customerId": "{OTHER_CUSTOMER}"}}'.encode()),
    Case("duplicate nested key", 400, "duplicate key 'mail'",
         body=valid().replace(b'"mail": ', b'"mail": "a@b.c", "mail": ')),
    Case("duplicate key written as an escape", 400, "duplicate key 'id'",
         body=b'{"\\u0069d": "CONT-2", ' + valid()[1:]),
    Case("duplicate key, colons in strings", 400, "duplicate key 'firstName'",
         body=valid(lastName="a:b:c")[:-1] + b', "firstName": "x"}'),
    # The payload schema: 422 naming the field.
    Case("missing id", 422, "id: required field is missing", body=without("id"), field="id"),
    Case("id is a number", 422, "id: Input should be a valid string", body=valid(id=12),
         field="id"),
    Case("id is null", 422, "id:", body=valid(id=None), field="id"),
    Case("id is a boolean", 422, "id:", body=valid(id=True), field="id"),
    Case("id is empty", 422, "id:", body=valid(id=""), field="id"),
    Case("id with spaces", 422, "id: String should match pattern", body=valid(id="CONT 1"),
         field="id"),
    Case("id with a newline", 422, "id:", body=valid(id="CONT-1\nX-Injected: 1"), field="id"),
    Case("id not ASCII", 422, "id:", body=valid(id="CONT-é"), field="id"),
    Case("id too long", 422, "at most 200 characters", body=valid(id="C" * 201), field="id"),
    Case("missing customerId", 422, "customerId: required", body=without("customerId"),
         field="customerId"),
    Case("another tenant's customerId", 422, "customerId is not this tenant's",
         body=valid(customerId=OTHER_CUSTOMER), field="customerId"),
    Case("customerId is an object", 422, "customerId:", body=valid(customerId={"id": CUSTOMER}),
         field="customerId"),
    Case("firstName is a number", 422, "firstName:", body=valid(firstName=1), field="firstName"),
    Case("firstName is an object", 422, "firstName:", body=valid(firstName={}), field="firstName"),
    Case("huge string", 422, "firstName: String should have at most 100000 characters",
         body=valid(firstName="x" * 100_001), field="firstName"),
    Case("emails is a string", 422, "emails:", body=valid(emails="a@b.c"), field="emails"),
    Case("emails holds null", 422, "emails.0:", body=valid(emails=[None]), field="emails.0"),
    Case("email without mail", 422, "emails.0.mail: required", body=valid(emails=[{"type": "W"}]),
         field="emails.0.mail"),
    Case("mail is a number", 422, "emails.0.mail:", body=valid(emails=[{"mail": 5}]),
         field="emails.0.mail"),
    Case("phoneNumbers is an object", 422, "phoneNumbers:",
         body=valid(phoneNumbers={"number": "1"}), field="phoneNumbers"),
    Case("addressDetails is a list", 422, "addressDetails:", body=valid(addressDetails=[]),
         field="addressDetails"),
    Case("city is a number", 422, "addressDetails.city:",
         body=valid(addressDetails={"city": 7}), field="addressDetails.city"),
    Case("accountDetails is a string", 422, "accountDetails:", body=valid(accountDetails="boss"),
         field="accountDetails"),
    Case("status is a boolean", 422, "status:", body=valid(status=True), field="status"),
    Case("tags hold numbers", 422, "tags.0:", body=valid(tags=[1, 2]), field="tags.0"),
    Case("tags hold lists", 422, "tags.0:", body=valid(tags=[["a"]]), field="tags.0"),
    Case("a huge array of bad items", 422, "tags.0:", body=valid(tags=[0] * 200_000),
         field="tags.0"),
    Case("deleted without id", 422, "id: required", path="/webhooks/demo/contact-deleted",
         body=dumps({"customerId": CUSTOMER}), field="id"),
    Case("deleted with emails null inside", 422, "emails.0:",
         path="/webhooks/demo/contact-deleted",
         body=dumps({**example("contact-deleted"), "emails": [None]}), field="emails.0"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_hostile_request_is_refused(hostile: Service, case: Case) -> None:
    url = URL(f"http://127.0.0.1:{hostile.port}{case.path}", encoded=True)
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            case.method,
            url,
            data=io.BytesIO(case.body),
            headers=case.headers,
        ) as response,
    ):
        assert response.content_type == "application/json"
        answer = await response.json()
        assert response.status == case.status, answer
    assert case.words in answer["error"]
    assert len(answer["error"]) < 600  # a caller's text is quoted back only in part
    assert answer.get("field") == case.field
    await nothing_stored_and_still_serving(hostile)


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


async def test_a_chunked_body_over_the_limit_is_refused(hostile: Service) -> None:
    """No Content-Length: the limit is counted as the chunks arrive."""
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield valid()[:-1] + b', "pad": "'
        while sent < 3 * MAX_BODY:
            sent += 65536
            yield b"x" * 65536
        yield b'"}'

    url = f"http://127.0.0.1:{hostile.port}{CREATED}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=chunks(), headers=AUTH) as response,
    ):
        assert response.status == 413
        assert f"larger than {MAX_BODY} bytes" in (await response.json())["error"]
    await nothing_stored_and_still_serving(hostile)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (None, valid()),
        ("application/json", valid()),
        ("application/json; charset=UTF-8", valid()),
        ("application/vnd.mimeeq+json", valid()),
        ("text/plain", valid()),
        ("text/plain; charset=utf-8", valid()),
        ("application/octet-stream", valid()),
        # At the limit exactly, and a colon inside strings (the duplicate check's second look).
        ("application/json", valid(pad="x" * (MAX_BODY - len(valid(pad=""))))),
        ("application/json", valid(lastName="Doe: Jr.", tags=["a:b", "http://x"])),
        # The same key in different objects is no duplicate.
        ("application/json", valid(emails=[{"type": "W", "mail": "a@b.c"}] * 3)),
    ],
    ids=[
        "none",
        "json",
        "json-utf8",
        "plus-json",
        "text",
        "text-utf8",
        "octet-stream",
        "exactly-the-limit",
        "colons-in-strings",
        "same-key-in-siblings",
    ],
)
async def test_what_is_accepted(hostile: Service, content_type: str | None, body: bytes) -> None:
    headers = {"X-Mimeeq-Token": TOKEN} | ({"Content-Type": content_type} if content_type else {})
    skip = [] if content_type else ["Content-Type"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{hostile.port}{CREATED}",
            data=io.BytesIO(body),
            headers=headers,
            skip_auto_headers=skip,
        ) as response,
    ):
        assert response.status == 202, await response.text()
    assert stored(hostile) == 1


# --- Raw bytes on a socket --------------------------------------------------------------------

BODY = valid()
HEAD = (
    f"POST {CREATED} HTTP/1.1\r\nHost: connector\r\nX-Mimeeq-Token: {TOKEN}\r\n"
    "Content-Type: application/json\r\n"
).encode()
Step = bytes | float  # bytes to send, or seconds to wait


@dataclass(frozen=True)
class Raw:
    name: str
    steps: tuple[Step | str, ...]  # "eof": half-close the connection
    status: int | None  # None: the connection is closed without an answer
    words: str = ""
    within: float = 5.0  # seconds the answer (or the close) must come within
    at_least: float = 0.0  # ... and not before (a timeout, not an instant refusal)
    also: tuple[int, str] | None = None  # another acceptable (status, words)


def trickle(data: bytes, every: float) -> tuple[Step, ...]:
    """``data`` a few bytes at a time: slowloris."""
    steps: list[Step] = []
    for i in range(0, len(data), 4):
        steps += [data[i : i + 4], every]
    return tuple(steps)


def length(n: int) -> bytes:
    return f"Content-Length: {n}\r\n\r\n".encode()


CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
# fmt: off
RAW = [
    Raw("body shorter than Content-Length, then silence",
        (HEAD + length(len(BODY) + 50) + BODY,), 408, f"within {READ_TIMEOUT:g} s",
        at_least=READ_TIMEOUT * 0.8),
    Raw("body trickling in", (HEAD + length(len(BODY)), *trickle(BODY, 0.2)), 408,
        "did not arrive", at_least=READ_TIMEOUT * 0.8),
    Raw("head trickling in (slowloris)", trickle(HEAD + length(len(BODY)), 0.1), None,
        at_least=READ_TIMEOUT * 0.8),
    Raw("a connection that sends nothing", (), None, at_least=READ_TIMEOUT * 0.8),
    Raw("half a head, then silence", (HEAD,), None, at_least=READ_TIMEOUT * 0.8),
    Raw("invalid chunk size", (CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n",), 400,
        "Invalid character in chunk size"),
    # Broken after the head, in a packet of its own: 400 at once, not the read timeout's 408.
    Raw("invalid chunk after a valid one",
        (CHUNKED + b"5\r\n{\"id\"\r\n", 0.2, b"q\r\n\r\n"), 400, "malformed",
        within=0.2 + READ_TIMEOUT / 2),
    Raw("chunk longer than announced", (CHUNKED + b"2\r\n{}}}}\r\n0\r\n\r\n",), 400, "malformed"),
    Raw("Content-Length and chunked", (HEAD + b"Content-Length: 5\r\n" + CHUNKED[len(HEAD) :]
        + b"0\r\n\r\n",), 400, "Transfer-Encoding"),
    Raw("two Content-Lengths", (HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",),
        400, "Content-Length"),
    Raw("negative Content-Length", (HEAD + b"Content-Length: -1\r\n\r\n",), 400, "malformed"),
    Raw("header too long", (HEAD + b"X-Big: " + b"a" * 9000 + b"\r\n" + length(2) + b"{}",), 431,
        "longer than 8190 bytes"),
    Raw("too many headers",
        (HEAD + b"".join(b"X-H%d: 1\r\n" % i for i in range(100)) + length(2) + b"{}",), 431,
        "more than 64 headers"),
    Raw("request line too long", (b"POST /webhooks/" + b"a" * 9000 + b"/x HTTP/1.1\r\n\r\n",),
        431, "longer than 8190 bytes"),
    Raw("NUL in a header", (HEAD + b"X-Evil: a\x00b\r\n" + length(2) + b"{}",), 400, "malformed"),
    Raw("not HTTP", (b"HELLO THERE\r\n\r\n",), 400, "malformed"),
    Raw("TLS on the plain port",
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,), 400, "HTTPS"),
    Raw("dot segments in the path",
        (HEAD.replace(CREATED.encode(), b"/webhooks/demo/../demo/contact-created") + length(2)
         + b"{}",), 404, "no such route"),
    Raw("body ends early, then the client closes",
        (HEAD + length(len(BODY) + 50) + BODY, "eof"), None),
]
# fmt: on


async def exchange(
    port: int, steps: tuple[Step | str, ...], within: float
) -> tuple[int | None, Any]:
    """Send ``steps`` while reading one answer: (status, JSON body), or (None, None) if the
    connection is closed without one. ``"eof"`` as a step half-closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        for step in steps:
            if step == "eof":
                writer.write_eof()
            elif isinstance(step, float):
                await asyncio.sleep(step)
            else:
                assert isinstance(step, bytes)
                writer.write(step)
                await writer.drain()

    sending = asyncio.create_task(send())
    try:
        async with asyncio.timeout(within):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return None, None
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            body = await reader.readexactly(int(headers["Content-Length"]))
            assert headers["Content-Type"] == "application/json"
            return status, json.loads(body)
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sending
        writer.close()


@pytest.mark.parametrize("case", RAW, ids=[case.name for case in RAW])
async def test_hostile_bytes_are_refused(hostile: Service, case: Raw) -> None:
    started = time.monotonic()
    status, answer = await exchange(hostile.port, case.steps, case.within)
    expected, words = (case.status, case.words) if status != (case.also or (0,))[0] else case.also
    assert status == expected, answer
    if status is not None:
        assert words in answer["error"]
    assert time.monotonic() - started >= case.at_least
    await asyncio.sleep(0.05)  # let the server finish with the connection
    await nothing_stored_and_still_serving(hostile)


async def test_an_endless_chunked_body_is_cut_off_at_the_limit(hostile: Service) -> None:
    """The answer comes while the body is still arriving: it is never read whole into memory."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
    writer.write(CHUNKED + b"%x\r\n%s\r\n" % (len(BODY) - 1, BODY[:-1]))
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"

    async def feed() -> None:
        try:
            while True:  # never ends
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass

    feeding = asyncio.create_task(feed())
    try:
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in head
    finally:
        feeding.cancel()
        writer.close()
    await nothing_stored_and_still_serving(hostile)


# --- The connection limit ---------------------------------------------------------------------


async def test_connections_over_the_limit_get_503(tmp_path: Path) -> None:
    service = start(tmp_path, max_connections=4, read_timeout=5)
    await service.start()
    held = []
    try:
        for _ in range(4):  # four clients in the middle of sending a request
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write(HEAD)
            held.append((reader, writer))
        await asyncio.sleep(0.1)
        status, answer = await exchange(service.port, (HEAD + length(len(BODY)) + BODY,), 5)
        assert status == 503 and "too many connections" in answer["error"]
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        status, answer = await exchange(service.port, (HEAD + length(len(BODY)) + BODY,), 5)
        assert status == 202, answer
    finally:
        for _, writer in held:
            writer.close()
        await service.stop()


async def test_idle_keepalive_connections_make_room(tmp_path: Path) -> None:
    """At the limit, the connection idle for longest is closed rather than a newcomer refused."""
    service = start(tmp_path, max_connections=4)
    await service.start()
    idle = []
    try:
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n")
            await reader.readuntil(b'{"status":"ok"}')
            idle.append((reader, writer))
        status, answer = await exchange(service.port, (HEAD + length(len(BODY)) + BODY,), 5)
        assert status == 202, answer
        async with asyncio.timeout(2):
            assert await idle[0][0].read() == b""  # the oldest idle one was closed
    finally:
        for _, writer in idle:
            writer.close()
        await service.stop()


async def test_idle_keepalive_connections_close_after_the_keepalive_timeout(
    tmp_path: Path,
) -> None:
    service = start(tmp_path, keepalive_timeout=0.5, read_timeout=5)
    await service.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n")
        await reader.readuntil(b'{"status":"ok"}')
        started = time.monotonic()
        async with asyncio.timeout(3):
            assert await reader.read() == b""
        assert time.monotonic() - started >= 0.4
        writer.close()
    finally:
        await service.stop()


async def test_limits_are_configurable(tmp_path: Path) -> None:
    service = start(tmp_path, max_header_bytes=2048, max_headers=20)
    await service.start()
    try:
        status, answer = await exchange(
            service.port, (HEAD + b"X-Big: " + b"a" * 3000 + b"\r\n" + length(2) + b"{}",), 5
        )
        assert status == 431 and "longer than 2048 bytes" in answer["error"]
        many = b"".join(b"X-H%d: 1\r\n" % i for i in range(30))
        status, answer = await exchange(service.port, (HEAD + many + length(2) + b"{}",), 5)
        assert status == 431 and "more than 20 headers" in answer["error"]
    finally:
        await service.stop()


async def test_refusals_are_counted_under_fixed_labels(hostile: Service) -> None:
    url = f"http://127.0.0.1:{hostile.port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}{CREATED}", data=b"x", headers=typed("text/html")) as response:
            assert response.status == 415
        async with http.get(f"{url}/metrics") as response:
            metrics = await response.text()
    assert 'outcome="unsupported"' in metrics


# --- Expect: 100-continue ---------------------------------------------------------------------

EXPECT = b"Expect: 100-continue\r\n"


@pytest.mark.parametrize(
    ("head", "status", "words"),
    [
        (HEAD.replace(TOKEN.encode(), b"wrong-token-0123456789"), 401, UNAUTHORIZED),
        (HEAD.replace(b"contact-created", b"contact-merged"), 404, "unknown event"),
        (HEAD.replace(b"application/json", b"application/xml"), 415, "not accepted"),
        (HEAD + b"Content-Length: 99999999\r\n", 413, "larger than"),
    ],
    ids=["unauthorized", "unknown event", "wrong type", "too large"],
)
async def test_a_refusal_comes_before_the_body_is_sent(
    hostile: Service, head: bytes, status: int, words: str
) -> None:
    """No "100 Continue": the client never uploads a body that would be refused."""
    if b"Content-Length" not in head:
        head += b"Content-Length: 500000\r\n"
    got, answer = await exchange(hostile.port, (head + EXPECT + b"\r\n",), 5)
    assert got == status and words in answer["error"]
    await nothing_stored_and_still_serving(hostile)


async def test_an_unknown_expectation_is_417(hostile: Service) -> None:
    got, answer = await exchange(
        hostile.port, (HEAD + b"Expect: coffee\r\n" + length(len(BODY)) + BODY,), 5
    )
    assert got == 417 and "unknown expectation 'coffee'" in answer["error"]
    await nothing_stored_and_still_serving(hostile)


async def test_a_welcome_body_gets_100_continue(hostile: Service) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
    try:
        writer.write(HEAD + EXPECT + length(len(BODY)))
        async with asyncio.timeout(5):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(BODY)
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 202 ")
    finally:
        writer.close()
    assert stored(hostile) == 1


async def test_an_unexpected_error_is_a_json_500_without_details(
    hostile: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> str | None:
        raise RuntimeError("secret internals: /srv/app/connector.py line 42")

    monkeypatch.setattr(hostile, "readiness_problem", broken)
    status, answer = await exchange(hostile.port, (b"GET /readyz HTTP/1.1\r\nHost: c\r\n\r\n",), 5)
    assert (status, answer) == (500, {"error": "internal error"})
    await nothing_stored_and_still_serving(hostile)
