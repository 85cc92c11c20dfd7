"""Sign-in with the admin token, sessions kept in memory, and CSRF tokens.

Sessions live in this process only: a restart signs everyone out, which is acceptable for an
operator console (and there is nothing to leak from a disk).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from connector.logs import Throttled, get_logger

log = get_logger("connector.console")

SESSION_COOKIE = "connector_console"
SESSION_SECONDS = 8 * 3600.0  # a working day; then sign in again
MAX_SESSIONS = 1000  # only the token holder can open one: a bound, not a defence

# Compared against itself when nothing was sent, so that an empty token costs a comparison too.
_DUMMY = secrets.token_bytes(32)


def token_matches(sent: str, expected: str) -> bool:
    """Constant-time check of a sign-in token (as ``connector.receiver.authorized`` does)."""
    given = sent.encode("utf-8", "surrogateescape")
    if not given:
        hmac.compare_digest(_DUMMY, _DUMMY)
        return False
    return hmac.compare_digest(given, expected.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str  # the hidden `csrf` field every POST of this session must carry
    expires: float  # time.monotonic()


class Sessions:
    """Session ids (random, from ``secrets``) to their CSRF token and expiry."""

    def __init__(self, lifetime: float = SESSION_SECONDS) -> None:
        self.lifetime = lifetime
        self._sessions: dict[str, Session] = {}

    def open(self) -> tuple[str, Session]:
        now = time.monotonic()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        if len(self._sessions) >= MAX_SESSIONS:  # the oldest make room
            oldest = sorted(self._sessions, key=lambda k: self._sessions[k].expires)
            for key in oldest[: len(oldest) - MAX_SESSIONS + 1]:
                del self._sessions[key]
        sid = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=now + self.lifetime)
        self._sessions[sid] = session
        return sid, session

    def find(self, sid: str | None) -> Session | None:
        if not sid or (session := self._sessions.get(sid)) is None:
            return None
        if session.expires <= time.monotonic():
            del self._sessions[sid]
            return None
        return session

    def close(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)


def csrf_matches(session: Session, sent: str) -> bool:
    return hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), session.csrf.encode())


def _log_refusal(kind: str, occurrences: int, fields: dict[str, object]) -> None:
    log.warning("console sign-in refused (401)", reason=kind, occurrences=occurrences, **fields)


def sign_in_refusals() -> Throttled:
    """Refused sign-ins, logged like refused webhooks: a line per kind at most every 10 s, with
    how many it stands for, never the value."""
    return Throttled(_log_refusal, 10.0)
