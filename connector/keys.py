"""A target's key: ``tenant/name``, the one name of a configured target across the store, the
metrics, the logs and the command line. It is built and taken apart here, nowhere else.

A ``NewType`` of ``str`` rather than a class: keys are stored as text and used as JSON object
keys, which orjson takes only as exact ``str``."""

from __future__ import annotations

from typing import NewType

TargetKey = NewType("TargetKey", str)


def target_key(tenant: str, name: str) -> TargetKey:
    return TargetKey(f"{tenant}/{name}")


def split_key(key: str) -> tuple[str, str]:
    """``(tenant, name)`` of a target key."""
    tenant, _, name = key.partition("/")
    return tenant, name
