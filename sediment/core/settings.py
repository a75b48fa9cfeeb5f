"""Typed, validated settings loaded from ``settings.toml`` and ``SEDIMENT_*`` variables.

A leaf module: it imports nothing from the project. Every key has a default, a type and a
line of documentation in ``settings.toml``; an unknown key or a bad value raises
:class:`SettingsError` naming the key, so a typo stops startup instead of being ignored.

Environment variables override keys by path: ``SEDIMENT_DATABASE__PRIMARY_URL`` sets
``[database] primary_url`` and ``SEDIMENT_POLICY__EVENTS__BATCH_SIZE`` sets
``[policy.events] batch_size``. Only variables with a ``__`` after the prefix are read.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from apscheduler.triggers.cron import CronTrigger

from sediment.core.sql_condition import condition_problem

ENV_PREFIX = "SEDIMENT_"
#: The repository checkout Sediment runs from: ``settings.toml`` and ``migrations/`` live here.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SETTINGS_PATH = PROJECT_ROOT / "settings.toml"


class SettingsError(ValueError):
    """A settings key is unknown or holds a value Sediment cannot use."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"settings: {key}: {message}")
        self.key = key


@dataclass(frozen=True)
class DatabaseSettings:
    primary_url: str = "sqlite:///data/primary.sqlite3"
    archive_url: str = "sqlite:///data/archive.sqlite3"
    #: "demo": Sediment's own demo shop, migrated by Sediment; "existing": another
    #: application's database, read by reflection and never migrated.
    primary_schema: Literal["demo", "existing"] = "demo"
    pool_size: int = 5
    statement_timeout_ms: int = 60_000
    lock_timeout_ms: int = 5_000


@dataclass(frozen=True)
class ServiceSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 8
    secret_key: str = "sediment-development-key-change-me"
    migrate_on_start: bool = True
    seed_when_empty: bool = True
    log_level: str = "INFO"
    workers: int = 1
    connection_limit: int = 1000
    backlog: int = 2048
    #: "text" (one readable line per record) or "json" (one JSON object per line).
    log_format: Literal["text", "json"] = "text"
    #: Serve on a non-loopback address although authentication is off, the secret key is
    #: the development one or demo seeding is on (logged loudly at every start).
    allow_insecure: bool = False


@dataclass(frozen=True)
class ReportSettings:
    default_limit: int = 100
    max_limit: int = 1000
    statement_timeout_ms: int = 30_000
    csv_max_rows: int = 5_000_000
    csv_max_concurrent: int = 4
    aggregate_cache: timedelta = timedelta(seconds=30)
    #: Tables of PRIMARY served at /api/v1/tables/<name>; empty: every archived table and
    #: the tables they reference.
    tables: tuple[str, ...] = ()
    #: Tables never served, whatever ``tables`` says.
    hide_tables: tuple[str, ...] = ()
    #: ``table.column`` names never served (personal data): not in rows, filters or sorts.
    hide_columns: tuple[str, ...] = ()
    #: A folder of ``*.sql`` report files (relative to the settings file); empty: none.
    sql_folder: str = ""


#: What an API token may be granted: JSON reports and tables, CSV downloads, the archive's
#: ledger and status, the admin endpoints, and ``/metrics`` when it is not public.
TOKEN_SCOPES = ("reports", "csv", "archive", "admin", "metrics")
#: How a token is stored: ``sha256:`` and the hex SHA-256 of the token.
_TOKEN_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class TokenSettings:
    """One API token, ``[auth.tokens.<name>]``: its hash, never the token itself."""

    name: str
    hash: str = ""
    scopes: tuple[str, ...] = ()
    #: Reports and tables this token may read; empty: all of them.
    reports: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthSettings:
    #: Require a token (``Authorization: Bearer``, or a UI session signed in with one).
    enabled: bool = False
    #: How long a UI session signed in with a token lasts.
    session_lifetime: timedelta = timedelta(hours=12)
    #: Send the session cookie over HTTPS only (set behind a TLS-terminating proxy).
    secure_cookies: bool = False
    #: Whether ``/metrics`` answers without a token (else it needs the ``metrics`` scope).
    metrics_public: bool = True
    tokens: tuple[TokenSettings, ...] = ()


@dataclass(frozen=True)
class ArchiveSettings:
    retry_attempts: int = 3
    retry_backoff: timedelta = timedelta(seconds=1)
    throttle: timedelta = timedelta(0)
    #: Add PRIMARY's new columns to the ARCHIVE twins before a run (else stop it).
    evolve_schema: bool = True


@dataclass(frozen=True)
class SchedulerSettings:
    enabled: bool = True
    misfire_grace_time: timedelta = timedelta(hours=1)
    timezone: str = "UTC"


@dataclass(frozen=True)
class PolicySettings:
    """One archival policy: which rows of which table move, and when."""

    name: str
    table: str = ""
    age_column: str = ""
    older_than: timedelta = timedelta(days=365)
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Tables archived with the root, or ``"auto"``: every table whose foreign key leads to it.
    children: tuple[str, ...] | Literal["auto"] = ()
    #: What the age column holds: "timestamp" (with or without a zone, or a date),
    #: "epoch_seconds", "epoch_milliseconds" or "iso_text".
    age_format: Literal["timestamp", "epoch_seconds", "epoch_milliseconds", "iso_text"] = (
        "timestamp")
    #: The zone of zone-less timestamps and of dates (IANA name).
    age_zone: str = "UTC"
    #: An extra SQL condition on the root table (operator-written, checked against PRIMARY).
    where: str = ""
    batch_size: int = 5_000
    schedule: str = "*/30 * * * *"
    enabled: bool = True
    #: "archive" moves aged rows to ARCHIVE; "purge" deletes them from PRIMARY, copying nothing.
    mode: Literal["archive", "purge"] = "archive"
    #: How long ARCHIVE keeps the policy's rows, measured on the age column ("7y", "400d");
    #: empty keeps them for ever.
    retention: str = ""

    @property
    def retention_period(self) -> Retention | None:
        """``retention`` parsed (it is checked when the settings load)."""
        return parse_retention(self.retention) if self.retention.strip() else None


@dataclass(frozen=True)
class ErasureSettings:
    """How ``archive erase`` treats tables that must keep their rows."""

    #: Per table, the columns set to NULL instead of deleting the subject's rows (e.g. an
    #: audit log kept for the law, minus its link to the person).
    null_out: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    reports: ReportSettings = field(default_factory=ReportSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    erasure: ErasureSettings = field(default_factory=ErasureSettings)
    policies: tuple[PolicySettings, ...] = ()
    source: Path | None = None

    def policy(self, name: str) -> PolicySettings:
        """Return the policy called ``name``.

        :raises SettingsError: when no policy has that name.
        """
        for policy in self.policies:
            if policy.name == name:
                return policy
        known = ", ".join(p.name for p in self.policies) or "none"
        raise SettingsError("policy", f"no policy named {name!r} (configured: {known})")


_SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseSettings,
    "service": ServiceSettings,
    "reports": ReportSettings,
    "auth": AuthSettings,
    "archive": ArchiveSettings,
    "scheduler": SchedulerSettings,
    "erasure": ErasureSettings,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: A table name, optionally schema-qualified (``sales.orders``). Names are matched against
#: the database's catalog and always quoted in SQL, so any characters but dots may appear.
_TABLE_NAME = re.compile(r"^[^.\s][^.]*(\.[^.\s][^.]*)?$")
#: A policy's name keys its runs in the ledger (64 characters) and names its lock file
#: (``<primary>.archive-<name>.lock``): "a/b" ended every run in a FileNotFoundError.
_POLICY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_duration(text: str) -> timedelta:
    """Parse ``"365d"``, ``"90m"``, ``"1.5s"`` or ``"250ms"`` into a :class:`timedelta`.

    :raises ValueError: for anything else, including negative or unit-less numbers.
    """
    found = _DURATION.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a duration such as '30s', '15m', '12h' or '365d'")
    seconds = float(found.group(1)) * _DURATION_UNITS[found.group(2)]
    if seconds > LONGEST_DURATION.total_seconds():
        raise ValueError(f"{text!r} is longer than a century ({LONGEST_DURATION.days:,}d)")
    return timedelta(seconds=seconds)


#: The longest duration read. Durations become waits (``archive.throttle`` and
#: ``retry_backoff``; Python waits at most about 292 years) and instants (``older_than``
#: back from now, a session's expiry): '999999999999d' was an ``OverflowError`` naming no
#: key, and '800000d' one at the first run.
LONGEST_DURATION = timedelta(days=36_525)
#: The longest retention in calendar years: its cutoff must be a year Python can hold.
LONGEST_RETENTION_YEARS = 1000


_RETENTION_YEARS = re.compile(r"^\s*(\d+)\s*y\s*$")


@dataclass(frozen=True)
class Retention:
    """A retention period: whole calendar years (``"7y"``), or a fixed duration."""

    years: int = 0
    duration: timedelta = timedelta(0)

    def cutoff(self, now: datetime) -> datetime:
        """The instant before which a row has outlived the period. Years are calendar
        years (29 February steps back to the 28th), so "7y" never expires a row early."""
        if self.years:
            year = now.year - self.years
            day = min(now.day, 28) if now.month == 2 and now.day == 29 else now.day
            return now.replace(year=year, day=day)
        return now - self.duration

    @property
    def shortest(self) -> timedelta:
        """The shortest the period can be (a year counted as 365 days)."""
        return timedelta(days=365 * self.years) if self.years else self.duration


def parse_retention(text: str) -> Retention:
    """Parse ``"7y"`` (calendar years) or any duration :func:`parse_duration` reads.

    :raises ValueError: for anything else.
    """
    found = _RETENTION_YEARS.match(text)
    if found:
        if int(found.group(1)) <= 0:
            raise ValueError(f"{text!r} must be longer than zero")
        if int(found.group(1)) > LONGEST_RETENTION_YEARS:
            raise ValueError(f"{text!r} is longer than {LONGEST_RETENTION_YEARS:,} years")
        return Retention(years=int(found.group(1)))
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a retention period such as '7y' (calendar years) "
                         "or '400d'")
    return Retention(duration=parse_duration(text))


def normalise_database_url(url: str) -> str:
    """Return ``url`` with the driver Sediment uses made explicit.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which Sediment does not
    install, so bare PostgreSQL URLs are pinned to psycopg2.

    :raises ValueError: for a URL SQLAlchemy cannot parse or a backend Sediment does not run on.
    """
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"{url!r} is not a database URL") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg2"):
        raise ValueError(
            f"{parsed.drivername!r} is not supported: use sqlite:///PATH or postgresql://..."
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError("an in-memory SQLite database cannot be shared: give a file path")
    return parsed.render_as_string(hide_password=False)


def resolve_sqlite_path(url: str, base: Path) -> str:
    """Anchor a relative SQLite path at ``base`` (the settings file's folder).

    Flask-SQLAlchemy would otherwise move it into the app's ``instance/`` folder, and a
    migration run from elsewhere would then touch a different file.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database is None:
        return url
    path = Path(parsed.database)
    if not path.is_absolute():
        parsed = parsed.set(database=str((base / path).resolve()))
    return parsed.render_as_string(hide_password=False)


def _require_existing_sqlite_file(url: str) -> None:
    """An application's SQLite PRIMARY must be there: connecting created an empty file (and
    its folders) at a mistyped path, and startup then blamed the policy's table."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    if not Path(parsed.database).is_file():
        raise SettingsError("database.primary_url", f"{parsed.database!r} is no file: "
                            "primary_schema = \"existing\" reads an application's database "
                            "and never creates one; check the path")


def same_sqlite_file(first: str, second: str) -> bool:
    """Whether two SQLite URLs reach one file (through a symlink, ``..`` or a hard link)."""
    paths = []
    for url in (first, second):
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() != "sqlite" or not parsed.database \
                or parsed.database == ":memory:":
            return False
        paths.append(Path(parsed.database))
    if os.path.realpath(paths[0]) == os.path.realpath(paths[1]):
        return True
    return all(p.exists() for p in paths) and os.path.samefile(paths[0], paths[1])


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load settings from ``path`` (default: the repository's ``settings.toml``) and environment.

    :param path: the TOML file; a missing file is an error unless it is the default one.
    :param environ: the variables to read overrides from (default ``os.environ``).
    :raises SettingsError: naming the first key that is unknown or holds a bad value.
    """
    source = Path(path) if path is not None else DEFAULT_SETTINGS_PATH
    raw: dict[str, Any] = {}
    if source.exists():
        try:
            raw = tomllib.loads(source.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(str(source), f"not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise SettingsError(str(source), f"not UTF-8 text (byte {exc.start}): save the "
                                "settings as UTF-8") from exc
        except OSError as exc:  # a folder, no permission to read, an unreadable file
            raise SettingsError("--settings", f"{str(source)!r} cannot be read: "
                                f"{exc.strerror or exc}") from exc
    elif path is not None:
        raise SettingsError("--settings", f"file {str(source)!r} does not exist")
    env_keys = _apply_environment(raw, os.environ if environ is None else environ)
    return _build(raw, source.resolve(), env_keys)


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> set[str]:
    """Write ``SEDIMENT_A__B`` overrides into ``raw``; return the dotted keys they set."""
    overridden: set[str] = set()
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if any(not part for part in parts) or len(parts) < 2:
            raise SettingsError(name, "expected SEDIMENT_<TABLE>__<KEY>")
        table = raw
        for part in parts[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise SettingsError(name, f"{part!r} is a value, not a table")
        table[parts[-1]] = value
        overridden.add(".".join(parts))
    return overridden


def _build(raw: dict[str, Any], source: Path, env_keys: set[str]) -> Settings:
    sections: dict[str, Any] = {}
    for key in raw:
        if key not in _SECTIONS and key != "policy":
            raise SettingsError(key, f"unknown table (known: {', '.join([*_SECTIONS, 'policy'])})")
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise SettingsError(name, "must be a table")
        if cls is AuthSettings:  # [auth.tokens.<name>] tables, like [policy.<name>]
            rest = {key: value for key, value in table.items() if key != "tokens"}
            sections[name] = dataclasses.replace(
                _build_section(cls, rest, name, env_keys),
                tokens=_build_tokens(table.get("tokens", {}), env_keys))
        else:
            sections[name] = _build_section(cls, table, name, env_keys)
    policies_raw = raw.get("policy", {})
    if not isinstance(policies_raw, dict):
        raise SettingsError("policy", "must be a table of [policy.<name>] tables")
    policies = []
    for policy_name, table in policies_raw.items():
        if not isinstance(table, dict):
            raise SettingsError(f"policy.{policy_name}", "must be a table")
        built = _build_section(
            PolicySettings, {"name": policy_name, **table}, f"policy.{policy_name}", env_keys
        )
        policies.append(built)
    settings = Settings(**sections, policies=tuple(policies), source=source)
    return _validate(settings, source.parent)


def _build_tokens(raw: Any, env_keys: set[str]) -> tuple[TokenSettings, ...]:
    """The ``[auth.tokens.<name>]`` tables, each checked: a hash and known scopes."""
    if not isinstance(raw, dict):
        raise SettingsError("auth.tokens", "must be a table of [auth.tokens.<name>] tables")
    tokens = []
    for name, table in raw.items():
        prefix = f"auth.tokens.{name}"
        if not isinstance(table, dict):
            raise SettingsError(prefix, "must be a table")
        token = _build_section(TokenSettings, {"name": name, **table}, prefix, env_keys)
        if not _TOKEN_HASH.match(token.hash):
            raise SettingsError(f"{prefix}.hash", "must be 'sha256:' and 64 hex digits, as "
                                "printed by `run_service.py token create`")
        if not token.scopes:
            raise SettingsError(f"{prefix}.scopes", f"grants nothing: list some of "
                                f"{', '.join(TOKEN_SCOPES)}")
        for scope in token.scopes:
            if scope not in TOKEN_SCOPES:
                raise SettingsError(f"{prefix}.scopes", f"{scope!r} is not one of "
                                    f"{', '.join(TOKEN_SCOPES)}")
        tokens.append(token)
    return tuple(tokens)


def _build_section(cls: type[Any], table: dict[str, Any], prefix: str, env_keys: set[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}"
        if key not in known:
            raise SettingsError(dotted, f"unknown key (known: {', '.join(sorted(known))})")
        values[key] = _coerce(value, hints[key], dotted, dotted in env_keys)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in values:
            raise SettingsError(f"{prefix}.{f.name}", "is required")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, from_env: bool) -> Any:
    """Convert a TOML (or environment string) value to the field's declared type."""
    if from_env and isinstance(value, str) and hint is not str:
        value = _parse_env_value(value, key)
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SettingsError(key, f"{value!r} is not true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SettingsError(key, f"{value!r} is not a whole number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise SettingsError(key, f"{value!r} is not a string")
    if hint is timedelta:
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ValueError as exc:
                raise SettingsError(key, str(exc)) from exc
        raise SettingsError(key, f"{value!r} is not a duration string such as '30s' or '365d'")
    if origin is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise SettingsError(key, f"{value!r} is not a list of strings")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise SettingsError(key, f"{value!r} is not {_describe(hint)}")
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return _coerce(value, arm, key, False)
            except SettingsError:
                continue
        raise SettingsError(key, f"{value!r} is not {_describe(hint)}")
    if origin in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, dict):
            raise SettingsError(key, f"{value!r} is not a table")
        return types.MappingProxyType(
            {k: _coerce(v, tuple[str, ...], f"{key}.{k}", False) for k, v in value.items()}
        )
    raise SettingsError(key, f"unsupported setting type {hint!r}")  # pragma: no cover


def _describe(hint: Any) -> str:
    """How a settings type reads in a message: ``a list of strings or 'auto'``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(choice) for choice in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    if origin is tuple:
        return "a list of strings"
    return getattr(hint, "__name__", str(hint))


def _parse_env_value(value: str, key: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value  # a plain word such as a duration: let the type check judge it


def _validate(settings: Settings, base: Path) -> Settings:
    db = settings.database
    urls = {}
    for key in ("primary_url", "archive_url"):
        try:
            url = normalise_database_url(getattr(db, key))
        except ValueError as exc:
            raise SettingsError(f"database.{key}", str(exc)) from exc
        urls[key] = resolve_sqlite_path(url, base)
    if db.primary_schema == "existing":
        _require_existing_sqlite_file(urls["primary_url"])
    if same_sqlite_file(urls["primary_url"], urls["archive_url"]) or \
            urls["primary_url"] == urls["archive_url"]:
        raise SettingsError(
            "database.archive_url", "reaches the same database as database.primary_url; the "
            "archive must be another database"
        )
    _require_positive("database.pool_size", db.pool_size)
    _require_positive("database.statement_timeout_ms", db.statement_timeout_ms, *_TIMEOUT_BOUND)
    _require_positive("database.lock_timeout_ms", db.lock_timeout_ms, *_TIMEOUT_BOUND)
    service = settings.service
    if not 0 < service.port < 65536:
        raise SettingsError("service.port", f"{service.port} is not a TCP port")
    _require_positive("service.threads", service.threads, *_PROCESS_BOUND)
    _require_positive("service.workers", service.workers, *_PROCESS_BOUND)
    _require_positive("service.connection_limit", service.connection_limit)
    _require_positive("service.backlog", service.backlog, 65_535,
                      "the longest listen queue a kernel keeps")
    if service.log_level.upper() not in _LOG_LEVELS:
        raise SettingsError(
            "service.log_level", f"{service.log_level!r} is not one of {', '.join(_LOG_LEVELS)}"
        )
    reports = settings.reports
    if reports.sql_folder:
        folder = Path(reports.sql_folder)
        folder = folder if folder.is_absolute() else base / folder
        if not folder.is_dir():
            raise SettingsError("reports.sql_folder", f"{str(folder)!r} is not a folder")
        settings = dataclasses.replace(settings, reports=dataclasses.replace(
            reports, sql_folder=str(folder)))
        reports = settings.reports
    for name in ("default_limit", "csv_max_rows", "csv_max_concurrent"):
        _require_positive(f"reports.{name}", getattr(reports, name))
    _require_positive("reports.max_limit", reports.max_limit, *MOST_ROWS_AT_ONCE)
    _require_positive("reports.statement_timeout_ms", reports.statement_timeout_ms,
                      *_TIMEOUT_BOUND)
    if reports.default_limit > reports.max_limit:
        raise SettingsError("reports.default_limit", "must not exceed reports.max_limit")
    if reports.csv_max_concurrent >= service.threads:
        raise SettingsError(
            "reports.csv_max_concurrent",
            f"{reports.csv_max_concurrent} would let slow CSV downloads hold all "
            f"{service.threads} service.threads; make it at most {service.threads - 1}, or "
            "raise service.threads")
    _require_positive("archive.retry_attempts", settings.archive.retry_attempts)
    if not service.secret_key.strip():
        # HMAC under an empty key is a signature anyone can make: cursors and sessions.
        raise SettingsError("service.secret_key", "is empty: it signs cursors and sessions; "
                            "set a long random value")
    if settings.auth.session_lifetime <= timedelta(0):
        raise SettingsError("auth.session_lifetime", "must be longer than zero (a session "
                            "that ends as it starts signs nobody in)")
    if settings.scheduler.misfire_grace_time < timedelta(seconds=1):
        # APScheduler takes whole seconds, none of them zero: a TypeError traceback.
        raise SettingsError("scheduler.misfire_grace_time", "must be at least 1s")
    _require_time_zone("scheduler.timezone", settings.scheduler.timezone)
    seen: set[str] = set()
    for policy in settings.policies:
        _validate_policy(policy, settings.scheduler.timezone)
        if policy.table in seen and policy.enabled:
            raise SettingsError(f"policy.{policy.name}.table", f"{policy.table!r} has two policies")
        seen.add(policy.table)
    database = dataclasses.replace(db, primary_url=urls["primary_url"],
                                   archive_url=urls["archive_url"])
    return dataclasses.replace(settings, database=database)


def _validate_policy(policy: PolicySettings, timezone: str) -> None:
    prefix = f"policy.{policy.name}"
    if not _POLICY_NAME.match(policy.name):
        raise SettingsError(prefix, f"{policy.name!r} is not a policy name: use 1 to 64 "
                            "letters, digits, _ or - (it names the policy's runs and its lock)")
    if not policy.table.strip():
        raise SettingsError(f"{prefix}.table", "is required: the table whose aged rows the "
                            "policy moves, e.g. table = \"events\"")
    if not _TABLE_NAME.match(policy.table):
        raise SettingsError(f"{prefix}.table", f"{policy.table!r} is not a table name "
                            "(\"table\" or \"schema.table\")")
    if not policy.age_column.strip():
        raise SettingsError(f"{prefix}.age_column", "is required: the column whose value "
                            "ages a row, e.g. age_column = \"created_at\"")
    problem = condition_problem(policy.where)
    if problem is not None:
        raise SettingsError(f"{prefix}.where", f"{policy.where!r} is not one condition: "
                            f"{problem}")
    _require_positive(f"{prefix}.batch_size", policy.batch_size, *MOST_ROWS_AT_ONCE)
    if policy.older_than <= timedelta(0):
        raise SettingsError(f"{prefix}.older_than", "must be longer than zero")
    _validate_retention(policy)
    _require_time_zone(f"{prefix}.age_zone", policy.age_zone)
    try:
        trigger = CronTrigger.from_crontab(policy.schedule, timezone=timezone)
    except ValueError as exc:
        raise SettingsError(f"{prefix}.schedule", f"{policy.schedule!r}: {exc}") from exc
    if policy.enabled and trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        # "0 0 31 2 *" was scheduled and logged like any other, and never ran.
        raise SettingsError(f"{prefix}.schedule", f"{policy.schedule!r} never comes: no date "
                            "matches it (such as February 31st)")


def _require_time_zone(key: str, name: str) -> None:
    try:
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        raise SettingsError(key, f"{name!r} is not a time zone name such as 'UTC' or "
                            "'Europe/Berlin'") from None


def _validate_retention(policy: PolicySettings) -> None:
    key = f"policy.{policy.name}.retention"
    if not policy.retention.strip():
        return
    if policy.mode == "purge":
        raise SettingsError(key, "a purge policy keeps nothing in ARCHIVE to expire; remove "
                            "retention, or archive the rows (mode = \"archive\")")
    try:
        retention = parse_retention(policy.retention)
    except ValueError as exc:
        raise SettingsError(key, str(exc)) from None
    if retention.shortest <= policy.older_than:
        raise SettingsError(key, f"{policy.retention!r} is not longer than older_than "
                            f"({policy.older_than.days} days): rows would expire from "
                            "ARCHIVE as soon as they arrive")


#: PostgreSQL keeps a timeout in an int4 of milliseconds (about 24.8 days): a larger one
#: failed every connection ('invalid value for parameter "statement_timeout"').
_TIMEOUT_BOUND = (2_147_483_647, "PostgreSQL's longest timeout (about 24.8 days)")
#: Each thread may hold a database connection, and each worker process a pool of them;
#: 100,000 threads left ``serve`` starting them for minutes, saying nothing.
MAX_WORKERS = 1_024
_PROCESS_BOUND = (MAX_WORKERS, "a sanity bound: each may hold database connections")


#: A batch's rows, and a page's, are held in memory: past this, more of them buy nothing
#: but memory (a batch of 10**20 overflowed SQLite's LIMIT and failed every run).
MOST_ROWS_AT_ONCE = (1_000_000, "the most rows held in memory at once")
#: Any other count: what a 64-bit integer holds, as both databases store it.
_LARGEST = (2**63 - 1, "the largest whole number the databases store")


def _require_positive(key: str, value: int, at_most: int = _LARGEST[0],
                      why: str = _LARGEST[1]) -> None:
    if value <= 0:
        raise SettingsError(key, f"{value} must be greater than zero")
    if value > at_most:
        raise SettingsError(key, f"{value:,} is more than {at_most:,}, {why}")


def as_flat_dict(settings: Settings) -> dict[str, Any]:
    """Return every ``section.key`` and its value, for documentation checks and ``--help``."""
    flat: dict[str, Any] = {}
    for name in _SECTIONS:
        section = getattr(settings, name)
        for item in dataclasses.fields(section):  # not asdict: it cannot copy a mappingproxy
            if (name, item.name) != ("auth", "tokens"):  # tables of their own, like policies
                flat[f"{name}.{item.name}"] = getattr(section, item.name)
    return flat
