"""Checks of the resolved policies against the live PRIMARY, before anything runs.

Resolving a policy (:mod:`archive.policy`) needs no connection; a ``where`` condition can
only be judged by the database that will run it. Each policy's condition is planned once
(``LIMIT 0``: nothing is read) inside a transaction that is rolled back, so a typo stops
the command with the policy, the expression and the database's own message instead of
failing every scheduled run.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from archive.policy import ArchivePolicy
from sediment.core.error_text import first_line
from sediment.core.settings import SettingsError


def check_conditions(primary: sa.Engine, policies: Sequence[ArchivePolicy]) -> None:
    """Make PRIMARY plan each policy's ``where`` condition on its root table.

    :raises SettingsError: naming ``policy.<name>.where``, the expression and the message.
    """
    for policy in policies:
        if not policy.where:
            continue
        probe = sa.select(sa.literal(1)).select_from(policy.root).where(policy.condition)
        with primary.connect() as connection:
            try:
                connection.execute(probe.limit(0)).all()
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated:
                    raise  # the database went away: not the condition's fault
                raise SettingsError(
                    f"policy.{policy.name}.where",
                    f"{policy.where!r} is not a condition PRIMARY accepts on table "
                    f"{policy.root.fullname!r}: {first_line(exc)}") from exc
            finally:
                connection.rollback()
