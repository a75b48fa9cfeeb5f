"""The schema of both databases: the demo PRIMARY tables, and ARCHIVE's twins and ledger.

Each database has its own declarative base and ``MetaData``, so that each migration history
(``migrations/primary/``, ``migrations/archive/``) compares against exactly its own tables.
"""

from __future__ import annotations

import sqlalchemy as sa

from sediment.core.databases import PRIMARY, Database
from sediment.core.schema.archive import ArchiveModel
from sediment.core.schema.primary import PrimaryModel


def metadata_of(database: Database) -> sa.MetaData:
    """The tables Sediment's schema declares in ``database``."""
    return PrimaryModel.metadata if database == PRIMARY else ArchiveModel.metadata
