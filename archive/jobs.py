"""Glue between the Flask app and the runner: run a configured policy by name.

The scheduler's job and ``archive run`` both come through :func:`run_configured_policy`,
so what runs at 3 a.m. is exactly what an operator runs by hand.
"""

from __future__ import annotations

import threading
from datetime import datetime

from flask import Flask

from archive.runner import ProgressCallback, RunLimits, RunReport, run_policy
from reporting.app import policies_of, settings_of
from reporting.db import ARCHIVE, PRIMARY, db


def run_configured_policy(
    app: Flask,
    name: str,
    now: datetime,
    *,
    limits: RunLimits | None = None,
    stop: threading.Event | None = None,
    progress: ProgressCallback | None = None,
) -> RunReport:
    """Run the policy called ``name`` with the app's engines and settings."""
    settings = settings_of(app)
    settings.policy(name)  # raises SettingsError naming the unknown policy
    policy = next(p for p in policies_of(app) if p.name == name)
    with app.app_context():
        return run_policy(
            db.engines[PRIMARY], db.engines[ARCHIVE], policy, now=now,
            database=settings.database, settings=settings.archive, limits=limits, stop=stop,
            progress=progress,
        )
