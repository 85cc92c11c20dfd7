"""The ``null`` target: accepts every record and keeps nothing.

For trying a tenant's webhooks out before its CRM is ready, and for measuring the connector
itself (benchmarks) without a target's cost in the way.
"""

from __future__ import annotations

from collections.abc import Sequence

from connector.adapter import Adapter, Record, TargetSettings
from connector.outcomes import Delivered, Outcome


class NullAdapter(Adapter[TargetSettings]):
    type = "null"
    max_batch_size = 1000

    async def push(self, records: Sequence[Record]) -> Sequence[Outcome]:
        return [Delivered() for _ in records]
