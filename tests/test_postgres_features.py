"""Real-world PostgreSQL on an application's own schema: exact ``numeric`` money, ``jsonb``,
arrays, ``uuid``, ``bytea``, ``timestamptz`` written in several zones, NULLs in every
column, very wide rows, and a trigger that fires on the archiver's deletes as the
application expects (Sediment never disables triggers)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from archive.verify import verify_archive
from sediment.core.settings import PolicySettings
from tests.support import DatabaseFactory, OwnSchema, own_schema

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SCHEMA = sa.MetaData()
PAYMENTS = sa.Table(
    "payments", SCHEMA,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("paid_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("amount", sa.Numeric(18, 4)),
    sa.Column("detail", postgresql.JSONB),
    sa.Column("tags", postgresql.ARRAY(sa.Text)),
    sa.Column("token", sa.Uuid),
    sa.Column("receipt", sa.LargeBinary),
    sa.Column("memo", sa.Text),
    sa.Column("local_day", sa.Date),
)
DELETIONS = sa.Table("payment_deletions", SCHEMA,
                     sa.Column("payment_id", sa.BigInteger, nullable=False))
TRIGGER = """
CREATE FUNCTION note_deletion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO payment_deletions (payment_id) VALUES (OLD.id);
    RETURN OLD;
END $$;
CREATE TRIGGER payments_deleted AFTER DELETE ON payments
    FOR EACH ROW EXECUTE FUNCTION note_deletion();
"""
ZONES = [timezone(timedelta(hours=h, minutes=m)) for h, m in ((0, 0), (5, 30), (-9, -30),
                                                             (14, 0), (-12, 0))]


@pytest.fixture
def schema(databases: DatabaseFactory) -> Iterator[OwnSchema]:
    own = own_schema(databases, SCHEMA, ["payments"])
    with own.engines.primary.begin() as connection:
        connection.exec_driver_sql(TRIGGER)
    yield own
    own.dispose()


def rows() -> list[dict[str, object]]:
    written = []
    for i in range(1, 301):
        when = (NOW - timedelta(days=i, minutes=i * 7)).astimezone(ZONES[i % len(ZONES)])
        full = i % 4 != 0  # every fourth row NULL in every nullable column
        written.append({
            "id": i, "paid_at": when,
            "amount": Decimal(f"{i * 1_000_003}.{i % 10_000:04d}") if full else None,
            "detail": {"i": i, "nested": {"é": [1, None, "\\t\\n"]}} if full else None,
            "tags": ["a", "b,c", 'quote"d', None][: i % 5] if full else None,
            "token": uuid.UUID(int=i) if full else None,
            "receipt": bytes(range(i % 256)) if full else None,
            "memo": ("x" * 200_000 + f"\\t{i}\\n") if i % 50 == 0 else ("m" if full else None),
            "local_day": when.date() if full else None,
        })
    return written


def test_every_value_round_trips_exactly_and_triggers_fire(schema: OwnSchema) -> None:
    written = rows()
    with schema.engines.primary.begin() as connection:
        connection.execute(PAYMENTS.insert(), written)
    policy = schema.policy(PolicySettings(name="payments", table="payments",
                                          age_column="paid_at",
                                          older_than=timedelta(days=100), batch_size=37))
    outcome = schema.run(policy, NOW)
    assert outcome.status == "done", outcome.error
    cutoff = policy.cutoff(NOW)
    aged = {row["id"] for row in written if row["paid_at"] < cutoff}  # type: ignore[operator]
    assert outcome.rows == len(aged) > 100
    twin = schema.twins["payments"]
    columns = [c.name for c in PAYMENTS.columns]
    with schema.engines.archive.connect() as connection:
        archived = {row.id: row for row in connection.execute(
            sa.select(*(twin.c[name] for name in columns)))}
    assert archived.keys() == aged
    for row in written:
        if row["id"] in aged:
            got = archived[row["id"]]._asdict()  # type: ignore[index]
            assert got == {**row, "paid_at": row["paid_at"]}, row["id"]
            assert got["amount"] is None or str(got["amount"]) == str(row["amount"])
    with schema.engines.primary.connect() as connection:
        noted = set(connection.execute(sa.select(DELETIONS.c.payment_id)).scalars())
    assert noted == aged  # the application's trigger saw every archived row go
    found = verify_archive(schema.engines.primary, schema.engines.archive, [policy])
    assert found.ok, found.problems
