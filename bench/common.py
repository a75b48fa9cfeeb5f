"""Helpers shared by the benchmarks: throw-away databases, servers on free ports."""

from __future__ import annotations

import http.client
import os
import socket
import tempfile
import time
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


def free_port() -> int:
    """A TCP port nobody listens on now, for a server the benchmark starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(port: int, path: str = "/healthz", seconds: float = 90) -> None:
    """Poll ``path`` until it answers 200; exit the benchmark if it never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server on port {port} did not come up")
