"""An existing application's PRIMARY, read by reflection: the tables the policies need.

Sediment never creates, alters or drops anything in such a database, so everything it
knows about the tables comes from the catalog: columns and types, primary keys, foreign
keys (which give ``children = "auto"`` and the refusal of uncovered references). On
PostgreSQL only the tables the policies name are reflected, then every table whose foreign
key points at one of those, and so on: an application database with thousands of tables
costs what its archived corner costs. A SQLite file is reflected whole (its catalog is one
small table).

Tables are keyed by ``schema.table``, or by the bare name in the connection's default
schema (``public.orders`` given in settings names the same table as ``orders``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from sediment.core.names import quoted_table

#: ``sa.Table.info`` key: ``(schema, qualified name, CREATE COLLATION statement)`` of each
#: collation of the application's own that the table's columns use (PostgreSQL).
COLLATIONS = "sediment_collations"
#: ``sa.Table.info`` key: ``{column: (type, CREATE EXTENSION statement)}`` for the columns
#: of a type SQLAlchemy knows that an extension provides (``citext``, ``hstore``).
MADE_BY = "sediment_made_by"

#: Foreign keys pointing at the given tables, declared on a table itself (not the copies
#: PostgreSQL keeps on each partition of a partitioned table, nor those pointing at a
#: partition on behalf of its parent).
_REFERENCING = sa.text("""
    SELECT DISTINCT n.nspname, c.relname
    FROM pg_constraint k
    JOIN pg_class c ON c.oid = k.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE k.contype = 'f' AND k.conparentid = 0 AND NOT c.relispartition
      AND k.confrelid = ANY (CAST(:referenced AS regclass[]))
""")


class UnknownTable(LookupError):
    """A policy names a table PRIMARY does not have (``args[0]``, as given).

    :param view: what the name is instead, when it is a view: rows are archived from the
        table a view reads, which can be deleted from (a view itself seldom can).
    """

    def __init__(self, name: str, view: str | None = None) -> None:
        super().__init__(name)
        self.view = view

    @property
    def reason(self) -> str:
        if self.view:
            return (f"PRIMARY's {self.args[0]!r} is a {self.view}, not a table: name the "
                    "table it reads")
        return f"PRIMARY has no table {self.args[0]!r}"


def _views(inspector: sa.Inspector, schema: str | None) -> dict[str, str]:
    """The views of ``schema`` by name, and what each is."""
    views = dict.fromkeys(inspector.get_view_names(schema=schema), "view")
    if inspector.dialect.name == "postgresql":
        views |= dict.fromkeys(inspector.get_materialized_view_names(schema=schema),
                               "materialized view")
    return views


def split_name(name: str, default_schema: str | None) -> tuple[str | None, str]:
    """``"sales.orders"`` -> ``("sales", "orders")``; the default schema becomes ``None``."""
    schema, _, table = name.rpartition(".")
    return (schema or None) if schema != default_schema else None, table


def reflect_primary(engine: sa.Engine, names: Iterable[str]) -> dict[str, sa.Table]:
    """Reflect the named tables of PRIMARY and every table that references them, to any
    depth, keyed by full name (and by ``schema.table`` for the default schema too).

    :raises UnknownTable: naming a table the database does not have.
    """
    metadata = sa.MetaData()
    with engine.connect() as connection, warnings.catch_warnings():
        # A type SQLAlchemy does not know (xml, ltree, PostGIS...) is named from the
        # catalog below instead of being left untyped.
        warnings.filterwarnings("ignore", "Did not recognize type", sa.exc.SAWarning)
        default = sa.inspect(connection).default_schema_name
        if connection.dialect.name == "sqlite":
            metadata.reflect(connection)
            for name in names:
                table = split_name(name, default)[1]
                if table not in metadata.tables:
                    raise UnknownTable(name, _views(sa.inspect(connection), None).get(table))
            _read_types_by_name(connection, metadata)
            _read_sqlite_collations(connection, metadata)
        else:
            _reflect_with_referencing(connection, metadata, names, default)
            _restore_domain_modifiers(connection, metadata)
            _record_collations(connection, metadata)
        _name_catalog_types(connection, metadata)
        _key_by_unique_columns(metadata)
        connection.rollback()
    tables: dict[str, sa.Table] = dict(metadata.tables)
    if default:
        tables.update({f"{default}.{table.name}": table for table in metadata.tables.values()
                       if table.schema is None})
    return tables


def _reflect_with_referencing(connection: sa.Connection, metadata: sa.MetaData,
                              names: Iterable[str], default: str | None) -> None:
    inspector = sa.inspect(connection)
    waiting = {split_name(name, default): name for name in names}
    # Only the names given can be views: the tables found through foreign keys are tables.
    views = {schema: _views(inspector, schema) for schema, _ in waiting}
    for (schema, table), given in waiting.items():
        if table in views[schema]:
            raise UnknownTable(given, views[schema][table])
    while waiting:
        reflected: list[sa.Table] = []
        for (schema, table), given in waiting.items():
            if not inspector.has_table(table, schema=schema):
                raise UnknownTable(given)
            reflected.append(sa.Table(table, metadata, schema=schema, autoload_with=connection))
        referencing = connection.execute(_REFERENCING, {"referenced": "{" + ",".join(
            _regclass(connection, table) for table in reflected) + "}"}).all()
        waiting = {}
        for schema, table in referencing:
            key = (schema if schema != default else None, table)
            if _full_name(*key) not in metadata.tables:
                waiting[key] = _full_name(*key)


_DOMAINS = sa.text("""
    SELECT n.nspname, t.typname, format_type(t.typbasetype, t.typtypmod)
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE t.typtype = 'd'
""")
_MODIFIED: tuple[tuple[re.Pattern[str], Callable[..., sa.types.TypeEngine[Any]]], ...] = (
    (re.compile(r"^numeric\((\d+),(\d+)\)$"), lambda p, s: postgresql.NUMERIC(int(p), int(s))),
    (re.compile(r"^character varying\((\d+)\)$"), lambda n: postgresql.VARCHAR(int(n))),
    (re.compile(r"^character\((\d+)\)$"), lambda n: postgresql.CHAR(int(n))),
)


def _restore_domain_modifiers(connection: sa.Connection, metadata: sa.MetaData) -> None:
    """Give each domain column its base type's precision, length or scale.

    SQLAlchemy reflects a domain over ``numeric(14,2)`` as one over plain ``numeric``; the
    twin, which stores the base type, would then accept values PRIMARY never could.
    """
    domains = [column.type for table in metadata.tables.values() for column in table.columns
               if isinstance(column.type, postgresql.DOMAIN)]
    if not domains:
        return
    bases = {(schema, name): base for schema, name, base in connection.execute(_DOMAINS)}
    default = sa.inspect(connection).default_schema_name
    for domain in domains:
        base = bases.get((domain.schema or default, domain.name))
        for pattern, build in _MODIFIED:
            match = pattern.match(base or "")
            if match:
                domain.data_type = build(*match.groups())
                break


class CatalogType(sa.types.UserDefinedType[Any]):
    """A column type SQLAlchemy does not know, named as the database's catalog names it
    (``xml``, ``ltree``, ``geometry(Point,4326)``; on SQLite a declared type, or none), so
    that the twin is created with exactly that type.

    :param made_by: on PostgreSQL, the statement that gives ARCHIVE the type where it is
        no built-in one: ``CREATE EXTENSION ltree`` for an extension's type, PRIMARY's own
        definition for a composite type (of the type, or of an array's items).
    """

    cache_ok = True

    def __init__(self, spec: str, made_by: str | None = None) -> None:
        self.spec = spec
        self.made_by = made_by

    def get_col_spec(self, **kw: Any) -> str:
        return self.spec


#: Each column's type as the catalog names it, and for a type (or an array's item type)
#: an extension or a composite definition makes, the statement that makes it.
_TYPES = sa.text("""
SELECT a.attname, format_type(a.atttypid, a.atttypmod), coalesce(
    (SELECT 'CREATE EXTENSION ' || quote_ident(e.extname)
     FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
     WHERE d.classid = 'pg_type'::regclass AND d.objid = b.oid AND d.deptype = 'e'),
    CASE WHEN b.typtype = 'c' THEN
        'CREATE TYPE ' || b.oid::regtype::text || ' AS ('
        || (SELECT string_agg(quote_ident(f.attname) || ' '
                              || format_type(f.atttypid, f.atttypmod), ', ' ORDER BY f.attnum)
            FROM pg_attribute f
            WHERE f.attrelid = b.typrelid AND f.attnum > 0 AND NOT f.attisdropped) || ')'
    END)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END
WHERE a.attrelid = CAST(:table AS regclass) AND a.attnum > 0 AND NOT a.attisdropped
""")


def _key_by_unique_columns(metadata: sa.MetaData) -> None:
    """Give a table without a primary key the columns of its narrowest unique index (or
    constraint) over NOT NULL columns, whole-table and without expressions, as its key.

    Such columns identify each row as a primary key would, and everything that copies,
    verifies, deletes and pages by key reads ``table.primary_key``. Prisma's implicit
    many-to-many tables (``_PostToTag``: a unique index on ``("A", "B")``, no key) and
    Rails' join tables with a unique pair are shaped so; a policy over ``Post`` with
    ``children = "auto"`` was refused for its join table. Only this ``sa.Table`` changes:
    PRIMARY is never altered (ARCHIVE's twin gets a real primary key).
    """
    for table in metadata.tables.values():
        if len(table.primary_key.columns):
            continue
        candidates = [tuple(constraint.columns) for constraint in table.constraints
                      if isinstance(constraint, sa.UniqueConstraint)]
        candidates += [tuple(index.columns) for index in table.indexes
                       if index.unique and len(index.expressions) == len(index.columns)
                       and all(options.get("where") is None for options
                               in index.dialect_options.values())]
        keys = [columns for columns in candidates
                if columns and not any(column.nullable for column in columns)]
        if keys:
            table.append_constraint(sa.PrimaryKeyConstraint(*min(keys, key=len)))


#: The collations of a table's columns that are the application's own (not PostgreSQL's
#: built-in ``C``, ``POSIX`` or ICU ones, which every database has), with the statement
#: that makes each, from its catalog entry (``colliculocale`` is ``colllocale`` from 17 on).
_COLLATIONS = sa.text("""
SELECT DISTINCT n.nspname, quote_ident(n.nspname) || '.' || quote_ident(c.collname),
    'CREATE COLLATION ' || quote_ident(n.nspname) || '.' || quote_ident(c.collname)
    || ' (provider = ' || CASE c.collprovider
        WHEN 'c' THEN 'libc, lc_collate = ' || quote_literal(c.collcollate)
                      || ', lc_ctype = ' || quote_literal(c.collctype)
        WHEN 'i' THEN 'icu, locale = '
                      || quote_literal(coalesce(j ->> 'colllocale', j ->> 'colliculocale'))
        ELSE 'builtin, locale = ' || quote_literal(j ->> 'colllocale') END
    || coalesce(', rules = ' || quote_literal(j ->> 'collicurules'), '')
    || ', deterministic = ' || c.collisdeterministic::text || ')'
FROM pg_attribute a
JOIN pg_collation c ON c.oid = a.attcollation
JOIN pg_namespace n ON n.oid = c.collnamespace
CROSS JOIN LATERAL to_jsonb(c) AS j
WHERE a.attrelid = CAST(:table AS regclass) AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname <> 'pg_catalog'
""")


def _record_collations(connection: sa.Connection, metadata: sa.MetaData) -> None:
    """Keep in each table's ``info`` the statements that make its columns' own collations
    (a case-insensitive ICU one, say), so ARCHIVE can have them before a twin names them."""
    for table in metadata.tables.values():
        if any(getattr(column.type, "collation", None) for column in table.columns):
            table.info[COLLATIONS] = sorted(tuple(row) for row in connection.execute(
                _COLLATIONS, {"table": quoted_table(connection.dialect, table)}))


def _name_catalog_types(connection: sa.Connection, metadata: sa.MetaData) -> None:
    """Type each column SQLAlchemy does not know as a :class:`CatalogType`, and on
    PostgreSQL record in ``table.info[MADE_BY]`` the statement that makes each type
    SQLAlchemy does know but an extension provides (``citext``, ``hstore``), so that a
    twin's plan can name it where ARCHIVE lacks it."""
    postgres = connection.dialect.name == "postgresql"
    for table in metadata.tables.values():
        unknown = [column for column in table.columns
                   if isinstance(column.type, sa.types.NullType)]
        if not postgres:
            declared = {row[1]: row[2] for row in _sqlite_columns(connection, table)} \
                if unknown else {}
            for column in unknown:
                column.type = CatalogType(declared.get(column.name, ""))
            continue
        made_by: dict[str, str | None] = {}
        named: dict[str, str] = {}
        for name, spec, making in connection.execute(
                _TYPES, {"table": quoted_table(connection.dialect, table)}):
            named[name], made_by[name] = spec, making
        for column in unknown:
            column.type = CatalogType(named.get(column.name, ""), made_by.get(column.name))
        known = {name: (named[name], making) for name, making in made_by.items()
                 if making and not isinstance(table.c[name].type, CatalogType)}
        if known:
            table.info[MADE_BY] = known


#: Declared SQLite types SQLAlchemy does not know, which it reflects by SQLite's affinity
#: rules as NUMERIC, and what they hold: timestamps (``TIMESTAMPTZ``, ``TIMESTAMP WITH
#: TIME ZONE`` from DDL shared with PostgreSQL, Ecto's ``UTC_DATETIME``, SQL Server's
#: ``DATETIME2``), UUIDs and JSON as text.
_NAMED_TYPES: tuple[tuple[re.Pattern[str], Callable[[], sa.types.TypeEngine[Any]]], ...] = (
    (re.compile(r"TIMESTAMP|DATETIME", re.IGNORECASE), sa.DateTime),
    (re.compile(r"UUID", re.IGNORECASE), sa.Text),
    (re.compile(r"JSON", re.IGNORECASE), sa.JSON),
)


def _read_types_by_name(connection: sa.Connection, metadata: sa.MetaData) -> None:
    """Type a SQLite column by the name it was declared with, where SQLAlchemy reflected it
    as a number: as NUMERIC, a timestamp column could be read by no age format (so its
    table could not be archived), and one value that is no number (a UUID, JSON, a
    timestamp's text) made every page of the table fail."""
    for table in metadata.tables.values():
        declared = {row[1]: str(row[2]) for row in _sqlite_columns(connection, table)}
        for column in table.columns:
            if not isinstance(column.type, sa.Numeric):
                continue
            column.type = next((build() for pattern, build in _NAMED_TYPES
                                if pattern.search(declared.get(column.name, ""))), column.type)


#: SQLite's own collations other than BINARY (its default), each with the text that equals
#: ``'a'`` under it and under no other. An application's own collation (registered on its
#: connections) is unknown to ARCHIVE's connections, so it is never given to a twin.
_SQLITE_COLLATIONS = {"NOCASE": "A", "RTRIM": "a "}


def _read_sqlite_collations(connection: sa.Connection, metadata: sa.MetaData) -> None:
    """Give SQLite text columns declared ``COLLATE NOCASE`` or ``COLLATE RTRIM`` that
    collation, which SQLAlchemy does not reflect: without it the twin compared exactly, so
    a filter such as ``email=Ann@x.org`` matched other rows in ARCHIVE than in PRIMARY.

    SQLite is asked how each column compares, rather than its ``CREATE TABLE`` text being
    parsed: a compound query's column takes the collation of its leftmost ``SELECT``, here
    the table's (empty) one, so ``x = 'A'`` over the row ``'a'`` is true under NOCASE only.
    """
    preparer = connection.dialect.identifier_preparer
    for table in metadata.tables.values():
        texts = [column for column in table.columns if isinstance(column.type, sa.String)]
        if not texts:
            continue
        probes = [f"c{i} = '{probe}'" for i in range(len(texts))
                  for probe in _SQLITE_COLLATIONS.values()]
        aliases = ", ".join(f"{preparer.quote(column.name)} AS c{i}"
                            for i, column in enumerate(texts))
        seeds = ", ".join("'a'" for _ in texts)
        try:
            answers = connection.exec_driver_sql(
                f"SELECT {', '.join(probes)} FROM (SELECT {aliases} FROM "
                f"{preparer.format_table(table)} WHERE 0 UNION ALL SELECT {seeds})").one()
        except sa.exc.OperationalError:  # a collation of the application's own
            continue
        width = len(_SQLITE_COLLATIONS)
        for i, column in enumerate(texts):
            equal = answers[i * width:(i + 1) * width]
            found = [name for name, same in zip(_SQLITE_COLLATIONS, equal, strict=True) if same]
            if len(found) == 1:
                column.type = column.type.copy()
                column.type.collation = found[0]  # type: ignore[attr-defined]


def _regclass(connection: sa.Connection, table: sa.Table) -> str:
    """A table's name as a quoted ``regclass`` array element."""
    name = quoted_table(connection.dialect, table)
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _full_name(schema: str | None, table: str) -> str:
    return f"{schema}.{table}" if schema else table


def column_names(connection: sa.Connection, table: sa.Table) -> set[str]:
    """The columns ``table`` has in the database right now (one catalog query)."""
    if connection.dialect.name == "postgresql":
        name = quoted_table(connection.dialect, table)
        return set(connection.execute(_COLUMNS, {"table": name}).scalars())
    return {row[1] for row in _sqlite_columns(connection, table)}


def _sqlite_columns(connection: sa.Connection, table: sa.Table) -> list[tuple[Any, ...]]:
    """A SQLite table's columns as ``PRAGMA table_xinfo`` rows (cid, name, type, ...,
    hidden), generated columns included: ``table_info`` leaves them out, where reflection
    has them. Hidden columns of virtual tables (``hidden = 1``) are left out, as reflection
    leaves them out."""
    quoted = connection.dialect.identifier_preparer.quote(table.name)
    rows = connection.exec_driver_sql(f"PRAGMA table_xinfo({quoted})")
    return [tuple(row) for row in rows if row[6] != 1]


_COLUMNS = sa.text("SELECT attname FROM pg_attribute WHERE attrelid = CAST(:table AS regclass) "
                   "AND attnum > 0 AND NOT attisdropped")


def table_names(tables: Mapping[str, sa.Table]) -> list[str]:
    """The distinct full names of reflected tables (each table once)."""
    return sorted({table.fullname for table in tables.values()})
