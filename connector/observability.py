"""Logging: structured events, JSON lines for machines or readable lines for a terminal.

Contacts' e-mail addresses and phone numbers are masked in every log line, whatever field they
end up in, and secrets are never passed to a logger in the first place.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Anything shaped like an address, valid or not: a CRM's "invalid e-mail" message repeats it.
EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@+([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)")
# Seven or more digits, possibly split by spaces, dots, dashes or brackets, optionally with a +.
PHONE = re.compile(r"(?<![\w-])\+?\(?\d(?:[\s().-]*\d){6,}(?![\w-])")


def mask(text: str) -> str:
    """``john.doe@example.com`` → ``j***@example.com``; ``+44 20 7946 0958`` → ``***58``."""
    if "@" in text:
        text = EMAIL.sub(r"\1***@\2", text)
    return PHONE.sub(lambda m: "***" + re.sub(r"\D", "", m.group(0))[-2:], text)


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
    """``fmt``: ``json``, ``console`` or ``auto`` (console on a terminal, JSON otherwise)."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=lambda v, **_: orjson.dumps(v).decode())
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_personal_data,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
