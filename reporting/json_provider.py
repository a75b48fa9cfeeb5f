"""JSON for every response, through orjson.

A report page is a hundred or more rows of timestamps, and serialising it with the standard
library (timestamps converted one by one in Python first) cost about a fifth of the page's
CPU. orjson writes the same text about ten times faster and knows RFC 3339 timestamps
itself: an aware UTC datetime becomes ``2026-01-02T03:04:05.000006Z``, exactly what
``isoformat()`` with ``Z`` for ``+00:00`` gives. Keys keep their insertion order, so rows
keep the report's column order.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider

from reporting.infinities import InfiniteDate, InfiniteDatetime
from reporting.stored_values import blob_text
from sediment.core.instants import StoredInstant

_OPTIONS = orjson.OPT_UTC_Z


def _default(value: Any) -> Any:
    """Types orjson leaves to us, written as Flask's own provider writes them."""
    if isinstance(value, Decimal):
        return str(value)
    # orjson writes only datetime and date themselves, no subclass of them.
    if isinstance(value, StoredInstant | InfiniteDatetime | InfiniteDate):
        return value.plain()
    if isinstance(value, bytes):
        return blob_text(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps_bytes(value: Any) -> bytes:
    """``value`` as UTF-8 JSON."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        # A dict keyed by other than text (a pivot's dates or numbers as columns): orjson's
        # mode for any key writes the same text, and is tried second because it costs every
        # report page about a twentieth of its time.
        return orjson.dumps(value, default=_default, option=_OPTIONS | orjson.OPT_NON_STR_KEYS)


class OrjsonProvider(JSONProvider):
    """Flask's JSON provider interface over orjson (``jsonify``, ``request.get_json``)."""

    mimetype = "application/json"

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return dumps_bytes(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        body = dumps_bytes(self._prepare_response_obj(args, kwargs))
        return Response(body + b"\n", mimetype=self.mimetype)
