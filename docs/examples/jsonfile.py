"""An example target plugin: every contact in one JSON file, keyed by its Mimeeq id.

Short on purpose: it shows what an adapter declares (``type``, a settings model), what it does
(``push``: one outcome per record, in order) and how its tests reuse the conformance suite
(``tests/contract/test_conformance.py``). Register it with an entry point to use it in a config::

    [project.entry-points."mimeeq_connector.adapters"]
    jsonfile = "mypackage.jsonfile:JsonFileAdapter"
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from connector.adapter import Adapter, ConfigPath, Record, TargetContext, TargetSettings
from connector.outcomes import Delivered, Outcome, Retry


class JsonFileSettings(TargetSettings):
    path: ConfigPath  # relative paths resolve against the config file's folder


class JsonFileAdapter(Adapter[JsonFileSettings]):
    type = "jsonfile"
    settings_model = JsonFileSettings
    max_batch_size = 1000

    def __init__(self, settings: JsonFileSettings, context: TargetContext) -> None:
        super().__init__(settings, context)
        self.contacts: dict[str, dict[str, Any]] = {}

    async def open(self) -> None:
        if self.settings.path.exists():
            self.contacts = json.loads(self.settings.path.read_text("utf-8"))

    async def push(self, records: Sequence[Record]) -> Sequence[Outcome]:
        for record in records:
            if record.op == "delete":
                self.contacts.pop(record.contact_id, None)  # unknown: nothing to delete
            else:
                # Whole objects keyed by contact id: writing the same record twice is harmless.
                self.contacts[record.contact_id] = dict(record.fields)
        try:
            # Small files: written in place, no thread left running if the push is cancelled.
            self.settings.path.write_text(json.dumps(self.contacts, indent=1), "utf-8")
        except OSError as exc:
            return [Retry(f"cannot write {self.settings.path}: {exc}") for _ in records]
        return [Delivered(remote_id=r.contact_id) for r in records]
