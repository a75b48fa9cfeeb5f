"""Keyset pagination: opaque signed cursors and the conditions that resume after them.

A cursor carries the last row's sort value and key, and is bound to the report, its
parameters and filters, the sort and the source: a cursor from another query, or one
edited by hand, is refused with ``invalid_cursor``. Resuming is a row comparison on an
index (``(sort, key) > (last_sort, last_key)``), so page 10,000 costs what page 1 costs.

The token is ``base64url(payload).base64url(tag)``: the payload the compact JSON array
``[fingerprint, values]`` (written by orjson where it loses nothing), the tag a 128-bit
keyed BLAKE2b of it, under a key derived from ``service.secret_key`` and a purpose string
(so no other signature of the service verifies as a cursor). Keyed BLAKE2 is a MAC in its
own right (RFC 7693), as HMAC is for SHA-256.

Why BLAKE2 and not HMAC-SHA256: Python's ``hashlib`` computes BLAKE2 itself, and SHA-256
and HMAC through OpenSSL. In a loop the two cost the same microsecond, but inside a served
request each OpenSSL call cost far more: with the fingerprint and the tag both moved to
BLAKE2, report pages served 6-7% more requests a second (``bench/report_bench.py``'s
server, alternating rounds), as much as leaving both out altogether. Cursors issued under
HMAC-SHA256 (the ``v2`` scheme) are still accepted, so a client walking pages across an
upgrade of the service goes on where it was.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, CollationClause

from reporting.infinities import InfiniteDate, InfiniteDatetime, infinity
from reporting.report_error import ReportError
from reporting.request import ReportRequest
from reporting.stored_values import AsStored
from sediment.core.instants import StoredInstant, read_stored_instant

_PURPOSE = b"sediment.report-cursor.v3"
#: The HMAC-SHA256 scheme cursors were issued under before v3: still read, never written.
_PURPOSE_V2 = b"sediment.report-cursor.v2"
_TAG_BYTES = 16
#: The standard library's JSON, for what orjson cannot write (see :func:`_compact_json`)
#: and for ``v2`` fingerprints; made once (``json.dumps`` with arguments builds one per call).
_FINGERPRINT_V2_JSON = json.JSONEncoder(sort_keys=True, default=str)
_FINGERPRINT_JSON = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":"))
_PAYLOAD_JSON = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True)
class PageCursor:
    """Where the next page starts: the last row's sort value followed by its key values."""

    values: tuple[Any, ...]


def cursor_after(row: Mapping[str, Any], request: ReportRequest) -> PageCursor:
    """The cursor of the page that follows ``row``: its sort value, then its key values."""
    return PageCursor(tuple(row[column] for column in request.order))


def fingerprint(request: ReportRequest) -> str:
    """A digest of everything a cursor is bound to (a report and a table of the same name
    are two different things), as canonical JSON: keys sorted, compact."""
    bound = _bound(request)
    try:
        text = orjson.dumps(bound, default=str, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        text = _FINGERPRINT_JSON.encode(bound).encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def _fingerprint_v2(request: ReportRequest) -> str:
    """:func:`fingerprint` as the ``v2`` scheme computed it."""
    return hashlib.sha256(_FINGERPRINT_V2_JSON.encode(_bound(request)).encode()).hexdigest()[:16]


def _bound(request: ReportRequest) -> dict[str, Any]:
    """Everything a cursor is bound to."""
    report = request.report
    return {"report": f"{report.collection}/{report.name}", "params": request.normalised(),
            "sort": request.sort, "desc": request.descending, "source": request.source}


@functools.lru_cache(maxsize=16)
def _signing_key(secret: str, purpose: bytes = _PURPOSE) -> bytes:
    """The cursors' own key, derived from the service's secret."""
    return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()


def _tag(secret: str, payload: bytes) -> bytes:
    return hashlib.blake2b(payload, key=_signing_key(secret), digest_size=_TAG_BYTES).digest()


def _tag_v2(secret: str, payload: bytes) -> bytes:
    """:func:`_tag` as the ``v2`` scheme computed it: HMAC-SHA256, cut to 16 bytes."""
    return hmac.digest(_signing_key(secret, _PURPOSE_V2), payload, "sha256")[:_TAG_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_cursor(request: ReportRequest, cursor: PageCursor, secret: str,
                  types: Sequence[str] = ()) -> str:
    """``cursor`` as a signed token for ``request``.

    :param types: for a request that reads SQLite alone, the declared types of the
        cursor's columns (see :func:`decode_cursor`): a value that is not of its column's
        type (SQLite keeps ``'n/a'`` in a ``DECIMAL`` column) is written as stored, for
        :func:`decode_cursor` to read back as :class:`AsStored`. Empty elsewhere: values
        are then never checked.
    """
    values = [_encoded(value) for value in cursor.values]
    for index, (value, type_name) in enumerate(zip(cursor.values, types, strict=False)):
        if isinstance(value, str | int | float) and not _is_of(values[index], type_name):
            values[index] = {"as_stored": value}
    return signed([fingerprint(request), values], secret)


def _is_of(value: Any, type_name: str) -> bool:
    try:
        _typed(value, type_name, as_stored=False)
    except (TypeError, ValueError, ArithmeticError):
        return False
    return True


def signed(data: Any, secret: str) -> str:
    """``data`` as a signed token (a cursor's wire form; :func:`_verified` reads it)."""
    payload = _compact_json(data)
    return f"{_b64(payload)}.{_b64(_tag(secret, payload))}"


def _compact_json(data: Any) -> bytes:
    """``data`` as compact JSON, which :func:`json.loads` reads back exactly.

    orjson writes it in a fraction of the standard library's time (whose encoder is built
    anew on every call: 2-3% of a served page, measured). But orjson refuses integers beyond
    64 bits (numeric keys) and writes NaN and the infinities as ``null``: for those, and so
    for any payload holding a ``null``, the standard library writes it.
    """
    try:
        payload = orjson.dumps(data)
    except orjson.JSONEncodeError:
        return _PAYLOAD_JSON.encode(data).encode()
    return payload if b"null" not in payload else _PAYLOAD_JSON.encode(data).encode()


def _verified(token: str, secret: str) -> tuple[Any, Callable[[ReportRequest], str]]:
    """The payload of a token this service signed, and the fingerprint of its scheme.

    :raises ValueError: for anything else (a bad tag, bad base64, not JSON).
    """
    body, dot, tag = token.partition(".")
    if not dot:
        raise ValueError(token)
    try:
        payload, signature = _unb64(body), _unb64(tag)
    except (binascii.Error, ValueError):
        raise ValueError(token) from None
    if hmac.compare_digest(signature, _tag(secret, payload)):
        return json.loads(payload), fingerprint
    if hmac.compare_digest(signature, _tag_v2(secret, payload)):  # issued before v3
        return json.loads(payload), _fingerprint_v2
    raise ValueError(token)


def _encoded(value: Any) -> Any:
    """A cursor value as JSON: timestamps, dates, UUIDs and decimals as text (a timestamp
    SQLite stores as text, as that text: see :class:`StoredInstant`; PostgreSQL's
    infinities as their sign: see :mod:`reporting.infinities`)."""
    if isinstance(value, StoredInstant):
        return {"stored": value.stored}
    if isinstance(value, InfiniteDatetime | InfiniteDate):
        return {"infinity": value.sign}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    return value


def decode_cursor(request: ReportRequest, token: str, secret: str,
                  types: Sequence[str], *, as_stored: bool = False) -> PageCursor:
    """Verify and decode ``token`` for ``request``.

    :param types: the declared types of the sort column and key columns, in order.
    :param as_stored: the request reads SQLite only, where a value may be kept against its
        column's type: such a value is accepted as :class:`AsStored`. Elsewhere it is
        refused, as any value of the wrong type is.
    :raises ReportError: 400 ``invalid_cursor`` when tampered, foreign or malformed.
    """
    try:
        payload, fingerprint_of = _verified(token, secret)
    except ValueError:
        raise ReportError(400, "invalid_cursor", "the cursor is not one this service issued",
                          param="cursor") from None
    if not isinstance(payload, list) or len(payload) != 2 \
            or payload[0] != fingerprint_of(request):
        raise ReportError(400, "invalid_cursor", "the cursor belongs to another report, "
                          "filter, sort or source; start again without it", param="cursor")
    values = payload[1]
    if not isinstance(values, list) or len(values) != len(types):
        raise ReportError(400, "invalid_cursor", "the cursor is malformed", param="cursor")
    try:
        return PageCursor(tuple(_typed(value, type_name, as_stored=as_stored)
                                for value, type_name in zip(values, types, strict=True)))
    except (TypeError, ValueError, ArithmeticError):  # Decimal('n/a') is an ArithmeticError
        raise ReportError(400, "invalid_cursor", "the cursor is malformed",
                          param="cursor") from None


def _typed(value: Any, type_name: str, *, as_stored: bool) -> Any:
    """Check one cursor value against its column's declared type.

    A valid signature proves only that this service signed the payload under its key (and
    keys get shared or leak): a value of the wrong type must be refused here, not reach
    the database as a data error or a Python comparison as a ``TypeError``.

    :raises ValueError: when ``value`` cannot be of ``type_name``.
    """
    if value is None:
        return None  # a NULL sort value; keys are never NULL, and SQL compares it safely
    if isinstance(value, dict) and set(value) == {"as_stored"} and as_stored:
        stored = value["as_stored"]
        if isinstance(stored, bool) or not isinstance(stored, str | int | float):
            raise ValueError(value)
        return AsStored(stored)
    if type_name in ("datetime", "date") and isinstance(value, dict) and "infinity" in value:
        if set(value) != {"infinity"} or value["infinity"] not in (1, -1) \
                or isinstance(value["infinity"], bool):
            raise ValueError(value)
        return infinity(value["infinity"], type_name)
    if type_name == "datetime" and isinstance(value, dict):
        stored = value.get("stored")
        if set(value) != {"stored"} or not isinstance(stored, str):
            raise ValueError(value)
        parsed = read_stored_instant(stored, naive_is_utc=True)
        if parsed is None:
            raise ValueError(value)
        return StoredInstant.of(parsed, stored)
    if isinstance(value, str) and type_name in _FROM_TEXT:
        return _FROM_TEXT[type_name](value)
    accepted = _CURSOR_TYPES.get(type_name, (str,))
    if isinstance(value, bool) and bool not in accepted:
        raise ValueError(value)  # bool is an int subclass in Python, not in SQL
    if not isinstance(value, accepted):
        raise ValueError(value)
    return value


_CURSOR_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,),
}


def _served_instant(raw: str) -> datetime:
    """A cursor's timestamp: any a database served, year 9999 included (an application's
    ``9999-12-31 23:59:59`` for "until further notice"), where :func:`parse_instant` keeps
    to the years a filter may name. It refused the cursor taken at such a row as
    malformed, and the pages after it could not be reached."""
    value = datetime.fromisoformat(raw)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


#: Cursor values written as text (see :func:`_encoded`), read back by their column's type.
_FROM_TEXT: dict[str, Any] = {"datetime": _served_instant, "date": date.fromisoformat,
                              "uuid": uuid.UUID, "number": Decimal}


def after(columns: Sequence[sa.ColumnElement[Any]], descending: bool, *,
          types: Sequence[sa.types.TypeEngine[Any]] = ()) -> sa.ColumnElement[bool]:
    """The keyset condition: rows strictly after the cursor in the sort order. The cursor's
    values are bound at execution (:func:`cursor_values`), so one statement serves every page.

    :param types: the bound values' types, when they differ from the columns'.
    """
    left, right = (sa.tuple_(*side) for side in _compared(columns, types))
    return left < right if descending else left > right


def after_nullable(columns: Sequence[sa.ColumnElement[Any]], descending: bool, *,
                   cursor_is_null: bool, types: Sequence[sa.types.TypeEngine[Any]] = ()
                   ) -> sa.ColumnElement[bool]:
    """:func:`after` for a nullable sort column (``columns[0]``), NULLs ordered last
    ascending and first descending: a row comparison alone would never return a NULL.

    A cursor whose sort value is NULL resumes among the NULLs by key (and, descending,
    then takes every non-NULL row); the two cases are two statements.
    """
    sort = columns[0]
    compared, bound = _compared(columns, types)
    if cursor_is_null:
        left, right = sa.tuple_(*compared[1:]), sa.tuple_(*bound[1:])
        if descending:
            return sa.or_(sa.and_(sort.is_(None), left < right), sort.is_not(None))
        return sa.and_(sort.is_(None), left > right)
    if descending:
        return sa.tuple_(*compared) < sa.tuple_(*bound)
    return sa.or_(sa.tuple_(*compared) > sa.tuple_(*bound), sort.is_(None))


def _compared(columns: Sequence[sa.ColumnElement[Any]],
              types: Sequence[sa.types.TypeEngine[Any]]
              ) -> tuple[list[sa.ColumnElement[Any]], list[sa.ColumnElement[Any]]]:
    """The two sides of the keyset comparison: the columns, and the cursor's values bound.

    A column ordered in a collation not its own (``column COLLATE "C"``: merged pages, see
    :mod:`sediment.core.collation`) is compared bare, with the collation on its bound value
    instead. An explicit collation on either side governs a comparison in both engines, so
    the rows are the same; but SQLite searches an index only for a bare column, and scanned
    from the first row on every page otherwise.
    """
    compared: list[sa.ColumnElement[Any]] = []
    bound: list[sa.ColumnElement[Any]] = []
    for index, column in enumerate(columns):
        value: sa.ColumnElement[Any] = sa.bindparam(
            _after_name(index), type_=types[index] if types else column.type)
        if (isinstance(column, BinaryExpression) and column.operator is operators.collate
                and isinstance(column.right, CollationClause)):
            column, value = column.left, value.collate(column.right.collation)
        compared.append(column)
        bound.append(value)
    return compared, bound


def cursor_values(cursor: PageCursor) -> dict[str, Any]:
    """The bound values of :func:`after` for ``cursor``."""
    return {_after_name(index): value for index, value in enumerate(cursor.values)}


def _after_name(index: int) -> str:
    return f"after_{index}"
