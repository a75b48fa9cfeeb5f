"""Age columns as applications keep them: a date, a zone-less timestamp written in a local
zone, Unix epochs in seconds and milliseconds, ISO-8601 text. On both backends, exactly
the rows older than the cutoff move."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from archive.policy import resolve_policy
from archive.preflight import check_conditions
from archive.verify import verify_archive
from sediment.core.settings import PolicySettings, SettingsError
from tests.support import DatabaseFactory, OwnSchema, own_schema

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLDER_THAN = timedelta(days=30)
CUTOFF = NOW - OLDER_THAN  # 2026-05-02 12:00 UTC
NEW_YORK = ZoneInfo("America/New_York")
SCHEMA = sa.MetaData()
for name, column_type in (("readings", sa.Date()), ("visits", sa.DateTime()),
                          ("pings", sa.BigInteger()), ("clicks", sa.BigInteger()),
                          ("notes", sa.Text())):
    sa.Table(name, SCHEMA, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("at", column_type, nullable=False))

#: Instants around the cutoff: each case writes them in its column's shape.
INSTANTS = [CUTOFF + timedelta(minutes=minutes) for minutes in
            (-90 * 24 * 60, -26 * 60, -61, -1, 0, 1, 59, 61, 25 * 60, 10 * 24 * 60)]


def iso_spellings(instant: datetime) -> list[str]:
    """One instant as applications write it: T or space, Z, an offset, no zone (UTC)."""
    utc = instant.astimezone(UTC)
    return [utc.strftime("%Y-%m-%dT%H:%M:%SZ"), utc.strftime("%Y-%m-%d %H:%M:%S"),
            instant.astimezone(ZoneInfo("Asia/Kolkata")).isoformat()]


def read_iso(text: str) -> datetime:
    """What the ISO-8601 text means as an instant (no zone: UTC)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


#: table -> (age_format, age_zone, the values written, whether a value is aged)
CASES: dict[str, tuple[str, str, Callable[[datetime], list[Any]], Callable[[Any], bool]]] = {
    # A date is aged when the whole day, in its zone, is before the cutoff.
    "readings": ("timestamp", "America/New_York",
                 lambda i: [i.astimezone(NEW_YORK).date()],
                 lambda d: d < CUTOFF.astimezone(NEW_YORK).date()),
    "visits": ("timestamp", "America/New_York",
               lambda i: [i.astimezone(NEW_YORK).replace(tzinfo=None)],
               lambda v: v.replace(tzinfo=NEW_YORK) < CUTOFF),
    "pings": ("epoch_seconds", "UTC", lambda i: [int(i.timestamp())],
              lambda s: s < CUTOFF.timestamp()),
    "clicks": ("epoch_milliseconds", "UTC", lambda i: [int(i.timestamp() * 1000)],
               lambda ms: ms < CUTOFF.timestamp() * 1000),
    "notes": ("iso_text", "UTC", iso_spellings, lambda text: read_iso(text) < CUTOFF),
}


@pytest.fixture
def schema(databases: DatabaseFactory) -> Iterator[OwnSchema]:
    own = own_schema(databases, SCHEMA, list(CASES))
    yield own
    own.dispose()


@pytest.mark.parametrize("table", list(CASES))
def test_exactly_the_rows_older_than_the_cutoff_move(schema: OwnSchema, table: str) -> None:
    age_format, zone, written, is_aged = CASES[table]
    values = [value for instant in INSTANTS for value in written(instant)]
    primary_table = SCHEMA.tables[table]
    with schema.engines.primary.begin() as connection:
        connection.execute(primary_table.insert(),
                           [{"id": i, "at": v} for i, v in enumerate(values, 1)])
    policy = schema.policy(PolicySettings(name=table, table=table, age_column="at",
                                          older_than=OLDER_THAN, age_format=age_format,  # type: ignore[arg-type]
                                          age_zone=zone))
    outcome = schema.run(policy, NOW)
    assert outcome.status == "done", outcome.error
    expected = {i for i, v in enumerate(values, 1) if is_aged(v)}
    assert 0 < len(expected) < len(values)
    with schema.engines.archive.connect() as connection:
        moved = set(connection.execute(sa.select(schema.twins[table].c.id)).scalars())
    assert moved == expected
    found = verify_archive(schema.engines.primary, schema.engines.archive, [policy])
    assert found.ok, found.problems


@pytest.mark.parametrize(("table", "age_format", "says"), [
    ("pings", "timestamp", "declare age_format = 'epoch_seconds'"),
    ("notes", "epoch_seconds", "not a number of seconds"),
    ("readings", "iso_text", "not ISO-8601 text"),
])
def test_an_age_column_that_cannot_hold_the_format_names_the_key(
    table: str, age_format: str, says: str
) -> None:
    settings = PolicySettings(name="p", table=table, age_column="at",
                              age_format=age_format)  # type: ignore[arg-type]
    with pytest.raises(SettingsError) as caught:
        resolve_policy(settings, SCHEMA.tables, {table: SCHEMA.tables[table]})
    assert caught.value.key == "policy.p.age_column" and says in str(caught.value)


@pytest.mark.sqlite
def test_numbers_in_a_column_declared_a_timestamp_never_count_as_aged(
        schema: OwnSchema) -> None:
    """SQLite keeps what it is given: an application's Unix times in a column declared
    DATETIME sort before every text, so before any cutoff, and every row moved. Startup now
    names the key, a number written after startup never counts as aged, and declared as
    epochs they are read as such."""
    visits = SCHEMA.tables["visits"]
    seconds = [int(instant.timestamp()) for instant in INSTANTS]
    with schema.engines.primary.begin() as connection:
        connection.execute(visits.insert(), [{"id": i, "at": instant.replace(tzinfo=None)}
                                             for i, instant in enumerate(INSTANTS, 1)])
        connection.execute(sa.text("INSERT INTO visits VALUES (:id, :at)"),
                           [{"id": 100 + i, "at": s} for i, s in enumerate(seconds)])
    as_timestamps = schema.policy(PolicySettings(name="visits", table="visits", age_column="at",
                                                 older_than=OLDER_THAN))
    with pytest.raises(SettingsError) as caught:
        check_conditions(schema.engines.primary, [as_timestamps])
    assert caught.value.key == "policy.visits.age_column"
    assert f"holds numbers (such as {seconds[0]})" in str(caught.value)

    assert schema.run(as_timestamps, NOW).status == "done"  # as if written after startup
    aged_text = {i for i, instant in enumerate(INSTANTS, 1) if instant < CUTOFF}
    assert moved_ids(schema) == aged_text  # not one number among them

    as_epochs = schema.policy(PolicySettings(name="visits", table="visits", age_column="at",
                                             older_than=OLDER_THAN, age_format="epoch_seconds"))
    check_conditions(schema.engines.primary, [as_epochs])
    assert schema.run(as_epochs, NOW).status == "done"
    aged_numbers = {100 + i for i, s in enumerate(seconds) if s < CUTOFF.timestamp()}
    assert moved_ids(schema) == aged_text | aged_numbers


@pytest.mark.sqlite
def test_a_sqlite_timestamp_column_is_aged_as_instants_whatever_its_spelling(
        schema: OwnSchema) -> None:
    """SQLite compares a DATETIME column as the text the application wrote: ``T`` sorts
    after the space (rows of the cutoff's day waited a day), and an offset's local time is
    hours from its instant (rows moved hours early, or late). Each spelling is now read as
    the instant it is; text of no date ('') never counts as aged."""
    def spellings(instant: datetime) -> list[str]:
        utc = instant.astimezone(UTC)
        return [*iso_spellings(instant), utc.strftime("%Y-%m-%d %H:%M:%S.%f"),
                utc.strftime("%Y-%m-%d %H:%M:%S.123 +00:00"),  # Sequelize
                instant.astimezone(ZoneInfo("Pacific/Honolulu")).isoformat()]

    values = [text for instant in INSTANTS for text in spellings(instant)] + [""]
    with schema.engines.primary.begin() as connection:
        connection.execute(sa.text("INSERT INTO visits VALUES (:id, :at)"),
                           [{"id": i, "at": text} for i, text in enumerate(values, 1)])
    policy = schema.policy(PolicySettings(name="visits", table="visits", age_column="at",
                                          older_than=OLDER_THAN))
    check_conditions(schema.engines.primary, [policy])
    assert schema.run(policy, NOW).status == "done"
    assert moved_ids(schema) == {i for i, text in enumerate(values, 1)
                                 if text and read_iso(text.replace(" +", "+")) < CUTOFF}
    found = verify_archive(schema.engines.primary, schema.engines.archive, [policy])
    assert found.ok, found.problems


@pytest.mark.postgres
def test_an_epoch_format_on_a_timestamp_column_stops_startup_naming_the_key(
        schema: OwnSchema) -> None:
    policy = schema.policy(PolicySettings(name="visits", table="visits", age_column="at",
                                          older_than=OLDER_THAN, age_format="epoch_seconds"))
    with pytest.raises(SettingsError) as caught:
        check_conditions(schema.engines.primary, [policy])
    assert caught.value.key == "policy.visits.age_format"
    assert "cannot be compared with visits.at" in str(caught.value)


def moved_ids(schema: OwnSchema) -> set[int]:
    with schema.engines.archive.connect() as connection:
        return set(connection.execute(sa.select(schema.twins["visits"].c.id)).scalars())
