"""Every exception the connector raises on purpose, in one place.

Configuration problems stop the process (or ``check``) with the file and key at fault. Delivery
problems are the heart of the project: each one carries the outcome the records get.

    ConnectorError
    ├── ConfigError            a broken config or mapping file (file, key, problem)
    │   └── MappingError       a mapping that does not compile (file, field, problem)
    ├── RecordMappingError     one payload that a compiled mapping could not map (dead letter)
    └── DeliveryError          raised by an adapter for a whole batch
        ├── Undelivered        (connector.adapter) carries an outcome: Retry (outage, 5xx,
        │                      timeout, 429) or Dead (never accepted as it is: dead letter)
        └── TargetPaused       the target refuses everything (bad token, daily limit): pause
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of every error the connector raises deliberately."""


class ConfigError(ConnectorError):
    """A config or mapping problem; ``problems`` has one ``file: key: problem`` line per fault."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class MappingError(ConfigError):
    """A mapping file that does not compile."""

    def __init__(self, source: str, field: str | None, problem: str) -> None:
        self.source, self.field, self.problem = source, field, problem
        where = f"{source}: fields.{field}" if field else source
        super().__init__(f"{where}: {problem}")


class RecordMappingError(ConnectorError):
    """A compiled mapping failed on one payload (for example ``join`` over a non-list value)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"mapping field {field!r}: {problem}")


class DeliveryError(ConnectorError):
    """An adapter could not deliver a batch. Subclasses say what the worker should do.

    ``connector.adapter.Undelivered`` carries the outcome (``Retry`` or ``Dead``) every record of
    the push gets; ``TargetPaused`` stops the target.
    """


class TargetPaused(DeliveryError):
    """The target refuses everything (revoked token, missing scope, daily limit reached).

    Nothing is dead-lettered: claims are released and the worker pauses until ``until`` (a Unix
    time) or, when the target did not say, probes again now and then.
    """

    def __init__(self, message: str, *, until: float | None = None) -> None:
        super().__init__(message)
        self.until = until
