"""Helpers shared by the benchmarks: throw-away databases."""

from __future__ import annotations

import os
import tempfile
import uuid

import sqlalchemy as sa

ADMIN_URL = os.environ.get("SEDIMENT_TEST_POSTGRES_URL",
                           "postgresql+psycopg2://root@127.0.0.1:5432/test")


class databases:
    """Two fresh databases for the run, dropped afterwards."""

    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite
        self.names: list[str] = []
        self.folder: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> tuple[str, str]:
        if self.sqlite:
            self.folder = tempfile.TemporaryDirectory(prefix="sediment-bench-")
            return (f"sqlite:///{self.folder.name}/primary.sqlite3",
                    f"sqlite:///{self.folder.name}/archive.sqlite3")
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        tag = uuid.uuid4().hex[:8]
        with admin.connect() as connection:
            for side in ("primary", "archive"):
                name = f"sediment_bench_{side}_{tag}"
                connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
                self.names.append(name)
        admin.dispose()
        base = sa.engine.make_url(ADMIN_URL)
        urls = [base.set(database=n).render_as_string(hide_password=False) for n in self.names]
        return urls[0], urls[1]

    def __exit__(self, *exc: object) -> None:
        if self.folder is not None:
            self.folder.cleanup()
        if self.names:
            admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                for name in self.names:
                    connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def copy_pipe(primary: sa.Engine, archive: sa.Engine, copies: list[tuple[str, str]],
              deletes: list[str]) -> None:
    """The floor of archiving: ``COPY (select) TO STDOUT`` into ``COPY target FROM STDIN``
    for each ``(select, target)``, one commit, then each ``DELETE FROM`` table and one
    commit. No batching, locking or verification."""
    import io

    source = primary.raw_connection()
    target = archive.raw_connection()
    try:
        for select, into in copies:
            buffer = io.BytesIO()
            source.cursor().copy_expert(f"COPY ({select}) TO STDOUT", buffer)
            buffer.seek(0)
            target.cursor().copy_expert(f"COPY {into} FROM STDIN", buffer)
        target.commit()
        cursor = source.cursor()
        for table in deletes:
            cursor.execute(f"DELETE FROM {table}")
        source.commit()
    finally:
        source.close()
        target.close()


def service_environ(primary_url: str, archive_url: str, **extra: str) -> dict[str, str]:
    """Settings for a benchmarked service: the two databases, no demo seed, no scheduler."""
    return {"SEDIMENT_DATABASE__PRIMARY_URL": primary_url,
            "SEDIMENT_DATABASE__ARCHIVE_URL": archive_url,
            "SEDIMENT_SERVICE__SEED_WHEN_EMPTY": "false",
            "SEDIMENT_SCHEDULER__ENABLED": "false",
            "SEDIMENT_SERVICE__LOG_LEVEL": "WARNING", **extra}
