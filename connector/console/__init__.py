"""The operator console: status, dead letters, trace, pause/resume and full re-writes in a
browser, on its own admin listener.

``app`` builds the aiohttp application, ``auth`` holds sign-in, sessions and CSRF, ``pages`` what
the pages show. The webhook app (connector/receiver.py) and this one share no route.
"""

from __future__ import annotations

from connector.console.app import Backend, create_console_app
from connector.console.pages import TargetLive

__all__ = ["Backend", "TargetLive", "create_console_app"]
