"""The ``mimeeq-connector`` command line."""

from __future__ import annotations

from connector.cli import init, online, repair, service  # noqa: F401 - they register their commands
from connector.cli.base import main

__all__ = ["main"]
