"""The command line: help for every command, one-line errors, exit codes, a real server."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import REPO, DatabaseFactory, env_for, free_port, run_cli

COMMANDS = [[], ["serve"], ["migrate"], ["seed"], ["report"], ["archive"], ["archive", "run"],
            ["archive", "status"], ["archive", "verify"], ["scheduler"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["seed", "--customers", "many"], "'many'"),
     (["serve", "--port", "99999"], "'99999'"),
     (["seed", "--until", "yesterday"], "'yesterday'"),
     # Longer than a timedelta holds: an OverflowError traceback.
     (["archive", "run", "--max-runtime", "999999999999d"],
      "'999999999999d' is longer than a century (36,525d)"),
     # Accepted: runs that ended at once, and a legal hold with no reason.
     (["archive", "run", "--max-runtime", "0s"], "'0s' must be longer than zero"),
     (["archive", "run", "--now", "9999-12-31"],
      "'9999-12-31' is outside the years 1 to 9998 (UTC)"),
     (["archive", "hold", "add", "--table", "orders", "--key", "5", "--reason", " "],
      "argument --reason: ' ' is empty"),
     # Past a 64-bit integer: SQLite's driver raised OverflowError.
     (["archive", "restore", "--run", "99999999999999999999"],
      "'99999999999999999999' is more than 9,223,372,036,854,775,807"),
     (["archive", "status", "--limit", "9223372036854775808"],
      "'9223372036854775808' is more than 9,223,372,036,854,775,807"),
     # Each customer is held in memory: a huge count ran until the kernel killed it.
     (["seed", "--customers", "1000001"], "'1000001' is more than 1,000,000")],
)
def test_bad_arguments_exit_2_naming_the_value(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli("migrate", env={"SEDIMENT_SERVICE__PORT": "eighty"})
    assert result.returncode == 2
    expected = "sediment: settings: service.port: 'eighty' is not a whole number"
    assert result.stderr.strip() == expected


def test_migrate_seed_and_refuse_reseed(databases: DatabaseFactory) -> None:
    env = env_for(*databases.pair("cli"))
    assert run_cli("migrate", env=env).returncode == 0
    seeded = run_cli("seed", "--customers", "20", "--orders", "50", "--events", "100", env=env)
    assert seeded.returncode == 0, seeded.stderr
    assert "rows/s" in seeded.stdout
    again = run_cli("seed", "--customers", "5", env=env)
    assert again.returncode == 1
    assert "--append" in again.stderr.strip().splitlines()[-1]


def test_serve_migrates_seeds_and_reports_healthy(databases: DatabaseFactory) -> None:
    port = free_port()
    env = {**env_for(*databases.pair("serve")), "SEDIMENT_SERVICE__SEED_WHEN_EMPTY": "true"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run_service.py"), "serve", "--port", str(port)],
        cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.3)
        assert body is not None, "service did not come up"
        assert '"status":"ok"' in body.replace(" ", "")
    finally:
        process.terminate()  # SIGTERM: a clean stop, the scheduler's jobs finished first
        output, _ = process.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in output
    assert "seeded" in output
    assert "policy events scheduled" in output
    assert "SIGTERM received: shutting down" in output
    assert process.returncode == 0, output[-2000:]


def test_archive_run_status_verify_and_lock_busy(databases: DatabaseFactory) -> None:
    from archive.locks import runner_lock
    from reporting.app import create_app
    from tests.support import engines_of, make_settings

    urls = databases.pair("archive_cli")
    env = env_for(*urls)
    assert run_cli("migrate", env=env).returncode == 0
    assert run_cli("seed", "--customers", "20", "--orders", "80", "--events", "300",
                   "--until", "2026-01-01", env=env).returncode == 0
    dry = run_cli("archive", "run", "--dry-run", "--now", "2026-01-01", env=env)
    assert dry.returncode == 0 and "would move" in dry.stdout
    unknown = run_cli("archive", "run", "--policy", "invoices", env=env)
    assert unknown.returncode == 2 and "'invoices'" in unknown.stderr.strip()
    primary = engines_of(create_app(make_settings(*urls))).primary
    with runner_lock(primary, "events") as held:
        assert held
        busy = run_cli("archive", "run", "--policy", "events", "--now", "2026-01-01", env=env)
        primary.dispose()
    assert busy.returncode == 3, busy.stderr
    assert "lock_busy" in busy.stdout
    done = run_cli("archive", "run", "--now", "2026-01-01", env=env)
    assert done.returncode == 0, done.stderr
    assert "done" in done.stdout
    status = run_cli("archive", "status", env=env)
    assert status.returncode == 0 and "lock_busy" in status.stdout and "done" in status.stdout
    verify = run_cli("archive", "verify", env=env)
    assert verify.returncode == 0, verify.stdout
    assert "all checks passed" in verify.stdout


def test_one_database_under_two_urls_is_refused_naming_the_key(
    databases: DatabaseFactory,
) -> None:
    primary, _ = databases.pair("same_db")
    if databases.backend == "postgres":
        # 127.0.0.1 against localhost, and the port spelled out: one database all the same.
        url = sa.engine.make_url(primary)
        other = url.set(host="localhost" if url.host != "localhost" else "127.0.0.1",
                        port=url.port or 5432).render_as_string(hide_password=False)
    else:
        path = sa.engine.make_url(primary).database
        assert path
        link = f"{path}.link"
        sqlite3.connect(path).close()
        os.symlink(path, link)
        other = f"sqlite:///{link}"
    result = run_cli("migrate", env=env_for(primary, other))
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.startswith("sediment: settings: database.archive_url:") and "same" in message
    assert len(message.splitlines()) == 1


def test_an_unreachable_database_is_one_line_naming_it(databases: DatabaseFactory) -> None:
    primary, _ = databases.pair("unreachable")
    result = run_cli("migrate", env=env_for(primary, "postgresql://nobody@127.0.0.1:1/none"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach the archive database" in lines[0] and "127.0.0.1:1" in lines[0]


#: PgBouncer's answer to a startup packet with ``options``, byte for byte (PgBouncer 1.18).
POOLER_REFUSAL = (b"E\x00\x00\x00;SFATAL\x00C08P01\x00"
                  b"Munsupported startup parameter: options\x00\x00")


def test_a_connection_pooler_in_front_of_postgresql_is_named_with_what_to_do(
        tmp_path: Path) -> None:
    """PgBouncer refuses the ``options`` startup parameter Sediment sets its session with:
    the bare "unsupported startup parameter: options" left an operator guessing."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def answer_like_pgbouncer() -> None:
            for _ in range(2):  # psycopg2 may try again without SSL
                try:
                    client, _ = server.accept()
                except OSError:
                    return
                with client:
                    length, code = struct.unpack("!ii", client.recv(8))
                    if code == 80877103:  # SSLRequest: no SSL here
                        client.sendall(b"N")
                        length, code = struct.unpack("!ii", client.recv(8))
                    client.recv(length - 8)
                    client.sendall(POOLER_REFUSAL)

        threading.Thread(target=answer_like_pgbouncer, daemon=True).start()
        url = f"postgresql://app@127.0.0.1:{port}/shop"
        result = run_cli("migrate", env=env_for(url, f"sqlite:///{tmp_path}/archive.sqlite3"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach the primary database" in lines[0]
    assert "unsupported startup parameter: options" in lines[0]
    assert "a connection pooler (such as PgBouncer) answers there" in lines[0]


def test_a_missing_archive_table_stops_migrate_until_repaired(
    databases: DatabaseFactory,
) -> None:
    urls = databases.pair("missing_table")
    env = env_for(*urls)
    assert run_cli("migrate", env=env).returncode == 0
    with sa.create_engine(urls[1], poolclass=sa.pool.NullPool).begin() as connection:
        connection.execute(sa.text("DROP TABLE events"))
    from reporting.app import create_app
    from tests.support import make_settings

    health = create_app(make_settings(*urls)).test_client().get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["databases"]["archive"]["missing_tables"] == ["events"]
    refused = run_cli("migrate", env=env)
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]  # after the INFO lines of the upgrade
    assert last.startswith("sediment: the archive database is at revision")
    assert "lacks tables events" in last and "--repair" in last
    assert "Traceback" not in refused.stderr
    repaired = run_cli("migrate", "--repair", env=env)
    assert repaired.returncode == 0, repaired.stderr
    assert "re-created missing archive tables, empty: events" in repaired.stdout
    assert create_app(make_settings(*urls)).test_client().get("/healthz").status_code == 200


def test_a_database_never_migrated_or_behind_stops_each_command_naming_migrate(
    databases: DatabaseFactory,
) -> None:
    """Every command that reads Sediment's tables checks both databases' revisions first:
    it was "database error: no such table: archive_runs" (or a report file's "no such
    table: orders"), and a database an older Sediment migrated failed on a column."""
    urls = databases.pair("unmigrated")
    env = env_for(*urls)
    for command in (["archive", "run"], ["archive", "status"], ["archive", "verify"],
                    ["report", "orders", "--csv", "-"], ["reports-check"]):
        result = run_cli(*command, env=env)
        assert result.returncode == 1, (command, result.stdout)
        assert result.stderr.strip().splitlines() == [
            "sediment: the primary database has no Sediment schema yet: run 'run_service.py "
            "migrate' ('serve' migrates at start unless service.migrate_on_start = false; if "
            "a newer Sediment migrated it, run that one)"], command
        assert result.stdout == "", command
    for url in urls:
        with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as connection:
            assert sa.inspect(connection).get_table_names() == [], "a command wrote a table"

    assert run_cli("migrate", env=env).returncode == 0
    from alembic import command as alembic_command

    from sediment.core.databases import ARCHIVE
    from sediment.core.migrations import alembic_config, head_revision

    archive = sa.create_engine(urls[1], poolclass=sa.pool.NullPool)
    alembic_command.downgrade(alembic_config(ARCHIVE, archive), "-1")
    with archive.connect() as connection:
        older = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    behind = run_cli("archive", "status", env=env)
    assert behind.returncode == 1
    assert behind.stderr.strip().splitlines() == [
        f"sediment: the archive database is at revision {older}, and this Sediment's schema "
        f"is {head_revision(ARCHIVE)}: run 'run_service.py migrate' ('serve' migrates at "
        "start unless service.migrate_on_start = false; if a newer Sediment migrated it, run "
        "that one)"]
    assert run_cli("migrate", env=env).returncode == 0
    status = run_cli("archive", "status", env=env)
    assert status.returncode == 0, status.stderr


def test_archive_run_with_no_enabled_policy_says_so(databases: DatabaseFactory) -> None:
    """``archive run`` with every policy disabled printed an empty table (and ``--dry-run``
    nothing at all), as if it had looked and found no aged rows."""
    env = {**env_for(*databases.pair("no_policy")),
           "SEDIMENT_POLICY__ORDERS__ENABLED": "false",
           "SEDIMENT_POLICY__EVENTS__ENABLED": "false"}
    assert run_cli("migrate", env=env).returncode == 0
    for dry_run in ([], ["--dry-run"]):
        result = run_cli("archive", "run", *dry_run, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            "nothing to run: no policy is enabled; add a [policy.NAME] table to the settings "
            "file, or set policy.NAME.enabled = true"]


def test_the_installed_console_command_is_the_same_command_line() -> None:
    """``pip install`` puts ``sediment`` beside the interpreter; it runs the same main()."""
    script = Path(sys.executable).parent / ("sediment.exe" if os.name == "nt" else "sediment")
    assert script.exists(), f"{script} missing: is the project installed (scripts/dev.py)?"
    result = subprocess.run([str(script), "archive", "run", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sediment archive run")


def test_scheduler_command_runs_until_sigterm(databases: DatabaseFactory) -> None:
    env = env_for(*databases.pair("scheduler"))
    assert run_cli("migrate", env=env).returncode == 0
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run_service.py"), "scheduler"], cwd=REPO,
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "archival scheduler running" in line:
                break
        process.send_signal(signal.SIGTERM)
        output = "".join(lines) + process.communicate(timeout=30)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "policy events scheduled" in output and "Scheduler has been shut down" in output
