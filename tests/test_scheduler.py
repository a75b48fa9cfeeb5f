"""The archival schedule: safe job options, and a scheduled run that really archives."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from flask import Flask

from archive.archiver import Archiver
from archive.scheduler import build_scheduler, start_in_background
from tests.archiving import seed_shop
from tests.support import policies_of, settings_of


def test_one_job_per_enabled_policy_with_safe_options(app: Flask) -> None:
    policies = policies_of(app)
    disabled = (*policies[:1], dataclasses.replace(policies[1], enabled=False))
    scheduler = build_scheduler(disabled, settings_of(app).scheduler, lambda name, now: None)
    jobs = scheduler.get_jobs()
    assert [job.id for job in jobs] == ["archive:orders"]
    job = jobs[0]
    assert job.coalesce is True
    assert job.max_instances == 1
    assert job.misfire_grace_time == 3600


def test_a_schedule_with_no_enabled_policy_says_so(app: Flask,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A scheduler with nothing to run started in silence: an operator whose policies
    were all disabled, or misnamed, learnt it from rows that never moved."""
    disabled = tuple(dataclasses.replace(policy, enabled=False) for policy in policies_of(app))
    with caplog.at_level(logging.WARNING, logger="archive.scheduler"):
        scheduler = build_scheduler(disabled, settings_of(app).scheduler,
                                    lambda name, now: None)
    assert scheduler.get_jobs() == []
    assert [record.getMessage() for record in caplog.records] == [
        "the archival scheduler has nothing to run: no policy is enabled; add a "
        "[policy.NAME] table to the settings file, or set policy.NAME.enabled = true (or, "
        "where Sediment only serves reports, set scheduler.enabled = false)"]


def test_scheduled_job_archives_through_the_same_function_as_the_cli(
    archiver: Archiver, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    background = start_in_background(archiver)
    try:
        background.scheduler.get_job("archive:events").modify(next_run_time=datetime.now(UTC))
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status is None:
            with archive.connect() as connection:
                status = connection.execute(sa.text(
                    "SELECT status FROM archive_runs WHERE policy = 'events' "
                    "AND status <> 'running'")).scalar()
            time.sleep(0.1)
    finally:
        background.shutdown()
    assert status == "done"
    with archive.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one() > 0
