"""The marks restored roots carry in ARCHIVE (``archive_restores``), and what they mean to
a run: a restored root ages again from the moment of its restore, so until its mark's
``until`` the policy's runs leave it alone although its age column says it is old.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

import sqlalchemy as sa

from archive.keys import Key, key_of_texts
from archive.policy import ArchivePolicy
from sediment.core.schema.archive import ArchiveRestore

marks: sa.Table = ArchiveRestore.__table__  # type: ignore[assignment]


def restored_keys(archive: sa.Engine | sa.Connection, policy: ArchivePolicy,
                  now: datetime) -> tuple[Key, ...]:
    """The policy's roots restored less than ``older_than`` before ``now``."""
    if isinstance(archive, sa.Engine):
        with archive.connect() as connection:
            return restored_keys(connection, policy, now)
    texts = archive.execute(sa.select(marks.c.row_key).where(
        marks.c.table_name == policy.root.fullname, marks.c.until > now)).scalars()
    return tuple(dict.fromkeys(key_of_texts(policy.root, json.loads(text)) for text in texts))


def without_restored(archive: sa.Engine, policy: ArchivePolicy,
                     now: datetime) -> ArchivePolicy:
    """``policy`` leaving alone the roots restored too recently to be archived again."""
    if not policy.archives:
        return policy
    return dataclasses.replace(policy, excluded=restored_keys(archive, policy, now))
