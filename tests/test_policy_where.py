"""A policy's ``where`` condition, on both backends: it narrows what moves, and a bad one
stops the command before anything runs, naming the policy and the database's message."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa
from flask import Flask

from archive.policy import ArchivePolicy
from archive.preflight import check_conditions
from archive.verify import verify_archive
from sediment.core.settings import SettingsError
from tests.archiving import run, seed_shop
from tests.support import DatabaseFactory, env_for, policies_of, run_cli


def events_policy(app: Flask, where: str) -> ArchivePolicy:
    policy = next(p for p in policies_of(app) if p.name == "events")
    return dataclasses.replace(policy, where=where)


def test_only_rows_meeting_the_condition_move(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    policy = events_policy(app, "kind <> 'login'")
    check_conditions(primary, [policy])
    outcome = run(app, primary, archive, policy)
    assert outcome.status == "done" and outcome.rows > 0
    with archive.connect() as connection:
        moved = dict(connection.execute(sa.text(
            "SELECT kind = 'login', count(*) FROM events GROUP BY kind = 'login'")).all())
    assert moved.get(True, 0) == 0 and moved[False] == outcome.rows
    with primary.connect() as connection:
        aged_logins = connection.execute(sa.select(sa.func.count()).where(
            policy.age.before(outcome.cutoff), policy.root.c.kind == "login")).scalar_one()
    assert aged_logins > 0  # aged, but excluded by the condition: still in PRIMARY
    found = verify_archive(primary, archive, [policy])
    assert found.ok, found.problems


@pytest.mark.parametrize("where", ["kind = ", "colour = 'red'", "kind <> 'login'; DROP TABLE x"])
def test_a_condition_primary_refuses_names_the_policy(
    app: Flask, primary: sa.Engine, where: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        check_conditions(primary, [events_policy(app, where)])
    assert caught.value.key == "policy.events.where"
    assert repr(where) in str(caught.value)
    with primary.connect() as connection:  # nothing ran, nothing changed
        assert sa.inspect(connection).has_table("events")


def test_the_cli_stops_on_a_bad_condition_in_one_line(databases: DatabaseFactory) -> None:
    env = env_for(*databases.pair("where_cli"))
    assert run_cli("migrate", env=env).returncode == 0
    bad = run_cli("archive", "run", "--policy", "events",
                  env={**env, "SEDIMENT_POLICY__EVENTS__WHERE": "kind = "})
    assert bad.returncode == 2, bad.stderr
    line = bad.stderr.strip()
    assert "\n" not in line and "policy.events.where" in line and "'kind ='" in line
