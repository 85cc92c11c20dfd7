"""A target's key: ``tenant/name``, the one name of a configured target across the store, the
metrics, the logs and the command line. The store keeps it as text, so it is a ``str``; the two
parts are read from it here, never by splitting it elsewhere."""

from __future__ import annotations


class TargetKey(str):
    __slots__ = ()

    @classmethod
    def of(cls, tenant: str, name: str) -> TargetKey:
        return cls(f"{tenant}/{name}")

    @property
    def tenant(self) -> str:
        return self.partition("/")[0]

    @property
    def name(self) -> str:
        return self.partition("/")[2]
