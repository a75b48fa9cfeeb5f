"""PRIMARY and ARCHIVE on different engines: the demo schema archives both ways with
nothing lost, and a schema with columns one engine cannot hold exactly is refused at
startup, naming every such column."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from archive.compat import check_engines_hold, unportable_columns
from archive.policy import resolve_policy
from archive.verify import verify_archive
from reporting.app import create_app
from sediment.core.migrations import upgrade_all
from sediment.core.schema.types import UTCDateTime
from sediment.core.settings import PolicySettings, SettingsError, load_settings
from sediment.service import resolve_policies_of
from tests.archiving import assert_invariants, run, seed_shop, snapshot
from tests.support import DatabaseFactory, engines_of, make_settings, policies_of


def test_the_demo_schema_is_portable() -> None:
    from tests.support import REPO  # noqa: F401  (the shipped settings' policies)

    assert unportable_columns(resolve_policies_of(load_settings(environ={}))) == []


def test_columns_one_engine_cannot_hold_are_all_named() -> None:
    metadata = sa.MetaData()
    sa.Table(
        "ledger", metadata, sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("at", UTCDateTime), sa.Column("day", sa.Date), sa.Column("n", sa.Integer),
        sa.Column("ratio", sa.Float), sa.Column("whole", sa.Numeric(12, 0)),
        sa.Column("note", sa.Text), sa.Column("ok", sa.Boolean),
        sa.Column("local", sa.DateTime()), sa.Column("blob", sa.LargeBinary),
        sa.Column("amount", sa.Numeric(12, 2)), sa.Column("doc", postgresql.JSONB),
        sa.Column("tags", postgresql.ARRAY(sa.Text)), sa.Column("ref", sa.Uuid),
        sa.Column("stamped", sa.DateTime(timezone=True)),
        sa.Column("state", postgresql.ENUM("a", "b", name="state")),
    )
    policy = resolve_policy(PolicySettings(name="l", table="ledger", age_column="at"),
                            metadata.tables, metadata.tables)
    named = [entry.split(" ")[0] for entry in unportable_columns([policy])]
    assert named == ["ledger.amount", "ledger.doc", "ledger.tags", "ledger.ref",
                     "ledger.stamped", "ledger.state"]
    postgres = sa.create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    sqlite = sa.create_engine("sqlite://")
    with pytest.raises(SettingsError) as caught:
        check_engines_hold(postgres, sqlite, [policy])
    assert caught.value.key == "database.archive_url"
    assert "ledger.amount (NUMERIC(12, 2))" in str(caught.value)
    check_engines_hold(sqlite, sa.create_engine("sqlite://"), [policy])  # one engine: fine


@pytest.mark.postgres
@pytest.mark.parametrize("primary_on", ["postgresql", "sqlite"])
def test_the_demo_archives_across_engines_with_nothing_lost(
    databases: DatabaseFactory, tmp_path: Path, primary_on: str
) -> None:
    postgres_url, _ = databases.pair("mixed")
    sqlite_url = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    urls = (postgres_url, sqlite_url) if primary_on == "postgresql" else (sqlite_url,
                                                                          postgres_url)
    app = create_app(make_settings(*urls))
    engines = engines_of(app)
    upgrade_all(engines)
    try:
        seed_shop(engines.primary, engines.archive)
        original = snapshot(engines.primary)
        policies = list(policies_of(app))
        check_engines_hold(engines.primary, engines.archive, policies)
        for policy in policies:
            outcome = run(app, engines.primary, engines.archive, policy)
            assert outcome.status == "done" and outcome.rows > 0, outcome.error
        assert_invariants(original, engines.primary, engines.archive, policies)
        found = verify_archive(engines.primary, engines.archive, policies)
        assert found.ok, found.problems
    finally:
        engines.dispose()
