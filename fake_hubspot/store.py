"""The object store: tracked dicts, unique-value indexes and staged write sessions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fake_hubspot.properties import normal

if TYPE_CHECKING:
    from fake_hubspot.server import FakeHubSpot


class Tracked(dict[Any, Any]):
    """A dict that counts its direct edits: one count, ``Tracked.edits``, for all of them.

    The fake keeps its objects in these (the dicts of objects and each object's properties), so a
    test editing them by hand makes every unique-value index stale (rebuilt at its next use). The
    fake's own writes go round the count (``dict.__setitem__(d, ...)``, ``FakeHubSpot._store``)
    and keep the indexes up to date instead. Building one (``Tracked(mapping)``) is no edit.
    """

    __slots__ = ()
    edits = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        Tracked.edits += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        Tracked.edits += 1
        super().__delitem__(key)

    def __ior__(self, other: Any) -> Tracked:  # type: ignore[misc]
        Tracked.edits += 1
        return super().__ior__(other)

    def pop(self, *args: Any) -> Any:
        Tracked.edits += 1
        return super().pop(*args)

    def popitem(self) -> tuple[Any, Any]:
        Tracked.edits += 1
        return super().popitem()

    def clear(self) -> None:
        Tracked.edits += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        Tracked.edits += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        Tracked.edits += 1
        return super().setdefault(key, default)


class UniqueIndex:
    """``normal(value)`` -> id of the object that holds it, for one property of one dict of objects.

    Built in one pass over the objects; when values are shared (only edits by hand or
    ``add_contact`` can do that) the last object in dict order owns the value, as a scan would
    find it. ``fresh`` says whether the objects may have changed since without the index seeing it.
    """

    __slots__ = ("edits", "owners", "prop", "serial", "shared", "size", "source")

    def __init__(self, source: dict[str, dict[str, str]], prop: str, serial: int) -> None:
        self.source = source
        self.prop = prop
        self.owners: dict[str, str] = {}
        self.shared = False  # some value belongs to more than one object
        tracked = isinstance(source, Tracked)
        for oid, props in source.items():
            tracked = tracked and isinstance(props, Tracked)
            key = self.key(props)
            if key is not None:
                self.shared = self.shared or key in self.owners
                self.owners[key] = oid
        self.size = len(source)
        self.edits = Tracked.edits
        # objects put in by hand as plain dicts can change unseen: then trust this index only in
        # the session (request) that built it
        self.serial = None if tracked else serial

    def key(self, props: Mapping[str, str] | None) -> str | None:
        value = props.get(self.prop) if props is not None else None
        return normal(self.prop, value) if value else None

    def fresh(self, source: dict[str, dict[str, str]], serial: int | None) -> bool:
        return (
            self.source is source
            and self.size == len(source)
            and self.edits == Tracked.edits
            and self.serial in (None, serial)
        )

    def holds(self, oid: str, key: str) -> bool:
        """Whether object ``oid`` (still) has the value: a check of a hit against the object."""
        return self.key(self.source.get(oid)) == key

    def change(
        self, oid: str, old: Mapping[str, str] | None, new: Mapping[str, str] | None
    ) -> bool:
        """Follow object ``oid`` going from ``old`` to ``new`` (None: absent); a new object goes
        last in dict order. False when the index cannot follow (shared values): drop it."""
        before, after = self.key(old), self.key(new)
        if before == after:
            return True
        if before is not None and self.owners.get(before) == oid:
            if self.shared:  # another object may hold the value too
                return False
            del self.owners[before]
        if after is not None:
            holder = self.owners.get(after)
            if holder is not None and holder != oid:
                if old is not None:  # which one owns it depends on where each one is
                    return False
                self.shared = True  # the new object comes last: it owns the value
            self.owners[after] = oid
        return True


class Session:
    """The objects of one dict of ``FakeHubSpot`` (``contacts``, ``archived``, ...) as one request
    sees and changes them.

    Changes are staged and reach the live dict only on ``commit``, so a batch that fails whole
    (409, 400) changes nothing. Lookups by unique value go to the fake's persistent indexes (kept
    up to date by ``commit``), with the staged objects laid over them: staged changes are seen
    by this session only, and by the shared indexes only once committed.
    """

    def __init__(self, fake: FakeHubSpot, kind: str) -> None:
        self.fake = fake
        self.kind = kind
        self.live: dict[str, dict[str, str]] = getattr(fake, kind)
        self.serial = next(fake._serials)
        self.staged: dict[str, dict[str, str]] = {}
        self._staged_owners: dict[str, dict[str, str]] = {}  # prop -> normal(value) -> id

    def get(self, oid: str) -> dict[str, str] | None:
        return self.staged[oid] if oid in self.staged else self.live.get(oid)

    def owner(self, prop: str, value: str) -> str | None:
        """The id of the object whose ``prop`` is ``value`` (emails compare case-insensitively)."""
        if not value:
            return None
        if prop == "hs_object_id":
            return value if self.get(value) is not None else None
        key = normal(prop, value)
        oid = self._staged_index(prop).get(key)
        if oid is not None:
            return oid
        oid = self.fake._owner(self.kind, prop, key, self.serial)
        if oid is not None and oid in self.staged:
            return None  # its staged version has another value (or the staged index had it)
        return oid

    def _staged_index(self, prop: str) -> dict[str, str]:
        index = self._staged_owners.get(prop)
        if index is None:
            index = self._staged_owners[prop] = {}
            for oid, props in self.staged.items():
                if props.get(prop):
                    index[normal(prop, props[prop])] = oid
        return index

    def put(self, oid: str, props: dict[str, str]) -> None:
        old = self.staged.get(oid) or {}
        for prop, index in self._staged_owners.items():
            if old.get(prop) and index.get(normal(prop, old[prop])) == oid:
                del index[normal(prop, old[prop])]
            if props.get(prop):
                index[normal(prop, props[prop])] = oid
        self.staged[oid] = props

    def commit(self) -> None:
        changes = {oid: Tracked(props) for oid, props in self.staged.items()}
        self.fake._store(self.kind, changes, self.serial)
        self.staged.clear()
        self._staged_owners.clear()


@dataclass
class Input:
    """One object to write, whatever the endpoint."""

    ref: str | None  # what a 207 error names in context.ids (creates name no id)
    props: dict[str, str]  # the given values, "" clears
    id_prop: str | None = None  # find the object by this property's value (or hs_object_id) ...
    id_value: str = ""
    may_create: bool = True  # ... and create it when there is none
    trace: str | None = None  # objectWriteTraceId
    associations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Written:
    oid: str
    shown: dict[str, str]  # the properties the answer shows
    new: bool
    trace: str | None
    associations: list[dict[str, Any]] = field(default_factory=list)


# --- the fake -------------------------------------------------------------------------------------
