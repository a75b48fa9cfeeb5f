"""Purge, expiry and holds on an application's own database (tests/app_schema.py: composite
and uuid keys, a three-level chain, partitions, a trigger), through the real command line."""

from __future__ import annotations

import sqlalchemy as sa

from archive.keys import key_columns, key_text
from archive.sweep import expiry_of
from sediment.core.settings import load_settings
from sediment.service import build_service
from tests.app_schema import (
    ARCHIVED,
    INVOICE_CHILDREN,
    POLICIES,
    POLICY_NAMES,
    AppDatabase,
    rows_of,
)
from tests.archiving import NOW
from tests.test_existing_schema import NOW_ARG, ok


def test_purge_expiry_and_holds_on_an_existing_database(app_db: AppDatabase) -> None:
    backend = app_db.backend
    invoices, children = ARCHIVED[backend][0], INVOICE_CHILDREN[backend]
    purged, purge_policy = ARCHIVED[backend][-1], POLICY_NAMES[backend][1]
    policies = POLICIES[backend].replace(
        f"[policy.{purge_policy}]", f'[policy.{purge_policy}]\nmode = "purge"').replace(
        'children = "auto"', 'children = "auto"\nretention = "600d"').replace(
        'older_than = "180d"', 'older_than = "30d"')  # some api_calls are that old
    settings = app_db.settings(policies=policies)
    ok(app_db.cli("migrate", settings=settings))
    sessions = rows_of(app_db.primary, [purged])[purged]

    ran = ok(app_db.cli("archive", "run", *NOW_ARG, settings=settings))
    assert f"{purge_policy:<10} purge " in ran, ran
    left = rows_of(app_db.primary, [purged])[purged]
    assert 0 < len(left) < len(sessions), ran
    assert all(sessions[key] == row for key, row in left.items())
    assert f"would purge from PRIMARY {purged} 0" in ok(
        app_db.cli("archive", "run", "--dry-run", "--policy", purge_policy, *NOW_ARG,
                   settings=settings))
    assert purged.rpartition(".")[2] not in sa.inspect(app_db.archive).get_table_names(
        schema="billing" if backend == "postgres" else None)  # a purge needs no twin

    archiver = build_service(load_settings(settings)).archiver
    policy = archiver.policy("invoices")
    expiry = expiry_of(policy, NOW)
    assert expiry is not None
    root_key = key_columns(policy.archive_root)
    with app_db.archive.connect() as connection:
        expiring = [tuple(row) for row in connection.execute(
            sa.select(*root_key).where(expiry.condition).order_by(*root_key))]
        link = next(link for link in policy.children if link.table.fullname == children[0])
        lines = link.archive_table
        to_invoice = [lines.c[column.name] for column in link.columns]
        held_line = connection.execute(
            sa.select(*key_columns(lines), *to_invoice)
            .where(sa.tuple_(*to_invoice).in_(expiring)).limit(1)).one()
    archiver.engines.dispose()
    names = [invoices, *children]
    archived = rows_of(app_db.archive, names, archive=True)
    assert 3 < len(expiring) < len(archived[invoices])
    line_key = held_line[:len(key_columns(lines))]
    held_root = tuple(held_line[len(key_columns(lines)):])
    placed = ok(app_db.cli("archive", "hold", "add", "--table", children[0], "--key",
                           ",".join(key_text(value) for value in line_key), "--reason",
                           "VAT audit", "--by", "auditor", settings=settings))
    assert "(in ARCHIVE) by auditor: VAT audit" in placed

    expired = ok(app_db.cli("archive", "expire", *NOW_ARG, settings=settings))
    assert "kept 1 held" in expired
    after = rows_of(app_db.archive, names, archive=True)
    root_text = {tuple(map(key_text, key)) for key in expiring} - {tuple(map(key_text, held_root))}
    assert {tuple(map(key_text, key)) for key in after[invoices]} == {
        tuple(map(key_text, key)) for key in archived[invoices]} - root_text
    for name in names:  # what stays is unchanged, the held line and its invoice included
        assert all(archived[name][key] == row for key, row in after[name].items()), name
        assert len(after[name]) < len(archived[name]), name
    assert any(tuple(map(key_text, key)) == tuple(map(key_text, line_key))
               for key in after[children[0]])
    assert "all checks passed" in ok(app_db.cli("archive", "verify", settings=settings))
    status = ok(app_db.cli("archive", "status", settings=settings))
    assert {"archive", "purge", "expire"} <= {line.split()[2] for line in status.splitlines()[1:]
                                             if len(line.split()) > 2}
