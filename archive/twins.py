"""ARCHIVE twins of an existing PRIMARY's tables: made from the reflected tables, compared
with ARCHIVE by Alembic, created and evolved through Alembic's operations, and ledgered.

A twin has its PRIMARY table's column names and types (on the same engine exactly:
``numeric(p,s)``, ``jsonb``, arrays, ``uuid``, enums, whose type is created; a domain
becomes its base type; a generated column a plain one), the same primary key, plus
``archived_at`` and ``archive_run_id``; indexes on the key, the age column, the columns
PRIMARY indexes and the foreign-key columns; no foreign keys.

What Alembic's comparison finds is sorted into what evolution may do and what it may not:

* a table or column PRIMARY has and ARCHIVE lacks is created or added;
* a column PRIMARY dropped stays in the twin (made nullable, NULL from then on);
* a type the twin already holds losslessly is left alone, a wider one replaces the twin's
  (``int`` -> ``bigint``, ``varchar(20)`` -> ``text``), anything else is a conflict that
  stops the run before anything is copied, naming the table, column and both types;
* a table ARCHIVE already holds under a twin's name without the stamp columns is another
  application's: a conflict, never changed.

The demo schema's twins are not made here: they belong to ARCHIVE's Alembic history.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.base import PGInspector

from archive.reflection import COLLATIONS, MADE_BY, CatalogType
from sediment.core.schema.archive import ARCHIVE_RUN_ID, ARCHIVED_AT, ArchiveSchemaChange
from sediment.core.schema.types import UTCDateTime

if TYPE_CHECKING:  # Alembic (11 MB) loads only where twins are planned or changed
    from alembic.operations import Operations, ops

logger = logging.getLogger(__name__)

ChangeKind = Literal["create_table", "add_column", "alter_column", "create_index",
                     "add_enum_label"]
schema_changes: sa.Table = ArchiveSchemaChange.__table__  # type: ignore[assignment]

#: PostgreSQL's identifier limit; longer index names would be cut and never match again.
_MAX_NAME = 63


@dataclass(frozen=True)
class TwinChange:
    """One change to ARCHIVE: what it is, for the plan and the ledger, and how to make it."""

    table: str
    kind: ChangeKind
    columns: tuple[str, ...]
    detail: str
    operation: ops.MigrateOperation = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.kind} {self.table}: {self.detail}"


@dataclass(frozen=True)
class TypeConflict:
    """A PRIMARY column whose values the twin's column could not hold exactly."""

    table: str
    column: str
    primary_type: str
    archive_type: str

    def __str__(self) -> str:
        return (f"{self.table}.{self.column} is now {self.primary_type} in PRIMARY, which the "
                f"ARCHIVE twin's {self.archive_type} cannot hold losslessly; change the twin "
                "column by hand (or archive that table to a new twin), then run again")


@dataclass(frozen=True)
class MissingType:
    """A PRIMARY column type that ARCHIVE does not have: a composite type, or an
    extension's, which the twin cannot be created or changed without."""

    table: str
    column: str
    type_name: str
    made_by: str | None

    def __str__(self) -> str:
        how = (f"run in ARCHIVE: {self.made_by};" if self.made_by
               else "create it in ARCHIVE as PRIMARY has it,")
        return (f"ARCHIVE has no type {self.type_name}, which {self.table}.{self.column} "
                f"has in PRIMARY: {how} then run 'migrate' again")


@dataclass(frozen=True)
class ForeignTable:
    """A table ARCHIVE already holds under a twin's name that Sediment did not make (it
    lacks the twins' stamp columns): evolving it as a twin altered another application's
    table (columns widened, made nullable, added)."""

    table: str

    def __str__(self) -> str:
        return (f"ARCHIVE already holds a table {self.table} that is no twin of Sediment's "
                f"(it has no {ARCHIVED_AT} and {ARCHIVE_RUN_ID} columns), and Sediment never "
                "changes a table it did not make: point database.archive_url at a database "
                "of Sediment's own, or rename or move that table, then run 'migrate' again")


@dataclass(frozen=True)
class TwinPlan:
    """What ARCHIVE needs before the policies' rows can be copied into their twins."""

    changes: tuple[TwinChange, ...] = ()
    conflicts: tuple[TypeConflict | MissingType | ForeignTable, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes and not self.conflicts


def twin_name(source: sa.Table, archive_dialect: str) -> tuple[str | None, str]:
    """``(schema, name)`` of a table's twin: the same on PostgreSQL (the schema is created
    in ARCHIVE), ``schema__name`` on SQLite, which has no schemas."""
    if source.schema is None or archive_dialect == "postgresql":
        return source.schema, source.name
    return None, f"{source.schema}__{source.name}"


def twin_table(source: sa.Table, metadata: sa.MetaData, *, primary_dialect: str,
               archive_dialect: str, indexed: Iterable[str] = ()) -> sa.Table:
    """Declare the twin of a reflected PRIMARY table in ``metadata``.

    :param indexed: more columns to index (the policy's age column).
    """
    same_engine = primary_dialect == archive_dialect
    schema, name = twin_name(source, archive_dialect)
    columns = [
        sa.Column(column.name, twin_type(column.type, same_engine),
                  primary_key=column.primary_key, autoincrement=False,
                  nullable=column.nullable and not column.primary_key)
        for column in source.columns
    ]
    groups: list[tuple[str, ...]] = [(column,) for column in indexed if column in source.c]
    groups += [tuple(c.name for c in fk.columns) for fk in source.foreign_key_constraints]
    groups += [tuple(c.name for c in index.columns) for index in source.indexes
               if index.columns and len(index.expressions) == len(index.columns)]
    key = tuple(column.name for column in source.primary_key.columns)
    distinct = [group for group in dict.fromkeys(groups) if group != key[:len(group)]]
    # What ARCHIVE must make before the twin: the same engine's collations and types.
    needs = {key: source.info[key] for key in (COLLATIONS, MADE_BY)
             if key in source.info} if same_engine else {}
    return sa.Table(
        name, metadata, *columns,
        sa.Column(ARCHIVED_AT, UTCDateTime, nullable=False),
        sa.Column(ARCHIVE_RUN_ID, sa.BigInteger, nullable=False),
        *(sa.Index(index_name(name, group), *group) for group in distinct),
        sa.Index(index_name(name, (ARCHIVE_RUN_ID, ARCHIVED_AT)), ARCHIVE_RUN_ID, ARCHIVED_AT),
        schema=schema, info=needs,
    )


def index_name(table: str, columns: Sequence[str]) -> str:
    """``ix_<table>_<columns>``, shortened with a hash when PostgreSQL would cut it."""
    name = f"ix_{table}_{'_'.join(columns)}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:_MAX_NAME - 9]}_{digest}"


def twin_type(column_type: sa.types.TypeEngine[Any], same_engine: bool
              ) -> sa.types.TypeEngine[Any]:
    """The type a twin column gets: PRIMARY's own on the same engine (a domain's base type;
    an enum that ARCHIVE creates on its own), the generic equivalent across engines."""
    if isinstance(column_type, postgresql.DOMAIN):
        return twin_type(column_type.data_type, same_engine)
    if not same_engine:
        try:
            generic = column_type.as_generic()
        except NotImplementedError:
            return column_type
        if isinstance(generic, sa.String):  # a fresh copy: a collation is one engine's own
            generic.collation = None
        return generic
    if isinstance(column_type, postgresql.ENUM):
        return postgresql.ENUM(*column_type.enums, name=column_type.name,
                               schema=column_type.schema, create_type=False)
    if isinstance(column_type, sa.ARRAY):
        # An array of an enum (or of a domain) too: left as reflected, its enum would be
        # created a second time by the table's own CREATE, after _create_schemas_and_types.
        item = twin_type(column_type.item_type, same_engine)
        if item is not column_type.item_type:
            return postgresql.ARRAY(item, as_tuple=column_type.as_tuple,
                                    dimensions=column_type.dimensions,
                                    zero_indexes=column_type.zero_indexes)
    return column_type


def enums_in(column_type: sa.types.TypeEngine[Any]) -> list[postgresql.ENUM]:
    """The enum types a column of ``column_type`` holds: its own, or its arrays' items'."""
    if isinstance(column_type, sa.ARRAY):
        return enums_in(column_type.item_type)
    if isinstance(column_type, postgresql.ENUM) and column_type.name is not None:
        return [column_type]
    return []


def plan_twins(archive: sa.Engine, twins: Sequence[sa.Table]) -> TwinPlan:
    """Compare the declared twins with ARCHIVE (Alembic's ``compare_metadata``) and sort
    the differences into changes and conflicts (see the module docstring)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    if not twins:
        return TwinPlan()
    metadata = sa.MetaData()  # exactly these twins: Alembic compares a whole MetaData
    twins = [table.to_metadata(metadata) for table in twins]
    wanted = {(table.schema, table.name) for table in twins}

    def include_name(name: str | None, type_: str, parents: Mapping[str, str | None]) -> bool:
        if type_ == "schema":
            return name in {schema for schema, _ in wanted}
        if type_ == "table":
            return (parents.get("schema_name"), name) in wanted
        return True

    with archive.connect() as connection, warnings.catch_warnings():
        # The twin's column of a type SQLAlchemy does not know reflects untyped; such a
        # column is never judged by type (see _catalog_named).
        warnings.filterwarnings("ignore", "Did not recognize type", sa.exc.SAWarning)
        context = MigrationContext.configure(connection, opts={
            "compare_type": True, "include_name": include_name,
            "include_schemas": any(schema is not None for schema, _ in wanted),
            "target_metadata": metadata})
        diffs = compare_metadata(context, metadata)
        existing = {(table.schema, table.name): _reflected(connection, table)
                    for table in twins if (table.schema, table.name) in wanted}
        postgres = connection.dialect.name == "postgresql"
        labels = _missing_enum_labels(connection, twins) if postgres else []
        missing = _missing_types(connection, twins) if postgres else []
        connection.rollback()
    foreign = {name for name, columns in existing.items()
               if columns and not {ARCHIVED_AT, ARCHIVE_RUN_ID} <= set(columns)}
    by_name = {(table.schema, table.name): table for table in twins}
    changes: list[TwinChange] = []
    conflicts: list[TypeConflict | MissingType | ForeignTable] = [
        *missing, *(ForeignTable(_label(*name)) for name in sorted(foreign, key=str))]
    for diff in _flatten(diffs):
        if _table_of(diff) not in foreign:
            _classify(diff, by_name, existing, changes, conflicts, archive.dialect)
    return TwinPlan(tuple([*changes, *labels]), tuple(conflicts))


def _table_of(diff: tuple[Any, ...]) -> tuple[str | None, str] | None:
    """The ``(schema, table)`` an Alembic difference is about."""
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return diff[1].schema, diff[1].name
    if kind in ("add_index", "remove_index"):
        return diff[1].table.schema, diff[1].table.name
    if kind in ("add_column", "remove_column", "modify_nullable", "modify_type",
                "modify_default", "modify_comment"):
        return diff[1], diff[2]
    return None


def _missing_types(connection: sa.Connection, twins: Sequence[sa.Table]) -> list[MissingType]:
    """The twins' column types SQLAlchemy does not know that ARCHIVE has no type of that
    name for. Creating the twin failed on PostgreSQL's bare 'type "money_pair" does not
    exist'; this names the column and the statement that makes the type."""
    named = [(_label(table.schema, table.name), column.name, column.type.spec,
              column.type.made_by)
             for table in twins for column in table.columns
             if isinstance(column.type, CatalogType) and column.type.spec]
    named += [(_label(table.schema, table.name), column, spec, made_by)
              for table in twins
              for column, (spec, made_by) in table.info.get(MADE_BY, {}).items()]
    specs = sorted({spec for _, _, spec, _ in named})
    if not specs:
        return []
    found = connection.execute(sa.select(*(sa.func.to_regtype(spec) for spec in specs))).one()
    absent = {spec for spec, regtype in zip(specs, found, strict=True) if regtype is None}
    return [MissingType(table, column, spec, made_by)
            for table, column, spec, made_by in named if spec in absent]


def _missing_enum_labels(connection: sa.Connection, twins: Sequence[sa.Table]
                         ) -> list[TwinChange]:
    """Labels PRIMARY's enum types gained that ARCHIVE's copies lack (Alembic's comparison
    does not look at labels): each is added, so that rows holding it can be copied."""
    from alembic.operations import ops
    inspector = sa.inspect(connection)
    assert isinstance(inspector, PGInspector)
    default = inspector.default_schema_name
    known = {(enum["schema"] or default, enum["name"]): set(enum["labels"])
             for enum in inspector.get_enums(schema="*")}
    preparer = connection.dialect.identifier_preparer
    changes: dict[tuple[str | None, str, str], TwinChange] = {}
    for table in twins:
        for column, enum in ((c, e) for c in table.columns for e in enums_in(c.type)):
            assert enum.name is not None
            have = known.get((enum.schema or default, enum.name))
            for label in enum.enums:
                if have is None or label in have or (enum.schema, enum.name, label) in changes:
                    continue  # a type not created yet gets every label when it is
                quoted = preparer.quote(enum.name)
                if enum.schema:
                    quoted = f"{preparer.quote_schema(enum.schema)}.{quoted}"
                literal = "'" + label.replace("'", "''") + "'"
                changes[(enum.schema, enum.name, label)] = TwinChange(
                    _label(table.schema, table.name), "add_enum_label", (column.name,),
                    f"add label {label!r} to enum type {enum.name}",
                    ops.ExecuteSQLOp(f"ALTER TYPE {quoted} ADD VALUE IF NOT EXISTS {literal}"))
    return list(changes.values())


def _reflected(connection: sa.Connection, table: sa.Table) -> dict[str, dict[str, Any]]:
    inspector = sa.inspect(connection)
    if not inspector.has_table(table.name, schema=table.schema):
        return {}
    return {column["name"]: dict(column)
            for column in inspector.get_columns(table.name, schema=table.schema)}


def _flatten(diffs: Iterable[Any]) -> Iterable[tuple[Any, ...]]:
    for diff in diffs:
        if isinstance(diff, list):  # column modifications come grouped per column
            yield from diff
        else:
            yield diff


def _classify(diff: tuple[Any, ...], twins: Mapping[tuple[str | None, str], sa.Table],
              existing: Mapping[tuple[str | None, str], Mapping[str, Mapping[str, Any]]],
              changes: list[TwinChange],
              conflicts: list[TypeConflict | MissingType | ForeignTable],
              dialect: sa.Dialect) -> None:
    from alembic.operations import ops
    kind = diff[0]
    if kind == "add_table":
        table: sa.Table = diff[1]
        changes.append(TwinChange(
            _label(table.schema, table.name), "create_table",
            tuple(column.name for column in table.columns),
            "create twin: " + ", ".join(column.name for column in table.columns),
            ops.CreateTableOp.from_table(table)))
    elif kind == "add_column":
        _, schema, name, column = diff
        copy = column._copy()
        copy.nullable = True  # rows archived before it was added have no value
        changes.append(TwinChange(
            _label(schema, name), "add_column", (column.name,),
            f"add column {column.name} {column.type.compile(dialect)}",
            ops.AddColumnOp(name, copy, schema=schema)))
    elif kind == "remove_column":
        _, schema, name, column = diff
        if not column.nullable:
            changes.append(_nullable(schema, name, column.name, column.type,
                                     "dropped in PRIMARY: kept, NULL from now on"))
    elif kind == "modify_nullable":
        _, schema, name, column_name, info, _was, now = diff
        if now:
            changes.append(_nullable(schema, name, column_name, info["existing_type"],
                                     "nullable in PRIMARY now"))
    elif kind == "modify_type":
        _, schema, name, column_name, info, archive_type, primary_type = diff
        if _catalog_named(archive_type, primary_type, dialect):
            return  # a type SQLAlchemy cannot compare: verification still compares values
        if holds(archive_type, primary_type, dialect):
            return
        if holds(primary_type, archive_type, dialect):
            changes.append(TwinChange(
                _label(schema, name), "alter_column", (column_name,),
                f"widen {column_name} from {archive_type.compile(dialect)} to "
                f"{primary_type.compile(dialect)}",
                ops.AlterColumnOp(name, column_name, schema=schema, modify_type=primary_type,
                                  existing_type=archive_type,
                                  existing_nullable=info.get("existing_nullable"))))
        else:
            conflicts.append(TypeConflict(_label(schema, name), column_name,
                                          primary_type.compile(dialect),
                                          archive_type.compile(dialect)))
    elif kind == "add_index":
        index: sa.Index = diff[1]
        assert isinstance(index.table, sa.Table)
        changes.append(TwinChange(
            _label(index.table.schema, index.table.name), "create_index",
            tuple(column.name for column in index.columns),
            f"create index {index.name}", ops.CreateIndexOp.from_index(index)))
    # Anything else (a table, index or column only ARCHIVE has, defaults, comments) stays.


def _catalog_named(archive_type: sa.types.TypeEngine[Any],
                   primary_type: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> bool:
    """Whether the twin's type was reflected unknown and PRIMARY's is named from the catalog
    (both sides of one type SQLAlchemy does not know)."""
    return isinstance(archive_type, sa.types.NullType) or isinstance(
        primary_type, sa.types.NullType | CatalogType)


def _nullable(schema: str | None, table: str, column: str,
              column_type: sa.types.TypeEngine[Any], why: str) -> TwinChange:
    from alembic.operations import ops
    return TwinChange(_label(schema, table), "alter_column", (column,),
                      f"make {column} nullable ({why})",
                      ops.AlterColumnOp(table, column, schema=schema, modify_nullable=True,
                                        existing_type=column_type))


def _label(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


_INTEGER_RANK = ((sa.SmallInteger, 1), (sa.BigInteger, 3), (sa.Integer, 2))


def _rank(column_type: sa.types.TypeEngine[Any]) -> int:
    return next(rank for kind, rank in _INTEGER_RANK if isinstance(column_type, kind))


def holds(container: sa.types.TypeEngine[Any], values: sa.types.TypeEngine[Any],
          dialect: sa.Dialect) -> bool:
    """Whether a column of type ``container`` holds every value of type ``values`` exactly."""
    if container.compile(dialect) == values.compile(dialect):
        return True
    if isinstance(container, sa.Integer) and isinstance(values, sa.Integer):
        return _rank(container) >= _rank(values)
    if isinstance(container, sa.Enum) or isinstance(values, sa.Enum):
        return False
    if isinstance(container, sa.String) and isinstance(values, sa.String):
        return container.length is None or (values.length is not None
                                            and values.length <= container.length)
    if isinstance(container, sa.Float) or isinstance(values, sa.Float):
        return isinstance(container, sa.Float) and isinstance(values, sa.Float | sa.Integer)
    if isinstance(container, sa.Numeric) and isinstance(values, sa.Numeric | sa.Integer):
        if container.precision is None:
            return True
        if isinstance(values, sa.Integer):
            return container.precision - (container.scale or 0) >= 19
        if values.precision is None:
            return False
        return ((container.scale or 0) >= (values.scale or 0)
                and container.precision - (container.scale or 0)
                >= values.precision - (values.scale or 0))
    if isinstance(container, sa.DateTime) and isinstance(values, sa.DateTime):
        return bool(container.timezone) == bool(values.timezone)
    return type(container.as_generic()) is type(values.as_generic()) and not isinstance(
        container, sa.ARRAY | sa.JSON)


def apply_plan(archive: sa.Engine, plan: TwinPlan, twins: Sequence[sa.Table]) -> None:
    """Make the plan's changes in one ARCHIVE transaction, each recorded in the ledger.

    Schemas and enum types the twins need are created first (PostgreSQL). Call only with
    a plan without conflicts.
    """
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    assert not plan.conflicts, "a plan with conflicts is never applied"
    if not plan.changes:
        return
    now = datetime.now(UTC)
    with archive.begin() as connection:
        operations = Operations(MigrationContext.configure(connection))
        if connection.dialect.name == "postgresql":
            _create_schemas_and_types(connection, twins)
        for change in plan.changes:
            _apply(operations, connection, change)
            logger.debug("ARCHIVE twin %s", change)
        connection.execute(schema_changes.insert(), [
            {"changed_at": now, "table_name": change.table, "change": change.kind,
             "columns": ", ".join(change.columns), "detail": change.detail}
            for change in plan.changes])


def _apply(operations: Operations, connection: sa.Connection, change: TwinChange) -> None:
    from alembic.operations import ops
    operation = change.operation
    if isinstance(operation, ops.AlterColumnOp) and connection.dialect.name == "sqlite":
        if operation.modify_type is not None:
            return  # SQLite's columns hold any value of their affinity: nothing to widen
        with operations.batch_alter_table(operation.table_name) as batch:
            batch.alter_column(operation.column_name, nullable=True,
                               existing_type=operation.kw.get("existing_type"))
        return
    operations.invoke(operation)


def _create_schemas_and_types(connection: sa.Connection, twins: Sequence[sa.Table]) -> None:
    """The schemas, enum types and collations the twins need, where ARCHIVE lacks them."""
    preparer = connection.dialect.identifier_preparer
    collations = sorted({made for table in twins for made in table.info.get(COLLATIONS, [])})
    schemas = {table.schema for table in twins if table.schema} | {
        schema for schema, _, _ in collations}
    # Only those missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even
    # when the schema exists, which a role owning only ARCHIVE's public schema lacks.
    schemas -= set(connection.execute(
        sa.select(sa.column("nspname")).select_from(sa.table("pg_namespace"))
        .where(sa.column("nspname").in_(schemas))).scalars())
    for schema in sorted(schemas):
        connection.exec_driver_sql(f"CREATE SCHEMA {preparer.quote_schema(schema)}")
    for _, name, statement in collations:
        if connection.execute(sa.select(sa.func.to_regcollation(name))).scalar() is None:
            connection.exec_driver_sql(statement.replace("%", "%%"))  # psycopg2 interpolates
    for table in twins:
        for enum in (enum for column in table.columns for enum in enums_in(column.type)):
            postgresql.ENUM(*enum.enums, name=enum.name,
                            schema=enum.schema).create(connection, checkfirst=True)


def recent_changes(archive: sa.Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The newest twin changes in the ledger, newest first (for ``archive status``)."""
    query = sa.select(schema_changes).order_by(schema_changes.c.id.desc()).limit(limit)
    with archive.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]
