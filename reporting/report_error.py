"""The one exception the report engine raises for a request it refuses.

A leaf module: the request parser, the paginator and the CSV exporter raise it without
knowing about HTTP; :mod:`reporting.errors` turns it into a problem+json response and the
``report`` command into a one-line message.
"""

from __future__ import annotations


class ReportError(Exception):
    """A request the API refuses, with the HTTP status and stable code to answer with."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.param = param
        self.headers = headers or {}
