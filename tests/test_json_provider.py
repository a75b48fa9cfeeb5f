"""Responses' JSON through orjson (:mod:`reporting.json_provider`)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import orjson

from reporting.json_provider import dumps_bytes

PAGE = {"rows": [{"id": 1, "at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
                  "day": date(2026, 1, 2), "amount": Decimal("1.50"), "blob": b"\x00\xff",
                  "none": None}], "page": {"has_more": False}}


def test_text_keys_are_written_as_in_the_mode_for_any_key() -> None:
    assert dumps_bytes(PAGE) == (
        b'{"rows":[{"id":1,"at":"2026-01-02T03:04:05.000006Z","day":"2026-01-02",'
        b'"amount":"1.50","blob":"00FF","none":null}],"page":{"has_more":false}}')


def test_keys_other_than_text_are_written_too() -> None:
    """A pivot's columns may be dates or numbers: orjson's default mode refuses such keys,
    and :func:`dumps_bytes` then writes them in the mode that takes any key."""
    wide = {"rows": [{"kind": "login", date(2026, 1, 2): 3, 7: Decimal("2.5")}]}
    assert orjson.loads(dumps_bytes(wide)) == {
        "rows": [{"kind": "login", "2026-01-02": 3, "7": "2.5"}]}
