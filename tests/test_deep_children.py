"""Children to any depth, on a schema that is not the demo shop's: invoices, their lines,
and the lines' taxes (a grandchild), each level found through the one above.

The schema is created here for the test (PRIMARY tables and their ARCHIVE twins, plus the
ledger), so the archiver runs on tables it was never written for.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from archive.policy import ArchivePolicy
from archive.runner import RunLimits, RunOutcome, plan_run
from archive.verify import verify_archive
from sediment.core.databases import Engines
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT
from sediment.core.schema.types import UTCDateTime
from sediment.core.settings import ArchiveSettings, PolicySettings, Settings
from tests.support import DatabaseFactory, OwnSchema, own_schema

NOW = datetime(2026, 6, 1, tzinfo=UTC)
PRIMARY_SCHEMA = sa.MetaData()
sa.Table("accounts", PRIMARY_SCHEMA, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.String(40)))
sa.Table("invoices", PRIMARY_SCHEMA, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("account_id", sa.ForeignKey("accounts.id"), index=True),
         sa.Column("issued_at", UTCDateTime, index=True))
sa.Table("invoice_lines", PRIMARY_SCHEMA, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("invoice_id", sa.ForeignKey("invoices.id"), index=True),
         sa.Column("amount_cents", sa.BigInteger))
sa.Table("line_taxes", PRIMARY_SCHEMA, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("line_id", sa.ForeignKey("invoice_lines.id"), index=True),
         sa.Column("rate", sa.Numeric(5, 4)), sa.Column("note", sa.Text, nullable=True))
ARCHIVED = ("invoices", "invoice_lines", "line_taxes")
#: The grandchild listed before its parent: the policy orders its children itself.
POLICY = PolicySettings(name="invoices", table="invoices", age_column="issued_at",
                        older_than=timedelta(days=90), children=("line_taxes", "invoice_lines"),
                        batch_size=7)


@dataclasses.dataclass
class Invoicing:
    schema: OwnSchema
    policy: ArchivePolicy

    @property
    def engines(self) -> Engines:
        return self.schema.engines

    @property
    def settings(self) -> Settings:
        return self.schema.settings

    def run(self, *, archive_settings: ArchiveSettings | None = None,
            limits: RunLimits | None = None) -> RunOutcome:
        return self.schema.run(self.policy, NOW, archive_settings=archive_settings,
                               limits=limits)


@pytest.fixture
def invoicing(databases: DatabaseFactory) -> Iterator[Invoicing]:
    schema = own_schema(databases, PRIMARY_SCHEMA, ARCHIVED)
    yield Invoicing(schema, schema.policy(POLICY))
    schema.dispose()


def fill(primary: sa.Engine, invoices: int = 60) -> None:
    """Invoices over a year, 0-4 lines each, 0-2 taxes per line; some old, some recent."""
    rng = random.Random(11)
    tables = PRIMARY_SCHEMA.tables
    rows: dict[str, list[dict[str, object]]] = {name: [] for name in ARCHIVED}
    line_id = tax_id = 0
    for invoice in range(1, invoices + 1):
        issued = NOW - timedelta(days=rng.randint(0, 365), seconds=rng.randint(0, 86_399))
        rows["invoices"].append({"id": invoice, "account_id": 1 + invoice % 3,
                                 "issued_at": issued})
        for _ in range(rng.randint(0, 4)):
            line_id += 1
            rows["invoice_lines"].append({"id": line_id, "invoice_id": invoice,
                                          "amount_cents": rng.randint(1, 10**9)})
            for _ in range(rng.randint(0, 2)):
                tax_id += 1
                rows["line_taxes"].append({"id": tax_id, "line_id": line_id,
                                           "rate": rng.choice(("0.1900", "0.0700", "0.0000")),
                                           "note": rng.choice((None, "reduced", "é\tß\n"))})
    with primary.begin() as connection:
        connection.execute(tables["accounts"].insert(),
                           [{"id": i, "name": f"a{i}"} for i in (1, 2, 3)])
        for name in ARCHIVED:
            connection.execute(tables[name].insert(), rows[name])


def contents(engine: sa.Engine, tables: dict[str, sa.Table]) -> dict[str, set[tuple[object, ...]]]:
    """The data columns of each table's rows (twins without their ledger columns)."""
    found = {}
    with engine.connect() as connection:
        for name, table in tables.items():
            columns = [c for c in table.columns if c.name not in (ARCHIVED_AT, ARCHIVE_RUN_ID)]
            found[name] = {tuple(row) for row in connection.execute(sa.select(*columns))}
    return found


def primary_tables() -> dict[str, sa.Table]:
    return {name: PRIMARY_SCHEMA.tables[name] for name in ARCHIVED}


def test_every_level_moves_with_its_root_and_nothing_is_lost(invoicing: Invoicing) -> None:
    primary, archive = invoicing.engines.primary, invoicing.engines.archive
    fill(primary)
    before = contents(primary, primary_tables())
    planned = plan_run(primary, invoicing.policy, NOW).counts
    assert planned["line_taxes"] > 0 and planned["invoices"] > invoicing.policy.batch_size

    outcome = invoicing.run()

    assert outcome.status == "done" and outcome.batches > 1
    assert outcome.moved == planned
    left, archived = contents(primary, primary_tables()), contents(archive, invoicing.schema.twins)
    for name in ARCHIVED:  # every row in exactly one database, unchanged
        assert left[name] | archived[name] == before[name]
        assert not left[name] & archived[name]
    cutoff = invoicing.policy.cutoff(NOW)
    assert all(row[2] >= cutoff for row in left["invoices"])  # type: ignore[operator]
    archived_lines = {row[0] for row in archived["invoice_lines"]}
    assert {row[1] for row in archived["line_taxes"]} <= archived_lines
    found = verify_archive(primary, archive, [invoicing.policy])
    assert found.ok, found.problems
    assert "line_taxes: every archived row has its parent" in found.checks
    assert invoicing.run().rows == 0


def test_a_failed_delete_is_settled_and_finished_by_the_next_run(invoicing: Invoicing) -> None:
    """The PRIMARY delete of the grandchildren fails after the ARCHIVE commit: rows are in
    both databases; the next run settles the ledger through every level and finishes."""
    primary, archive = invoicing.engines.primary, invoicing.engines.archive
    fill(primary)
    before = contents(primary, primary_tables())

    def fail_delete(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("DELETE FROM LINE_TAXES"):
            raise sa.exc.OperationalError(statement, None, RuntimeError("injected"))

    sa.event.listen(primary, "before_cursor_execute", fail_delete)
    try:
        one_try = dataclasses.replace(invoicing.settings.archive, retry_attempts=1)
        failed = invoicing.run(archive_settings=one_try, limits=RunLimits(max_rows=7))
    finally:
        sa.event.remove(primary, "before_cursor_execute", fail_delete)
    assert failed.status == "error"
    assert contents(archive, invoicing.schema.twins)["line_taxes"]  # copied, not deleted: in both

    assert invoicing.run().status == "done"
    left, archived = contents(primary, primary_tables()), contents(archive, invoicing.schema.twins)
    for name in ARCHIVED:
        assert left[name] | archived[name] == before[name]
        assert not left[name] & archived[name]
    found = verify_archive(primary, archive, [invoicing.policy])
    assert found.ok, found.problems


@pytest.mark.postgres
def test_a_held_grandchild_keeps_its_root_for_a_later_run(invoicing: Invoicing) -> None:
    primary, archive = invoicing.engines.primary, invoicing.engines.archive
    fill(primary)
    cutoff = invoicing.policy.cutoff(NOW)
    taxes, lines, invoices = (PRIMARY_SCHEMA.tables[n] for n in ARCHIVED[::-1])
    aged_tax = (sa.select(taxes.c.id, invoices.c.id)
                .join(lines, lines.c.id == taxes.c.line_id)
                .join(invoices, invoices.c.id == lines.c.invoice_id)
                .where(invoices.c.issued_at < cutoff).order_by(taxes.c.id).limit(1))
    with primary.connect() as connection:
        tax_id, invoice_id = connection.execute(aged_tax).one()
    writer = primary.connect()
    try:
        writer.execute(sa.select(taxes).where(taxes.c.id == tax_id).with_for_update())
        held = invoicing.run()
        assert held.status == "done" and held.skipped_locked == 1
        with primary.connect() as connection:  # the whole invoice stayed, every level
            assert connection.execute(sa.select(sa.func.count()).select_from(invoices).where(
                invoices.c.id == invoice_id)).scalar_one() == 1
            assert connection.execute(sa.select(sa.func.count()).select_from(taxes).where(
                taxes.c.id == tax_id)).scalar_one() == 1
    finally:
        writer.rollback()
        writer.close()
    assert invoicing.run().rows > 0  # released: the invoice moves now
    found = verify_archive(primary, archive, [invoicing.policy])
    assert found.ok, found.problems


def test_a_failure_at_any_statement_leaves_every_level_consistent(invoicing: Invoicing) -> None:
    """Fail statement N of a run, for every N; the next run finishes and every row of every
    level is in exactly one database, unchanged."""
    primary, archive = invoicing.engines.primary, invoicing.engines.archive
    one_try = dataclasses.replace(invoicing.settings.archive, retry_attempts=1)
    counter = {"n": 0, "fail_at": 0}

    def fail_nth(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        counter["n"] += 1
        if counter["n"] == counter["fail_at"]:
            raise sa.exc.OperationalError(statement, parameters, RuntimeError("injected"))

    statements = None
    n = 1
    while statements is None:
        empty = ((primary, PRIMARY_SCHEMA.sorted_tables),
                 (archive, list(invoicing.schema.twins.values())))
        for engine, tables in empty:
            with engine.begin() as connection:
                for table in reversed(tables):
                    connection.execute(table.delete())
        with archive.begin() as connection:
            connection.execute(sa.text("DELETE FROM archive_run_tables"))
            connection.execute(sa.text("DELETE FROM archive_runs"))
        fill(primary, invoices=25)
        before = contents(primary, primary_tables())
        counter.update(n=0, fail_at=n)
        for engine in (primary, archive):
            sa.event.listen(engine, "before_cursor_execute", fail_nth)
        try:
            invoicing.run(archive_settings=one_try)
        except sa.exc.SQLAlchemyError:
            pass  # the ledger itself could not be written: surfaced, not hidden
        finally:
            for engine in (primary, archive):
                sa.event.remove(engine, "before_cursor_execute", fail_nth)
        if counter["n"] < n:
            statements = n - 1
        final = invoicing.run()
        assert final.status == "done", (n, final.error)
        left = contents(primary, primary_tables())
        archived = contents(archive, invoicing.schema.twins)
        for name in ARCHIVED:
            assert left[name] | archived[name] == before[name], (n, name)
            assert not left[name] & archived[name], (n, name)
        found = verify_archive(primary, archive, [invoicing.policy])
        assert found.ok, (n, found.problems)
        n += 1
        assert n < 1500, "the run never finished"
    assert statements > 10
