"""The archival schedule: one APScheduler 3.x job per enabled policy.

Every process that starts a scheduler runs the jobs (each web replica, each worker); the
runner lock, not the scheduler, is what keeps a policy to one runner at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from archive.archiver import Archiver
from archive.policy import ArchivePolicy
from sediment.core.settings import SchedulerSettings

logger = logging.getLogger(__name__)

#: Runs one policy at the given instant; the CLI's ``archive run`` calls the same function.
PolicyJob = Callable[[str, datetime], object]


def build_scheduler(
    policies: tuple[ArchivePolicy, ...],
    settings: SchedulerSettings,
    job: PolicyJob,
    scheduler: BaseScheduler | None = None,
) -> BaseScheduler:
    """Add one cron job per enabled policy to ``scheduler`` (a new background one by default).

    ``coalesce`` folds runs missed while the process was down into one; ``max_instances=1``
    keeps a slow run from overlapping the next in this process; ``misfire_grace_time`` lets
    a run start late instead of being skipped (APScheduler's default is one second).
    """
    scheduler = scheduler or BackgroundScheduler(timezone=settings.timezone)
    for policy in policies:
        if not policy.enabled:
            logger.info("policy %s is disabled: not scheduled", policy.name)
            continue
        scheduler.add_job(
            _timed(job), CronTrigger.from_crontab(policy.schedule, timezone=settings.timezone),
            args=[policy.name], id=f"archive:{policy.name}", name=f"archive {policy.name}",
            coalesce=True, max_instances=1,
            misfire_grace_time=int(settings.misfire_grace_time.total_seconds()),
            replace_existing=True,
        )
        logger.info("policy %s scheduled: %s (%s)", policy.name, policy.schedule,
                    settings.timezone)
    if not scheduler.get_jobs():
        logger.warning("the archival scheduler has nothing to run: %s (or, where Sediment "
                       "only serves reports, set scheduler.enabled = false)", NO_ENABLED_POLICY)
    return scheduler


#: What to do when no policy is enabled (a scheduler, or ``archive run``, with nothing to run).
NO_ENABLED_POLICY = ("no policy is enabled; add a [policy.NAME] table to the settings file, "
                     "or set policy.NAME.enabled = true")


def _timed(job: PolicyJob) -> Callable[[str], None]:
    def run(policy: str) -> None:
        try:
            job(policy, datetime.now(UTC))
        except Exception:  # the job boundary: log it, keep the scheduler alive
            logger.exception("scheduled archival of policy %s failed", policy)
    return run



@dataclass
class BackgroundArchiver:
    """The archival schedule running in this process, and the flag that stops its jobs."""

    scheduler: BackgroundScheduler
    stop: threading.Event

    def shutdown(self) -> None:
        """Ask running jobs to stop after their current batch, then wait for them."""
        self.stop.set()
        self.scheduler.shutdown(wait=True)


def start_in_background(archiver: Archiver) -> BackgroundArchiver:
    """Start the archival schedule in a background thread of this process."""
    stop = threading.Event()
    settings = archiver.settings.scheduler
    scheduler = BackgroundScheduler(timezone=settings.timezone)
    build_scheduler(archiver.policies, settings,
                    lambda name, now: archiver.scheduled(name, now, stop), scheduler)
    scheduler.start()
    return BackgroundArchiver(scheduler, stop)
