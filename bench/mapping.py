"""Mapping benchmark: records mapped per second with the shipped HubSpot mapping.

Measured in the same run on both JMESPath engines: the closure compiler the mapping uses
(``connector.jmespath_compiler``) and stock jmespath (each field's getter is
``jmespath.compile(expr).search``, everything else in the mapping the same). Both are compared
with a hand-written Python function that produces exactly the same record (checked before
timing), and with plain ``jmespath.search`` on the bare expressions for reference.

    python bench/mapping.py [--records 200000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import jmespath

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the project, not bench/ (hubspot.py)
import connector.mapping
from bench.common import ROOT, machine
from connector.jmespath_compiler import Getter
from connector.mapping import load_mapping


def stock_engine(expression: str) -> Getter:
    """The mapping's getter on stock jmespath: parsed once, interpreted on every call."""
    return jmespath.compile(expression).search


def by_hand(p: dict[str, Any]) -> dict[str, Any]:
    """mappings/hubspot-contacts.yaml, written out in Python."""
    out: dict[str, Any] = {}
    emails = p.get("emails") or []
    work = [e.get("mail") for e in emails if isinstance(e, dict) and e.get("type") == "WORK"]
    email = (work[0] if work else None) or (emails[0].get("mail") if emails else None)
    if isinstance(email, str) and email.strip():
        out["email"] = email.strip().lower()
    for name, key in (("firstname", "firstName"), ("lastname", "lastName")):
        value = p.get(key)
        if isinstance(value, str) and value.strip():
            out[name] = value.strip()
    phones = p.get("phoneNumbers") or []
    work = [n.get("number") for n in phones if n.get("type") == "WORK"]
    landline = [n.get("number") for n in phones if n.get("type") != "MOBILE"]
    mobile = [n.get("number") for n in phones if n.get("type") == "MOBILE"]
    phone = (work[0] if work else None) or (landline[0] if landline else None)
    if isinstance(phone, str) and phone.strip():
        out["phone"] = phone.strip()
    if mobile and isinstance(mobile[0], str) and mobile[0].strip():
        out["mobilephone"] = mobile[0].strip()
    address = p.get("addressDetails") or {}
    for name, key in (("address", "address"), ("city", "city"), ("zip", "zipCode"),
                      ("country", "country")):  # fmt: skip
        value = address.get(key)
        if isinstance(value, str) and value.strip():
            out[name] = value.strip()
    position = (p.get("accountDetails") or {}).get("position")
    if isinstance(position, str) and position.strip():
        out["jobtitle"] = position.strip()
    if p.get("tags"):
        out["mimeeq_tags"] = p["tags"]
    if p.get("status"):
        out["mimeeq_status"] = p["status"]
    return out


def rate(fn: Callable[[dict[str, Any]], Any], payload: dict[str, Any], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn(payload)
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    payload = json.loads((ROOT / "tests" / "data" / "contact-updated.json").read_text())
    mapping = load_mapping("mappings/hubspot-contacts.yaml", ROOT)
    assert mapping.apply(payload) == by_hand(payload), "the two mappings must agree"
    with patch.object(connector.mapping, "compile_expression", stock_engine):
        stock = load_mapping("mappings/hubspot-contacts.yaml", ROOT)
    assert stock.apply(payload) == by_hand(payload), "the stock engine must agree"

    interpreted = {
        name: jmespath.compile(expr)
        for name, expr in {
            "email": "(emails[?type=='WORK'].mail | [0]) || emails[0].mail",
            "firstname": "firstName", "lastname": "lastName",
            "phone": "(phoneNumbers[?type=='WORK'].number | [0])"
                     " || (phoneNumbers[?type!='MOBILE'].number | [0])",
            "mobilephone": "phoneNumbers[?type=='MOBILE'].number | [0]",
            "address": "addressDetails.address", "city": "addressDetails.city",
            "zip": "addressDetails.zipCode", "country": "addressDetails.country",
            "jobtitle": "accountDetails.position", "mimeeq_tags": "tags",
            "mimeeq_status": "status",
        }.items()
    }  # fmt: skip

    def plain_jmespath(p: dict[str, Any]) -> dict[str, Any]:
        return {name: expr.search(p) for name, expr in interpreted.items()}

    n = args.records
    compiled = rate(mapping.apply, payload, n)
    stock_rate = rate(stock.apply, payload, n // 4)
    hand = rate(by_hand, payload, n)
    plain = rate(plain_jmespath, payload, n // 4)
    figures = {
        "benchmark": "mapping",
        "machine": machine(),
        "records": n,
        "mapping_per_s": round(compiled),
        "hand_written_per_s": round(hand),
        "ratio": round(compiled / hand, 3),
        "stock_engine_mapping_per_s": round(stock_rate),
        "compiler_over_stock": round(compiled / stock_rate, 2),
        "plain_jmespath_per_s": round(plain),
    }
    print(f"shipped HubSpot mapping   {figures['mapping_per_s']:>9,} records/s")
    print(f"hand-written function     {figures['hand_written_per_s']:>9,} records/s")
    print(f"ratio                     {figures['ratio']:>9.2f}   (target >= 0.25)")
    print(
        f"same mapping, stock jmespath {figures['stock_engine_mapping_per_s']:>6,} records/s"
        f"   (compiler {figures['compiler_over_stock']:.2f}x faster)"
    )
    print(f"(plain jmespath.search    {figures['plain_jmespath_per_s']:>9,} records/s)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
