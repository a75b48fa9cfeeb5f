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

from archive.policy import ArchivePolicy
from archive.runner import ProgressCallback, RunLimits, RunOutcome, run_policy
from sediment.core.databases import Engines
from sediment.core.settings import Settings


@dataclass(frozen=True)
class Archiver:
    """Everything a run needs, resolved once at startup."""

    settings: Settings
    engines: Engines
    policies: tuple[ArchivePolicy, ...]

    def policy(self, name: str) -> ArchivePolicy:
        """The resolved policy called ``name``.

        :raises SettingsError: naming the unknown policy and the known ones.
        """
        self.settings.policy(name)  # raises, naming the unknown policy and the known ones
        return next(policy for policy in self.policies if policy.name == name)

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
        """Run the policy called ``name`` as of ``now``."""
        return run_policy(
            self.engines.primary, self.engines.archive, self.policy(name), now=now,
            database=self.settings.database, settings=self.settings.archive, limits=limits,
            stop=stop, progress=progress,
        )
