"""Settings: defaults, environment overrides, and errors that name the key at fault."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from sediment.core.settings import (
    SettingsError,
    as_flat_dict,
    load_settings,
    normalise_database_url,
    parse_duration,
)
from sediment.service import resolve_policies_of

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_settings_load_and_anchor_sqlite_paths_at_the_file() -> None:
    settings = load_settings(REPO / "settings.toml", environ={})
    assert settings.database.primary_url == f"sqlite:///{REPO / 'data' / 'primary.sqlite3'}"
    assert [p.name for p in settings.policies] == ["orders", "events"]
    orders = settings.policy("orders")
    assert orders.older_than == timedelta(days=365)
    assert orders.children == ("order_items", "payments")
    assert dict(orders.match) == {"status": ("closed", "cancelled")}


def test_environment_overrides_any_key_with_its_type(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""), environ={
        "SEDIMENT_SERVICE__PORT": "9001",
        "SEDIMENT_SCHEDULER__ENABLED": "false",
        "SEDIMENT_SERVICE__SECRET_KEY": "12345",
        "SEDIMENT_ARCHIVE__THROTTLE": "250ms",
        "SEDIMENT_DATABASE__PRIMARY_URL": "postgresql://u@h/db",
        "SEDIMENT_UNRELATED": "ignored: no double underscore",
    })
    assert settings.service.port == 9001
    assert settings.scheduler.enabled is False
    assert settings.service.secret_key == "12345"
    assert settings.archive.throttle == timedelta(milliseconds=250)
    assert settings.database.primary_url == "postgresql+psycopg2://u@h/db"


def test_environment_override_reaches_policy_tables(tmp_path: Path) -> None:
    path = write(tmp_path, '[policy.events]\ntable = "events"\nage_column = "occurred_at"\n')
    settings = load_settings(path, environ={"SEDIMENT_POLICY__EVENTS__BATCH_SIZE": "777"})
    assert settings.policy("events").batch_size == 777


@pytest.mark.parametrize(
    ("text", "environ", "key"),
    [
        ("[service]\nprot = 1\n", {}, "service.prot"),
        ("[servce]\n", {}, "servce"),
        ("[service]\nport = 'eighty'\n", {}, "service.port"),
        ("[service]\nport = 70000\n", {}, "service.port"),
        ("", {"SEDIMENT_SERVICE__PORT": "eighty"}, "service.port"),
        ("", {"SEDIMENT_SERVICE__NOPE": "1"}, "service.nope"),
        ("[database]\nprimary_url = 'mysql://x/y'\n", {}, "database.primary_url"),
        ("[database]\narchive_url = 'not a url'\n", {}, "database.archive_url"),
        ("[database]\narchive_url = 'sqlite:///data/primary.sqlite3'\n", {},
         "database.archive_url"),
        ("[archive]\nthrottle = 'soon'\n", {}, "archive.throttle"),
        ("[reports]\ndefault_limit = 5000\n", {}, "reports.default_limit"),
        # Slow CSV readers must never hold every thread.
        ("[reports]\ncsv_max_concurrent = 8\n", {}, "reports.csv_max_concurrent"),
        ("[service]\nthreads = 4\n", {}, "reports.csv_max_concurrent"),
        ("[service]\nconnection_limit = 0\n", {}, "service.connection_limit"),
        # The same file spelled another way.
        ("[database]\narchive_url = 'sqlite:///data/../data/primary.sqlite3'\n", {},
         "database.archive_url"),
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\nschedule = '61 * * * *'\n", {},
         "policy.x.schedule"),
        # Signatures anyone can make; sign-ins that never last; a scheduler traceback.
        ("[service]\nsecret_key = ' '\n", {}, "service.secret_key"),
        ("[auth]\nsession_lifetime = '0s'\n", {}, "auth.session_lifetime"),
        ("[scheduler]\nmisfire_grace_time = '500ms'\n", {}, "scheduler.misfire_grace_time"),
        # Scheduled and logged like any other, and never ran.
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\nschedule = '0 0 31 2 *'\n",
         {}, "policy.x.schedule"),
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\nolder_than = '0d'\n", {},
         "policy.x.older_than"),
        ("[policy.x]\nage_column = 'closed_at'\n", {}, "policy.x.table"),
        # Put in parentheses inside Sediment's statements: text that closed them widened
        # the condition, a ';' sent a statement of its own.
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\n"
         "where = \"status = 'closed') OR (true\"\n", {}, "policy.x.where"),
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\n"
         "where = \"status = 'closed'; DELETE FROM customers\"\n", {}, "policy.x.where"),
        # Read only when the scheduler started: a traceback of ZoneInfoNotFoundError.
        ("[scheduler]\ntimezone = 'Mars/Olympus'\n", {}, "scheduler.timezone"),
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\nage_zone = 'Nowhere'\n", {},
         "policy.x.age_zone"),
        # Past PostgreSQL's int4 of milliseconds: every connection failed, naming no key.
        ("[database]\nstatement_timeout_ms = 2147483648\n", {}, "database.statement_timeout_ms"),
        ("[database]\nlock_timeout_ms = 2147483648000\n", {}, "database.lock_timeout_ms"),
        ("[reports]\nstatement_timeout_ms = 10000000000\n", {}, "reports.statement_timeout_ms"),
        # serve started 100,000 threads for minutes; listen() overflowed with a traceback.
        ("[service]\nthreads = 100000\n", {}, "service.threads"),
        ("[service]\nworkers = 5000\n", {}, "service.workers"),
        ("[service]\nbacklog = 1000000000000000\n", {}, "service.backlog"),
        # Past what a timedelta, a wait or a year holds: an OverflowError (or ValueError)
        # naming no key, at startup or at the first run.
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\n"
         "older_than = '999999999999d'\n", {}, "policy.x.older_than"),
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\nolder_than = '800000d'\n",
         {}, "policy.x.older_than"),
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\nretention = '3000y'\n", {},
         "policy.x.retention"),
        ("[archive]\nthrottle = '999999d'\n", {}, "archive.throttle"),
        # Past a 64-bit integer (SQLite's LIMIT overflowed: every run failed), or more rows
        # than memory should hold at once.
        ("[policy.x]\ntable = 'orders'\nage_column = 'closed_at'\n",
         {"SEDIMENT_POLICY__X__BATCH_SIZE": "99999999999999999999"}, "policy.x.batch_size"),
        ("[reports]\nmax_limit = 2000000\n", {}, "reports.max_limit"),
        ("", {"SEDIMENT_DATABASE__POOL_SIZE": "99999999999999999999"}, "database.pool_size"),
        # The name of its lock file: every run ended in a FileNotFoundError traceback.
        ("[policy.\"a/b\"]\ntable = 'orders'\nage_column = 'closed_at'\n", {}, "policy.a/b"),
        (f"[policy.{'x' * 65}]\ntable = 'orders'\nage_column = 'closed_at'\n", {},
         f"policy.{'x' * 65}"),
        ("", {"SEDIMENT_AUTH__SESSION_LIFETIME": "9999999d"}, "auth.session_lifetime"),
        # A mistyped path to an application's SQLite file was created empty, folders and
        # all, and startup then said the policy's table was missing.
        ("[database]\nprimary_url = 'sqlite:///no/app.db'\nprimary_schema = 'existing'\n", {},
         "database.primary_url"),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, text: str, environ: dict[str, str], key: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, text), environ=environ)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"settings: {key}: ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "key", "example"), [
    ("[policy.x]\nage_column = 'closed_at'\n", "policy.x.table", 'table = "events"'),
    ("[policy.x]\ntable = 'orders'\n", "policy.x.age_column", 'age_column = "created_at"'),
])
def test_a_policy_missing_its_table_or_age_column_says_it_is_required(
    tmp_path: Path, text: str, key: str, example: str
) -> None:
    """A missing table read "'' is not a table name", a missing age_column "names no
    column": neither said that the key was simply left out."""
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, text), environ={})
    assert caught.value.key == key
    assert "is required" in str(caught.value) and example in str(caught.value)


@pytest.mark.parametrize(("content", "says"), [
    (None, "cannot be read: Is a directory"),
    (b"\xff\xfe[service]\n", "not UTF-8 text (byte 0)"),
])
def test_an_unreadable_settings_file_is_named_in_one_line(
        tmp_path: Path, content: bytes | None, says: str) -> None:
    """A folder, or a file saved as UTF-16, was an IsADirectoryError or UnicodeDecodeError
    traceback."""
    path = tmp_path / "settings.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ={})
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_missing_settings_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(
    ("policy", "key"),
    [
        ("table = 'invoices'\nage_column = 'x'", "policy.p.table"),
        ("table = 'customers'\nage_column = 'created_at'", "policy.p.table"),
        ("table = 'orders'\nage_column = 'shipped_at'", "policy.p.age_column"),
        ("table = 'orders'\nage_column = 'status'", "policy.p.age_column"),
        ("table = 'orders'\nage_column = 'closed_at'\nmatch = { colour = ['red'] }",
         "policy.p.match.colour"),
        ("table = 'orders'\nage_column = 'closed_at'\nchildren = ['events']", "policy.p.children"),
        # A value the column's declared choices can never hold.
        ("table = 'orders'\nage_column = 'closed_at'\nmatch = { status = ['closed', 'closd'] }",
         "policy.p.match.status"),
    ],
)
def test_policy_naming_unknown_schema_stops_startup(tmp_path: Path, policy: str, key: str) -> None:
    settings = load_settings(write(tmp_path, f"[policy.p]\n{policy}\n"), environ={})
    with pytest.raises(SettingsError) as caught:
        resolve_policies_of(settings)
    assert caught.value.key == key


def test_bare_postgresql_url_uses_psycopg2() -> None:
    assert normalise_database_url("postgresql://a@b/c").startswith("postgresql+psycopg2://")
    assert normalise_database_url("postgres://a@b/c").startswith("postgresql+psycopg2://")
    with pytest.raises(ValueError, match="in-memory"):
        normalise_database_url("sqlite://")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", timedelta(seconds=30)), ("250ms", timedelta(milliseconds=250)),
     ("15m", timedelta(minutes=15)), ("12h", timedelta(hours=12)),
     ("365d", timedelta(days=365)), ("2w", timedelta(weeks=2))],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "-5d", "1y", "d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_every_setting_is_documented_in_settings_toml_and_readme() -> None:
    settings_text = (REPO / "settings.toml").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for dotted in as_flat_dict(load_settings(REPO / "settings.toml", environ={})):
        section, key = dotted.split(".")
        block = settings_text.split(f"[{section}]")[1].split("\n[")[0]
        line = re.search(rf"^(?P<comments>(#.*\n)*){key} = ", block, re.MULTILINE)
        assert line and line.group("comments"), f"{dotted} has no comment in settings.toml"
        assert f"`{dotted}`" in readme, f"{dotted} is not documented in README.md"


def test_a_symlinked_sqlite_archive_is_the_primary(tmp_path: Path) -> None:
    (tmp_path / "primary.sqlite3").touch()
    (tmp_path / "archive.sqlite3").symlink_to(tmp_path / "primary.sqlite3")
    text = ("[database]\nprimary_url = 'sqlite:///primary.sqlite3'\n"
            "archive_url = 'sqlite:///archive.sqlite3'\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, text), environ={})
    assert caught.value.key == "database.archive_url"
