"""One line of an error, for logs, the ledger and the command line.

A leaf module: drivers append the SQL, its parameters and hints below the first line, and
SQLAlchemy wraps the driver's error; what an operator needs is the driver's first line.
"""

from __future__ import annotations


def first_line(error: BaseException | None) -> str:
    """The first line of ``error``'s message (of the driver's error, for SQLAlchemy's
    wrappers), or its class name when it has no message."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


def sqlstate(error: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE of ``error`` (SQLAlchemy's, or the driver's); None from SQLite
    or for an error no statement raised."""
    cause = getattr(error, "orig", None) or error
    code = getattr(cause, "pgcode", None)
    return code if isinstance(code, str) else None


def detail(error: BaseException) -> str | None:
    """PostgreSQL's DETAIL line of ``error`` (``Key (customer_id)=(6) is not present in
    table "customers".``), which names the row a constraint refused; None from SQLite."""
    cause = getattr(error, "orig", None) or error
    text = getattr(getattr(cause, "diag", None), "message_detail", None)
    return text.rstrip(".") if isinstance(text, str) and text else None


#: PostgreSQL's SQLSTATE for "permission denied".
_INSUFFICIENT_PRIVILEGE = "42501"


def is_permission_denied(error: BaseException) -> bool:
    """Whether ``error`` (SQLAlchemy's, or the driver's) is PostgreSQL's "permission
    denied": a grant the role lacks, which no retry cures."""
    return sqlstate(error) == _INSUFFICIENT_PRIVILEGE


#: PostgreSQL's SQLSTATE for a statement cancelled, by its timeout or on request.
_QUERY_CANCELED = "57014"


def is_statement_timeout(error: BaseException) -> bool:
    """Whether ``error`` is PostgreSQL cancelling a statement that ran past
    ``statement_timeout`` (not one cancelled by ``pg_cancel_backend``)."""
    return sqlstate(error) == _QUERY_CANCELED and "statement timeout" in first_line(error)


#: PostgreSQL's SQLSTATE for a write refused by a read-only transaction.
_READ_ONLY_SQL_TRANSACTION = "25006"


def is_read_only_refusal(error: BaseException) -> bool:
    """Whether ``error`` is PostgreSQL refusing a write (or a ``FOR UPDATE``) in a read-only
    transaction: a hot standby, or ``default_transaction_read_only = on``."""
    return sqlstate(error) == _READ_ONLY_SQL_TRANSACTION


def read_only_text(database: str, error: BaseException | None = None) -> str:
    """One line saying that ``database`` (``PRIMARY`` or ``ARCHIVE``) refuses writes, and
    which setting to point elsewhere."""
    cause = f" ({first_line(error)})" if error is not None else ""
    return (f"{database} is read-only{cause}: it is a hot standby, or its sessions default "
            f"to read-only (default_transaction_read_only = on); point "
            f"database.{database.lower()}_url at the writable server, or turn that off")
