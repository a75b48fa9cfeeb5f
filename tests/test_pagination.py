"""Signed keyset cursors on their own: bound to their query, typed on the way back in."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from reporting.pagination import (
    PageCursor,
    cursor_after,
    decode_cursor,
    encode_cursor,
    fingerprint,
)
from reporting.report_error import ReportError
from reporting.reports import REPORTS
from reporting.request import FilterClause, ReportRequest, parse_request
from reporting.stored_values import AsStored
from sediment.core.instants import StoredInstant

SECRET = "test-secret"
TYPES = ["datetime", "integer"]  # events: sort column, then key
WHEN = datetime(2025, 5, 1, 12, 30, tzinfo=UTC)


def events(**query: str) -> ReportRequest:
    return parse_request(REPORTS["events"], {k: [v] for k, v in query.items()},
                         default_limit=50, max_limit=1000)


def test_cursor_after_a_row_holds_its_sort_value_then_its_key() -> None:
    row = {"id": 41, "occurred_at": WHEN, "kind": "login"}
    assert cursor_after(row, events()) == PageCursor((WHEN, 41))
    assert cursor_after(row, events(sort="id")) == PageCursor((41, 41))


def test_a_cursor_round_trips_with_its_types() -> None:
    request = events(kind="login")
    token = encode_cursor(request, PageCursor((WHEN, 41)), SECRET)
    assert decode_cursor(request, token, SECRET, TYPES) == PageCursor((WHEN, 41))


@pytest.mark.parametrize("other", [{"kind": "view"}, {"source": "primary"}, {"sort": "id"}])
def test_a_cursor_is_refused_by_another_query(other: dict[str, str]) -> None:
    token = encode_cursor(events(kind="login"), PageCursor((WHEN, 41)), SECRET)
    with pytest.raises(ReportError, match="another report"):
        decode_cursor(events(**{"kind": "login", **other}), token, SECRET, TYPES)


def test_a_cursor_signed_with_another_key_is_refused() -> None:
    token = encode_cursor(events(), PageCursor((WHEN, 41)), "someone-else")
    with pytest.raises(ReportError, match="not one this service issued"):
        decode_cursor(events(), token, SECRET, TYPES)


def test_a_timestamp_sqlite_stores_as_text_comes_back_with_that_text() -> None:
    stored = StoredInstant.of(WHEN, "2025-05-01 12:30:00")
    token = encode_cursor(events(), PageCursor((stored, 41)), SECRET)
    (when, key), = [decode_cursor(events(), token, SECRET, TYPES).values]
    assert (when, key) == (WHEN, 41)
    assert isinstance(when, StoredInstant) and when.stored == "2025-05-01 12:30:00"


@pytest.mark.parametrize("values", [(WHEN, "41"), (WHEN, True), ("yesterday", 41), (WHEN,),
                                    ({"stored": 5}, 41), ({"stored": "nope"}, 41),
                                    ({"stored": "2025-05-01", "more": 1}, 41)])
def test_a_signed_cursor_with_wrong_values_is_malformed(values: tuple[object, ...]) -> None:
    token = encode_cursor(events(), PageCursor(values), SECRET)
    with pytest.raises(ReportError, match="malformed") as caught:
        decode_cursor(events(), token, SECRET, TYPES)
    assert caught.value.param == "cursor"


def test_a_cursor_is_a_compact_token() -> None:
    token = encode_cursor(events(), PageCursor((WHEN, 41)), SECRET)
    assert len(token) < 120 and token.count(".") == 1


@pytest.mark.parametrize("damage", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),     # the tag
    lambda t: ("A" if t[0] != "A" else "B") + t[1:],       # the payload
    lambda t: t.replace(".", ""),                          # no separator
    lambda t: t + "!",                                     # not base64
    lambda t: "",
    lambda t: "." + t.split(".")[1],                        # a tag over nothing
])
def test_a_tampered_or_garbled_cursor_is_refused(damage) -> None:  # type: ignore[no-untyped-def]
    token = encode_cursor(events(), PageCursor((WHEN, 41)), SECRET)
    with pytest.raises(ReportError) as caught:
        decode_cursor(events(), damage(token), SECRET, TYPES)
    assert (caught.value.status, caught.value.code) == (400, "invalid_cursor")


def test_a_key_beyond_64_bits_round_trips_exactly() -> None:
    request = events(sort="id")
    huge = 2**70 + 1
    token = encode_cursor(request, PageCursor((huge, huge)), SECRET)
    assert decode_cursor(request, token, SECRET, ["integer", "integer"]) == \
        PageCursor((huge, huge))


def test_a_value_stored_against_its_type_resumes_as_stored_on_sqlite_only() -> None:
    """SQLite keeps 'n/a' in a DECIMAL column: the cursor after it carries it as stored, and
    only a request that reads SQLite alone accepts that (elsewhere it would reach the
    database as a data error)."""
    request = events(sort="id")
    for stored in ("n/a", 1.5, ""):
        token = encode_cursor(request, PageCursor((stored, 41)), SECRET, ["number", "integer"])
        value, key = decode_cursor(request, token, SECRET, ["number", "integer"],
                                   as_stored=True).values
        assert (value, key) == (AsStored(stored) if stored != 1.5 else 1.5, 41)
        if stored != 1.5:
            with pytest.raises(ReportError, match="malformed"):
                decode_cursor(request, token, SECRET, ["number", "integer"])
    forged = encode_cursor(request, PageCursor(({"as_stored": True}, 41)), SECRET)
    with pytest.raises(ReportError, match="malformed"):
        decode_cursor(request, forged, SECRET, ["number", "integer"], as_stored=True)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _bound_json(request: ReportRequest, **options: Any) -> bytes:
    """What a cursor is bound to, as ``json.dumps`` writes it, keys sorted."""
    report = request.report
    bound = {"report": f"{report.collection}/{report.name}", "params": request.normalised(),
             "sort": request.sort, "desc": request.descending, "source": request.source}
    return json.dumps(bound, sort_keys=True, default=str, **options).encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 0.1, 1e16,
                                   -0.0, None, "caf\u00e9 \u2603 \\ \"", 2**70, -(2**63) - 1])
def test_every_json_value_of_a_cursor_round_trips(value: Any) -> None:
    """orjson writes the payload but for what it would lose (NaN and the infinities become
    ``null``; integers beyond 64 bits are refused): those come back exactly too."""
    request = events(kind="caf\u00e9", sort="id")
    types = ["string" if isinstance(value, str) else "number", "integer"]
    token = encode_cursor(request, PageCursor((value, 41)), SECRET)
    found = decode_cursor(request, token, SECRET, types).values
    assert repr(found) == repr((value, 41))  # NaN, -0.0 and int against float told apart


def test_cursors_are_tagged_with_keyed_blake2b_over_the_compact_payload() -> None:
    """The token, recomputed by hand: a BLAKE2b fingerprint of the query, the payload as
    compact ``json.dumps``, a 128-bit BLAKE2b tag keyed from the secret and the purpose."""
    request = events(kind="login", sort="-id")
    token = encode_cursor(request, PageCursor((WHEN, 41)), SECRET)
    digest = hashlib.blake2b(_bound_json(request, separators=(",", ":")),
                             digest_size=8).hexdigest()
    payload = json.dumps([digest, [WHEN.isoformat(), 41]], separators=(",", ":")).encode()
    key = hmac.new(SECRET.encode(), b"sediment.report-cursor.v3", hashlib.sha256).digest()
    tag = hashlib.blake2b(payload, key=key, digest_size=16).digest()
    assert token == f"{_b64(payload)}.{_b64(tag)}"


def test_a_cursor_issued_under_hmac_sha256_before_the_upgrade_still_resumes() -> None:
    """A client walking pages across the upgrade to BLAKE2 tags holds a ``v2`` cursor
    (SHA-256 fingerprint, HMAC-SHA256 tag): it resumes, and stays bound to its query."""
    request = events(kind="login", sort="-id")
    digest = hashlib.sha256(_bound_json(request)).hexdigest()[:16]
    payload = json.dumps([digest, [WHEN.isoformat(), 41]], separators=(",", ":")).encode()
    key = hmac.new(SECRET.encode(), b"sediment.report-cursor.v2", hashlib.sha256).digest()
    token = f"{_b64(payload)}.{_b64(hmac.digest(key, payload, 'sha256')[:16])}"
    assert decode_cursor(request, token, SECRET, TYPES) == PageCursor((WHEN, 41))
    with pytest.raises(ReportError, match="another report"):
        decode_cursor(events(kind="view", sort="-id"), token, SECRET, TYPES)
    with pytest.raises(ReportError, match="not one this service issued"):
        decode_cursor(request, token, "someone-else", TYPES)


def test_a_fingerprint_beyond_orjson_is_still_canonical() -> None:
    """An integer beyond 64 bits in a filter sends the fingerprint's text to the standard
    library: its keys are sorted there too, so the order filters were given in does not
    make two equal queries two different ones."""
    first, second = FilterClause("id", "gt", 2**70), FilterClause("customer_id", "eq", 7)
    request = events(sort="id")
    one = dataclasses.replace(request, filters=(first, second))
    other = dataclasses.replace(request, filters=(second, first))
    assert fingerprint(one) == fingerprint(other)
