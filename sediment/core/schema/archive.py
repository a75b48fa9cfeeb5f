"""The ARCHIVE database: mirrored copies of archivable tables, and the run ledger.

Each archived table is generated from its PRIMARY twin, so the two cannot drift: the same
columns, types and primary key, plus ``archived_at`` and ``archive_run_id``. The mirrors
carry no foreign keys. Reference tables (customers, products) stay in PRIMARY, so those
keys could never be enforced here, and the links between archived tables are checked by
``archive verify`` instead of by constraints that would dictate insert order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sediment.core.databases import ARCHIVE
from sediment.core.schema.primary import PrimaryModel
from sediment.core.schema.types import BigIntKey, UTCDateTime, metadata_for

#: PRIMARY tables that have an ARCHIVE twin. Policies may only name these.
ARCHIVED_TABLES = ("orders", "order_items", "payments", "events")
ARCHIVED_AT = "archived_at"
ARCHIVE_RUN_ID = "archive_run_id"

#: How a run stands in the ledger: ``running`` until it ends one of the other ways.
RunStatus = Literal[
    "running",
    "done",
    "max_rows",
    "max_runtime",
    "stop_requested",
    "lock_busy",
    "lock_lost",
    "schema_drift",
    "error",
    "interrupted",
]
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)

#: What a run did: ``archive`` moved rows PRIMARY -> ARCHIVE; ``purge`` deleted aged rows
#: from PRIMARY without copying them (a policy with ``mode = "purge"``); ``expire`` deleted
#: ARCHIVE rows past the policy's retention; ``restore`` moved rows back to PRIMARY;
#: ``erase`` removed a data subject's rows from both databases.
RunKind = Literal["archive", "purge", "expire", "restore", "erase"]
RUN_KINDS: tuple[RunKind, ...] = get_args(RunKind)


class ArchiveModel(DeclarativeBase):
    """Declarative base of the ARCHIVE database: the twins and the ledger."""

    metadata = metadata_for(ARCHIVE)


def twin_of(source: sa.Table, metadata: sa.MetaData) -> sa.Table:
    """The ARCHIVE twin of a PRIMARY table, declared in ``metadata``: the same columns,
    types and key, no foreign keys, indexes on former foreign-key columns, plus
    ``archived_at`` and ``archive_run_id``."""
    columns = [
        sa.Column(
            column.name,
            column.type,
            primary_key=column.primary_key,
            autoincrement=False,
            nullable=column.nullable,
            index=bool(column.index or column.foreign_keys) and not column.primary_key,
        )
        for column in source.columns
    ]
    # Multi-column indexes (the reports' keyset orders) are declared on the table.
    composite = [
        sa.Index(index.name, *(column.name for column in index.columns))
        for index in source.indexes
        if len(index.columns) > 1
    ]
    return sa.Table(
        source.name,
        metadata,
        *columns,
        *composite,
        sa.Column(ARCHIVED_AT, UTCDateTime, nullable=False),
        sa.Column(ARCHIVE_RUN_ID, sa.BigInteger, nullable=False),
        run_index(source.name),
    )


def run_index(table: str) -> sa.Index:
    """A twin's index on ``(archive_run_id, archived_at)``: a run's rows, and those of its
    batches since a given moment (what recovery looks for after a crash)."""
    return sa.Index(f"ix_{table}_{ARCHIVE_RUN_ID}_{ARCHIVED_AT}", ARCHIVE_RUN_ID, ARCHIVED_AT)


#: The ARCHIVE twins, keyed by table name.
archived_tables: dict[str, sa.Table] = {
    name: twin_of(PrimaryModel.metadata.tables[name], ArchiveModel.metadata)
    for name in ARCHIVED_TABLES
}


class ArchiveRun(ArchiveModel):
    """One archiver run of one policy: what it set out to do and how it ended."""

    __tablename__ = "archive_runs"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    policy: Mapped[str] = mapped_column(sa.String(64), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16), default="archive",
                                      server_default="archive")
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    cutoff: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    batches: Mapped[int] = mapped_column(sa.Integer, default=0)
    rows_moved: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    rows_per_second: Mapped[float | None] = mapped_column(sa.Float)
    error: Mapped[str | None] = mapped_column(sa.Text)
    #: What an erasure erased, without personal data: the subject's table, a keyed digest
    #: of its key, the digests of every erased key and the columns nulled out.
    detail: Mapped[str | None] = mapped_column(sa.Text)
    host: Mapped[str] = mapped_column(sa.String(255), default="")
    pid: Mapped[int] = mapped_column(sa.Integer, default=0)


class ArchiveRunTable(ArchiveModel):
    """Per-table counters of one run: selected, copied, verified and deleted rows.

    ``pending_since`` (on the policy's root table only) is the ``archived_at`` of the
    earliest batch this run copied but has not yet deleted from PRIMARY: set in the ARCHIVE
    transaction that copies a batch, cleared once the run's deletes have caught up with its
    copies. Rows in both databases can only be rows of such a run archived since then
    (children included), which is what keeps recovery from ever searching a whole run.
    ``pending_low``/``pending_high`` bound the same batches' root keys when the key is one
    integer column, for the merged reports. ``skipped_locked`` counts root rows left for a later
    run because an application transaction held them or one of their children.
    """

    __tablename__ = "archive_run_tables"
    __table_args__ = (
        sa.Index("ix_archive_run_tables_pending", "table_name", "pending_low"),
        sa.Index("ix_archive_run_tables_pending_since", "table_name", "pending_since"),
    )

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("archive_runs.id"), primary_key=True)
    table_name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    selected: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    copied: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    verified: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    deleted: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    skipped_locked: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    #: Rows this (archive) run copied that a later run removed from ARCHIVE (expired): the
    #: rows stamped with its id are ``copied - removed``.
    removed: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    pending_low: Mapped[int | None] = mapped_column(sa.BigInteger)
    pending_high: Mapped[int | None] = mapped_column(sa.BigInteger)
    pending_since: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ArchiveSchemaChange(ArchiveModel):
    """A change Sediment made to the ARCHIVE twin of an existing PRIMARY's table: when,
    which table, which columns, and what (the twins of the demo schema are Alembic's)."""

    __tablename__ = "archive_schema_changes"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    table_name: Mapped[str] = mapped_column(sa.String(255))
    change: Mapped[str] = mapped_column(sa.String(32))
    columns: Mapped[str] = mapped_column(sa.Text)
    detail: Mapped[str] = mapped_column(sa.Text)


class ArchiveHold(ArchiveModel):
    """A legal hold on one row (and its children) of a policy's table, in either database:
    while ``released_at`` is empty, no purge, expiry or erasure touches it.

    ``row_key`` is the key's values as a JSON list of their text forms, in key order.
    Who placed or released it, and why, are as the operator gave them on the command line.
    """

    __tablename__ = "archive_holds"
    __table_args__ = (sa.Index("ix_archive_holds_table_released", "table_name", "released_at"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    table_name: Mapped[str] = mapped_column(sa.String(255))
    row_key: Mapped[str] = mapped_column(sa.Text)
    reason: Mapped[str] = mapped_column(sa.Text)
    held_by: Mapped[str] = mapped_column(sa.String(255))
    held_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_by: Mapped[str | None] = mapped_column(sa.String(255))
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    release_reason: Mapped[str | None] = mapped_column(sa.Text)


class ArchiveRestore(ArchiveModel):
    """A root row a restore run brought back (or is bringing back) to PRIMARY.

    Until ``until`` (the restore time plus the policy's ``older_than``: the row ages again
    from the moment it came back) the policy's archive runs leave the row alone, although
    its age column says it is old. Written before the row reaches PRIMARY, so a restore
    killed at any point still keeps the archiver away, and the next restore of the policy
    finishes the rows its marks name.
    """

    __tablename__ = "archive_restores"
    __table_args__ = (sa.Index("ix_archive_restores_table_until", "table_name", "until"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    table_name: Mapped[str] = mapped_column(sa.String(255))
    row_key: Mapped[str] = mapped_column(sa.Text)
    restored_at: Mapped[datetime] = mapped_column(UTCDateTime)
    until: Mapped[datetime] = mapped_column(UTCDateTime)


#: The ledger tables alone: all of ARCHIVE that Alembic owns beside an existing PRIMARY.
LEDGER_TABLES = ("archive_runs", "archive_run_tables", "archive_schema_changes", "archive_holds",
                 "archive_restores")
