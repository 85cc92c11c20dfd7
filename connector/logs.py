"""Logging: structured events, JSON lines for machines or readable lines for a terminal.

Contacts' e-mail addresses and phone numbers are masked in every log line, whatever field they
end up in, and secrets are never passed to a logger in the first place.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import Any

import orjson
import structlog

# Anything shaped like an address, valid or not: a CRM's "invalid e-mail" message repeats it. The
# local part is letters of any script (with their combining marks), digits and punctuation, or a
# quoted string ("john doe"); the domain may be internationalised. A long line costs linear time,
# never quadratic: a local part starts only where a run of its characters starts and is never
# given back (possessive), quoted ones and domains are bounded.
_NOT_LOCAL = r"\s@\"<>()\[\],;:\\/="
EMAIL = re.compile(
    rf"(?:\"(?P<quoted>[^\"\r\n]{{1,256}}+)\""
    rf"|(?<![^{_NOT_LOCAL}])(?P<local>[^{_NOT_LOCAL}]++))@+"
    rf"(?P<domain>[^{_NOT_LOCAL}.]{{1,63}}(?:\.[^{_NOT_LOCAL}.]{{1,63}}){{0,20}})"
)
# Seven to twenty-one digits, possibly split by spaces, dots, dashes, slashes or brackets,
# optionally with a +. Not inside an identifier (CONT-c1496051-…, a ULID) nor a fraction, but
# right after a label such as ``tel``/``phone`` even when nothing separates them.
PHONE = re.compile(
    r"(?P<label>\b(?:telephone|telefon|phone|mobile|mob|cell|fax|tel|tlf|ph)\.?)?"
    r"(?(label)|(?<![\w-])(?<!\d[.,]))"
    r"(?P<number>\(?\+?\(?\d(?:[\s()./-]{0,3}\d){6,20})(?![\w-])",
    re.IGNORECASE,
)
# Digits a phone number's shape also fits, kept readable: a decimal number (a duration, an epoch
# time), an IPv4 address, a UUID of digits only.
_NOT_A_PHONE = re.compile(
    r"\d+\.\d+|\d{1,3}(?:\.\d{1,3}){3}|\d{8}-\d{4}-\d{4}-\d{4}-\d{12}", re.ASCII
)
# A date (2024-05-01, 01/05/2024, 01.05.2024) at the start of a match: the time or whatever
# follows it is looked at on its own.
_DATE = re.compile(r"\d{4}([-./])\d\d?\1\d\d?|\d\d?([-./])\d\d?\2\d{4}", re.ASCII)


def _email(match: re.Match[str]) -> str:
    local = match["quoted"] or match["local"]
    # Quotes around an address in a message ('john@…') are kept, and its first letter shown.
    shown = len(local) - len(local.lstrip("'`")) + 1
    return f"{local[:shown]}***@{match['domain']}"


def _phone(match: re.Match[str]) -> str:
    label, number = match["label"] or "", match["number"]
    if _NOT_A_PHONE.fullmatch(number):
        return match.group(0)
    if date := _DATE.match(number):
        return label + date.group(0) + PHONE.sub(_phone, number[date.end() :])
    return label + "***" + re.sub(r"\D", "", number)[-2:]


def mask(text: str) -> str:
    """``john.doe@example.com`` → ``j***@example.com``; ``+44 20 7946 0958`` → ``***58``."""
    if "@" in text:
        text = EMAIL.sub(_email, text)
    return PHONE.sub(_phone, text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


def mask_personal_data(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if key not in ("timestamp", "level", "logger"):
            event_dict[key] = _mask_value(value)
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """``fmt``: ``json``, ``console`` or ``auto`` (console on a terminal, JSON otherwise).

    Everything the process logs goes through the same processors and renderer, so with ``json``
    every line on stderr is one JSON object: the connector's own events, and the standard
    library's records (asyncpg, aiohttp, asyncio, warnings), masked alike. A traceback is a field
    of its line (``exception``), never lines of its own.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(
            serializer=lambda v, **_: orjson.dumps(v, default=repr).decode()
        )
        # The console renderer prints exceptions itself (over several lines: it is for people).
        exceptions: list[Any] = [structlog.processors.format_exc_info]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        exceptions = []
    threshold = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *exceptions,
            mask_personal_data,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Other libraries log through the standard library: the same chain renders their records.
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER)
    handler.addFilter(_Repeats())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.stdlib.ExtraAdder(allow=("repeated",)),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exceptions,
                mask_personal_data,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(threshold, logging.INFO))  # libraries' debug chatter is not ours
    logging.captureWarnings(True)  # warnings too, instead of raw lines on stderr
    # And what nobody caught, instead of Python's own traceback printout.
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    get_logger("connector").critical("unexpected error", exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    thread = args.thread.name if args.thread is not None else None
    get_logger("connector").error("unexpected error in a thread", thread=thread, exc_info=exc_info)


_HANDLER = "mimeeq-connector"


class _Repeats(logging.Filter):
    """The same record (logger, message, level) at most once a second: a library that fails
    the same way on every request must not flood the log. The next line says how many were
    left out (``repeated``)."""

    every = 1.0
    remembered = 1000  # kinds of record at most; then forgotten all at once

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, object, int], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg, record.levelno)
        now = time.monotonic()
        last, left_out = self._seen.get(key, (-self.every, 0))
        if now - last < self.every:
            self._seen[key] = (last, left_out + 1)
            return False
        if len(self._seen) >= self.remembered:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if left_out:
            record.repeated = left_out
        return True


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class Throttled:
    """A recurring problem, logged at most once per ``every`` seconds per kind.

    The first occurrence of a kind is logged at once; later ones within ``every`` are counted,
    and one line with the count follows when the interval ends (``occurrences``: how many since
    the previous line). A burst of a thousand failures is a line or two, never a thousand.
    """

    def __init__(self, emit: Callable[[str, int, dict[str, Any]], None], every: float = 1.0):
        self._emit = emit
        self.every = every
        self._last: dict[str, float] = {}
        self._pending: dict[str, tuple[int, dict[str, Any]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def __call__(self, kind: str, **fields: Any) -> None:
        now = time.monotonic()
        if len(self._last) > 1000:  # kinds seen: bounded, whatever callers make of them
            self._last = {k: t for k, t in self._last.items() if now - t < self.every}
        if now - self._last.get(kind, -self.every) >= self.every and kind not in self._timers:
            self._last[kind] = now
            self._emit(kind, 1, fields)
            return
        count, _ = self._pending.get(kind, (0, fields))
        self._pending[kind] = (count + 1, fields)
        if kind not in self._timers:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a thread): the next occurrence reports the count
                return
            delay = max(self._last.get(kind, now) + self.every - now, 0.0)
            self._timers[kind] = loop.call_later(delay, self._flush, kind)

    def _flush(self, kind: str) -> None:
        self._timers.pop(kind, None)
        count, fields = self._pending.pop(kind, (0, {}))
        if count:
            self._last[kind] = time.monotonic()
            self._emit(kind, count, fields)

    def flush(self) -> None:
        """Log what is still counted (at shutdown, or when the problem is over)."""
        for kind in list(self._timers):
            self._timers[kind].cancel()
            self._flush(kind)


_loop_log = get_logger("connector.loop")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _loop_error(kind: str, occurrences: int, fields: dict[str, Any]) -> None:
    _loop_log.error(kind, occurrences=occurrences, **fields)


_loop_errors = Throttled(_loop_error)


def log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: one JSON line, at most one a second per kind.

    Whatever the loop could not hand to anyone (a callback's error, a task nobody awaited, a
    transport's failure) is logged here, through structlog, instead of asyncio's or uvloop's
    plain-text lines.
    """
    exc = context.get("exception")
    message = str(context.get("message") or "unexpected error in the event loop")
    message = _ADDRESS.sub("", message)  # the same error of another object is the same kind
    kind = f"{message} ({type(exc).__name__})" if isinstance(exc, BaseException) else message
    fields: dict[str, Any] = {}
    for key in ("task", "future", "handle", "protocol", "transport"):
        if key in context:
            fields[key] = repr(context[key])[:300]
    if isinstance(exc, BaseException):
        fields["exc_info"] = exc
    _loop_errors(kind, **fields)
