"""Archival policies resolved against the schema, with no database."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from archive.keys import key_columns
from archive.policy import cutoff_for, resolve_policy
from sediment.core.databases import PRIMARY
from sediment.core.schema import metadata_of
from sediment.core.schema.archive import archived_tables
from sediment.core.settings import PolicySettings, SettingsError, load_settings

TABLES = metadata_of(PRIMARY).tables


ORDERS = PolicySettings(name="orders", table="orders", age_column="closed_at",
                        older_than=timedelta(days=365), match={"status": ("closed",)},
                        children=("order_items", "payments"))


def orders_policy(**changes: Any) -> PolicySettings:
    return dataclasses.replace(ORDERS, **changes)


def test_a_policy_resolves_to_tables_twins_and_child_links() -> None:
    policy = resolve_policy(orders_policy(), TABLES, archived_tables)
    assert policy.root is TABLES["orders"] and policy.archive_root is archived_tables["orders"]
    assert [t.name for t in policy.tables] == ["orders", "order_items", "payments"]
    assert [[c.name for c in link.columns] for link in policy.children] == [["order_id"]] * 2
    assert [[c.name for c in link.referenced] for link in policy.children] == [["id"]] * 2
    assert all(link.references_key for link in policy.children)
    assert [c.name for c in policy.key] == ["id"]


def test_aged_selects_by_age_and_match() -> None:
    policy = resolve_policy(orders_policy(), TABLES, archived_tables)
    cutoff = datetime(2025, 1, 1, tzinfo=UTC)
    sql = str(policy.aged(cutoff).compile(compile_kwargs={"literal_binds": True}))
    assert "orders.closed_at <" in sql and "orders.status IN ('closed')" in sql


def test_cutoff_refuses_a_naive_now() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert cutoff_for(now, timedelta(days=1)) == datetime(2025, 12, 31, tzinfo=UTC)
    with pytest.raises(ValueError, match="no timezone"):
        cutoff_for(datetime(2026, 1, 1), timedelta(days=1))


@pytest.mark.parametrize(
    ("changes", "key"),
    [({"table": "customers"}, "policy.orders.table"),
     ({"age_column": "placed"}, "policy.orders.age_column"),
     ({"age_column": "status"}, "policy.orders.age_column"),
     ({"match": {"status": ("closd",)}}, "policy.orders.match.status"),
     ({"children": ("events",)}, "policy.orders.children")],
)
def test_a_policy_the_schema_cannot_satisfy_names_its_key(
    changes: dict[str, object], key: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        resolve_policy(orders_policy(**changes), TABLES, archived_tables)
    assert caught.value.key == key


def test_key_columns_keep_a_composite_key_in_key_order() -> None:
    table = sa.Table("pairs", sa.MetaData(), sa.Column("a", sa.Integer),
                     sa.Column("b", sa.Text), sa.PrimaryKeyConstraint("b", "a"))
    assert [c.name for c in key_columns(table)] == ["b", "a"]
    with pytest.raises(ValueError, match="has no primary key"):
        key_columns(sa.Table("loose", sa.MetaData(), sa.Column("a", sa.Integer)))


def test_a_table_outside_the_policy_referencing_its_rows_stops_startup() -> None:
    """payments.order_id references orders: leaving payments out would fail every delete."""
    with pytest.raises(SettingsError) as caught:
        resolve_policy(orders_policy(children=("order_items",)), TABLES, archived_tables)
    assert caught.value.key == "policy.orders.children"
    assert "payments.fk_payments_order_id_orders references orders" in str(caught.value)
    assert "add payments to children" in str(caught.value)


def test_a_cascading_foreign_key_outside_the_policy_stops_startup() -> None:
    metadata = sa.MetaData()
    parents = sa.Table("parents", metadata, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("made_at", sa.DateTime(timezone=True)))
    sa.Table("notes", metadata, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("parent_id", sa.ForeignKey("parents.id", ondelete="CASCADE",
                                                  name="notes_parent_fk")))
    settings = PolicySettings(name="p", table="parents", age_column="made_at")
    with pytest.raises(SettingsError) as caught:
        resolve_policy(settings, metadata.tables, {"parents": parents})
    assert caught.value.key == "policy.p.children"
    assert "notes.notes_parent_fk references parents ON DELETE CASCADE" in str(caught.value)


def test_the_where_condition_joins_the_aged_predicate() -> None:
    policy = resolve_policy(orders_policy(where=" customer_id <> 7 "), TABLES, archived_tables)
    sql = str(policy.aged(datetime(2025, 1, 1, tzinfo=UTC)))
    assert policy.where == "customer_id <> 7"
    assert sql.endswith("AND (customer_id <> 7)")


def test_auto_children_follow_foreign_keys_to_any_depth() -> None:
    """``children = "auto"`` finds the demo's order_items and payments, and, on a schema
    with a grandchild, that too, ordered parents first."""
    auto = resolve_policy(orders_policy(children="auto"), TABLES, archived_tables)
    assert [link.table.name for link in auto.children] == ["order_items", "payments"]
    metadata = sa.MetaData()
    parents = sa.Table("parents", metadata, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("made_at", sa.DateTime(timezone=True)))
    kids = sa.Table("kids", metadata, sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("parent_id", sa.ForeignKey("parents.id")))
    toys = sa.Table("toys", metadata, sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("kid_id", sa.ForeignKey("kids.id")))
    sa.Table("unrelated", metadata, sa.Column("id", sa.Integer, primary_key=True))
    twins = {"parents": parents, "kids": kids, "toys": toys}
    settings = PolicySettings(name="p", table="parents", age_column="made_at", children="auto")
    policy = resolve_policy(settings, metadata.tables, twins)
    assert [(link.table.name, link.parent.name) for link in policy.children] == [
        ("kids", "parents"), ("toys", "kids")]


def test_children_must_be_a_list_or_auto(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[policy.p]\ntable = 'orders'\nage_column = 'closed_at'\nchildren = 'all'\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == "policy.p.children"
    assert "a list of strings or 'auto'" in str(caught.value)


@pytest.mark.parametrize("role", ["root", "child"])
def test_a_table_without_a_primary_key_names_the_policy_key(role: str) -> None:
    metadata = sa.MetaData()
    sa.Table("roots", metadata, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("made_at", sa.DateTime(timezone=True)))
    odd = sa.Table("odd", metadata, sa.Column("a", sa.Integer),
                   sa.Column("made_at", sa.DateTime(timezone=True)),
                   sa.Column("root_id", sa.ForeignKey("roots.id")))
    settings = (PolicySettings(name="p", table="odd", age_column="made_at") if role == "root"
                else PolicySettings(name="p", table="roots", age_column="made_at",
                                    children=("odd",)))
    with pytest.raises(SettingsError) as caught:
        resolve_policy(settings, metadata.tables, {"roots": metadata.tables["roots"],
                                                   "odd": odd})
    assert caught.value.key == ("policy.p.table" if role == "root" else "policy.p.children")
    assert "has no primary key" in str(caught.value)


def test_a_composite_foreign_key_to_a_unique_pair_links_a_child() -> None:
    metadata = sa.MetaData()
    sa.Table("accounts", metadata, sa.Column("region", sa.Text, primary_key=True),
             sa.Column("number", sa.Integer, primary_key=True),
             sa.Column("made_at", sa.DateTime(timezone=True)))
    sa.Table("entries", metadata, sa.Column("id", sa.Uuid, primary_key=True),
             sa.Column("account_region", sa.Text), sa.Column("account_number", sa.Integer),
             sa.ForeignKeyConstraint(["account_region", "account_number"],
                                     ["accounts.region", "accounts.number"]))
    policy = resolve_policy(PolicySettings(name="p", table="accounts", age_column="made_at",
                                           children="auto"),
                            metadata.tables, metadata.tables)
    (link,) = policy.children
    assert [c.name for c in link.columns] == ["account_region", "account_number"]
    assert [c.name for c in link.referenced] == ["region", "number"] and link.references_key
