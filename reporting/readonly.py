"""Engines for reports that the databases themselves keep read-only.

PostgreSQL: ``default_transaction_read_only`` and a ``statement_timeout`` set as connection
options; SQLite: the file opened with ``mode=ro``, so even ``PRAGMA query_only = OFF``
cannot turn a report connection into a writer. (Granting the reporting role only SELECT is
the stronger barrier on PostgreSQL; give these URLs such a role in production.)
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa


def create_readonly_engine(url: str, *, statement_timeout_ms: int, pool_size: int) -> sa.Engine:
    """An engine whose connections cannot write."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "postgresql":
        options = ("-c default_transaction_read_only=on "
                   f"-c statement_timeout={statement_timeout_ms} -c timezone=UTC")
        return sa.create_engine(parsed, pool_pre_ping=True, pool_size=pool_size,
                                connect_args={"options": options,
                                              "application_name": "sediment-reports"})
    path = Path(parsed.database or "").resolve()
    readonly = sa.engine.make_url(f"sqlite:///file:{path}?mode=ro&uri=true")
    return sa.create_engine(readonly, pool_pre_ping=True,
                            connect_args={"timeout": statement_timeout_ms / 1000,
                                          "check_same_thread": False})
