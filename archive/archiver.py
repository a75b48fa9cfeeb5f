"""The archiver as its callers get it: settings, both engines and the resolved policies.

The composition root (:mod:`sediment.cli`) builds one :class:`Archiver` from the engines
Flask-SQLAlchemy configured and hands it to the archive commands and the scheduler; nothing
in this package creates an engine or imports Flask. The scheduler's job and ``archive run``
both come through :meth:`Archiver.run`, so what runs at 3 a.m. is exactly what an operator
runs by hand.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import sqlalchemy as sa

from archive.erase import ErasureOutcome, erase
from archive.existing import prepare_run
from archive.keys import parse_key
from archive.policy import ArchivePolicy
from archive.reflection import UnknownTable, reflect_primary
from archive.restore import RestoreRequest, policy_of, run_restore
from archive.restore_marks import without_restored
from archive.runner import ProgressCallback, RunLimits, RunOutcome, run_policy
from archive.sweep import expiry_of, purge_of, run_sweep
from archive.twins import TwinPlan, apply_plan, plan_twins
from sediment.core.databases import PRIMARY, Engines
from sediment.core.schema import metadata_of
from sediment.core.settings import Settings


@dataclass(frozen=True)
class Archiver:
    """Everything a run needs, resolved once at startup."""

    settings: Settings
    engines: Engines
    policies: tuple[ArchivePolicy, ...]
    #: The ARCHIVE twins of an existing PRIMARY's tables (the demo's are Alembic's).
    twins: tuple[sa.Table, ...] = ()

    def plan_twins(self) -> TwinPlan:
        """What ARCHIVE lacks for the policies' twins (nothing for the demo schema)."""
        return plan_twins(self.engines.archive, self.twins)

    def apply_twins(self, plan: TwinPlan) -> None:
        """Create or evolve the twins as planned, recording each change in the ledger."""
        apply_plan(self.engines.archive, plan, self.twins)

    def local_name(self, name: str) -> str:
        """``name`` as the policies name a table of PRIMARY's default schema:
        ``public.orders`` (or SQLite's ``main.orders``) becomes ``orders``; any other name
        is kept. ``archive erase`` took ``public.notes`` where restore and hold refused it."""
        schema, _, table = name.rpartition(".")
        if not schema:
            return name
        with self.engines.primary.connect() as connection:
            default = sa.inspect(connection).default_schema_name
        return table if schema == default else name

    def policy(self, name: str) -> ArchivePolicy:
        """The resolved policy called ``name``.

        :raises SettingsError: naming the unknown policy and the known ones.
        """
        self.settings.policy(name)  # raises, naming the unknown policy and the known ones
        return next(policy for policy in self.policies if policy.name == name)

    def as_of(self, name: str, now: datetime) -> ArchivePolicy:
        """The policy called ``name`` as a run at ``now`` applies it: leaving alone the
        roots restored too recently to be archived again."""
        return without_restored(self.engines.archive, self.policy(name), now)

    @property
    def enabled(self) -> list[str]:
        """The names of the enabled policies, in settings order."""
        return [policy.name for policy in self.policies if policy.enabled]

    def run(
        self,
        name: str,
        now: datetime,
        *,
        limits: RunLimits | None = None,
        stop: threading.Event | None = None,
        progress: ProgressCallback | None = None,
    ) -> RunOutcome:
        """Run the policy called ``name`` as of ``now``: archive its aged rows, or purge
        them when its ``mode`` is ``purge``.

        Beside an existing PRIMARY an archiving policy is resolved again, holding the
        runner lock, from PRIMARY's schema as it is now, and the twins follow it first.
        """
        policy = self.policy(name)
        if not policy.archives:
            return run_sweep(self.engines, purge_of(policy, now),
                             database=self.settings.database, settings=self.settings.archive,
                             limits=limits, stop=stop, progress=progress)
        prepare = None
        if self.settings.database.primary_schema == "existing":
            prepare = partial(prepare_run, self.settings.policy(name), self.engines,
                              evolve=self.settings.archive.evolve_schema)
        return run_policy(
            self.engines.primary, self.engines.archive, self.policy(name), now=now,
            database=self.settings.database, settings=self.settings.archive, limits=limits,
            stop=stop, progress=progress, prepare=prepare,
        )

    def expire(
        self,
        name: str,
        now: datetime,
        *,
        limits: RunLimits | None = None,
        stop: threading.Event | None = None,
        progress: ProgressCallback | None = None,
    ) -> RunOutcome | None:
        """Delete the ARCHIVE rows of the policy called ``name`` that have outlived its
        ``retention``; ``None`` when it has none."""
        expiry = expiry_of(self.policy(name), now)
        if expiry is None:
            return None
        return run_sweep(self.engines, expiry, database=self.settings.database,
                         settings=self.settings.archive, limits=limits, stop=stop,
                         progress=progress)

    def restore(self, request: RestoreRequest, now: datetime, *,
                stop: threading.Event | None = None,
                progress: ProgressCallback | None = None) -> RunOutcome:
        """Bring the request's archived roots (with their children) back to PRIMARY.

        :raises RestoreRefused: when the request names no archived table or run.
        """
        policy = policy_of(self.policies, self.engines.archive, request)
        return run_restore(self.engines, policy, request, now=now,
                           database=self.settings.database, settings=self.settings.archive,
                           stop=stop, progress=progress)

    def erasure_tables(self, subject: str) -> tuple[dict[str, sa.Table], dict[str, sa.Table]]:
        """PRIMARY's tables an erasure of ``subject`` may reach (the demo's, or the subject's
        table and every table referencing it, reflected), and the ARCHIVE twins of the
        archived ones.

        :raises UnknownTable: when PRIMARY has no table ``subject``.
        """
        if self.settings.database.primary_schema == "demo":
            tables = dict(metadata_of(PRIMARY).tables)
            if subject not in tables:
                raise UnknownTable(subject)
        else:
            tables = reflect_primary(self.engines.primary, [subject])
        twins = {name: twin for policy in self.policies if policy.archives
                 for name, twin in policy.twins.items()}
        return tables, twins

    def erase(self, subject: str, key_text: str, now: datetime) -> ErasureOutcome:
        """Erase a data subject's rows from both databases (:mod:`archive.erase`).

        :raises UnknownTable, BadKey, ErasureRefused: nothing was changed.
        """
        tables, twins = self.erasure_tables(subject)
        table = tables[subject]
        return erase(self.engines, tables, twins, table, parse_key(table, key_text),
                     null_out=self.settings.erasure.null_out,
                     secret=self.settings.service.secret_key, policies=self.policies, now=now)

    def scheduled(self, name: str, now: datetime, stop: threading.Event) -> list[RunOutcome]:
        """What the schedule does for a policy: run it, then expire what outlived its
        retention (when it has one, and the run ended well)."""
        outcomes = [self.run(name, now, stop=stop)]
        if outcomes[0].status == "done" and not stop.is_set():
            expired = self.expire(name, now, stop=stop)
            if expired is not None:
                outcomes.append(expired)
        return outcomes
