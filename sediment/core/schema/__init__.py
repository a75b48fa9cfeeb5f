"""The schema of both databases: the demo PRIMARY tables, and ARCHIVE's twins and ledger.

Each database has its own declarative base and ``MetaData``, so that each migration history
(``migrations/primary/``, ``migrations/archive/``) compares against exactly its own tables.
Beside an existing application's PRIMARY (``database.primary_schema = "existing"``)
Sediment owns no table of PRIMARY and only the ledger of ARCHIVE: the twins of that
application's tables are made from its reflected schema (:mod:`archive.twins`).
"""

from __future__ import annotations

import functools
from typing import Literal

import sqlalchemy as sa

from sediment.core.databases import PRIMARY, Database
from sediment.core.schema.archive import LEDGER_TABLES, ArchiveModel
from sediment.core.schema.primary import PrimaryModel
from sediment.core.schema.types import metadata_for

#: What PRIMARY holds: Sediment's demo shop, or an existing application's tables.
PrimarySchema = Literal["demo", "existing"]


def metadata_of(database: Database, primary_schema: PrimarySchema = "demo") -> sa.MetaData:
    """The tables Sediment's own schema (its migration history) declares in ``database``."""
    if primary_schema == "demo":
        return PrimaryModel.metadata if database == PRIMARY else ArchiveModel.metadata
    return _owned_beside_existing(database)


@functools.cache
def _owned_beside_existing(database: Database) -> sa.MetaData:
    metadata = metadata_for(database)
    if database != PRIMARY:
        for name in LEDGER_TABLES:
            ArchiveModel.metadata.tables[name].to_metadata(metadata)
    return metadata
