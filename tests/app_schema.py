"""A second PRIMARY schema, unlike the demo shop: an application's billing database as its
own developers would have written it, in plain DDL.

Composite and ``uuid`` keys, a three-level parent-child chain (invoices -> lines -> notes)
whose foreign keys are composite, a partitioned child, a partitioned root, a trigger on
the root, an enum, a domain, ``xml`` (a type SQLAlchemy does not know), ``numeric`` money,
``jsonb``, an array, a generated column, a ``timestamp without time zone`` age column read
in Europe/Paris, and a ``where`` policy. The SQLite
variant keeps what SQLite has: composite keys, ISO-8601 text ages, Unix-epoch ages, a
trigger. Values include NULLs in every nullable column and text that trips naive
encoders (tabs, newlines, backslashes, quotes, U+2028, ASCII separators).
"""

from __future__ import annotations

import json
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.support import run_cli

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TENANTS = [uuid.uuid5(uuid.NAMESPACE_DNS, name) for name in ("acme", "zeta")]
TRICKY = ["plain", "tab\there", "new\nline", "back\\slash", 'quote"d', "sep\u2028line",
          "unit\x1fsep", "comma, {brace}", None]

POSTGRES_DDL = """
CREATE SCHEMA billing;
CREATE TYPE billing.invoice_status AS ENUM ('open', 'paid', 'void');
CREATE DOMAIN billing.money_amount AS numeric(14,2) CHECK (VALUE >= 0);
CREATE TABLE billing.tenants (id uuid PRIMARY KEY, name text NOT NULL);
CREATE TABLE billing.invoices (
    tenant_id uuid NOT NULL REFERENCES billing.tenants (id),
    invoice_no integer NOT NULL,
    issued_at timestamp without time zone NOT NULL,
    status billing.invoice_status NOT NULL,
    amount billing.money_amount,
    meta jsonb,
    tags text[],
    memo text,
    doc xml,
    amount_cents bigint GENERATED ALWAYS AS ((amount * 100)::bigint) STORED,
    PRIMARY KEY (tenant_id, invoice_no)
);
CREATE INDEX invoices_issued ON billing.invoices (issued_at);
CREATE TABLE billing.invoice_lines (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL,
    invoice_no integer NOT NULL,
    price numeric(12,4),
    qty integer NOT NULL,
    note text,
    FOREIGN KEY (tenant_id, invoice_no) REFERENCES billing.invoices (tenant_id, invoice_no)
);
CREATE TABLE billing.line_notes (
    line_id uuid NOT NULL REFERENCES billing.invoice_lines (id),
    seq integer NOT NULL,
    body text,
    PRIMARY KEY (line_id, seq)
);
CREATE TABLE billing.invoice_events (
    id bigint NOT NULL,
    at timestamptz NOT NULL,
    tenant_id uuid NOT NULL,
    invoice_no integer NOT NULL,
    what text,
    PRIMARY KEY (id, at),
    FOREIGN KEY (tenant_id, invoice_no) REFERENCES billing.invoices (tenant_id, invoice_no)
) PARTITION BY RANGE (at);
CREATE TABLE billing.invoice_events_old PARTITION OF billing.invoice_events
    FOR VALUES FROM ('2000-01-01') TO ('2025-01-01');
CREATE TABLE billing.invoice_events_new PARTITION OF billing.invoice_events
    FOR VALUES FROM ('2025-01-01') TO ('2100-01-01');
CREATE TABLE billing.api_calls (
    id bigint NOT NULL,
    at timestamptz NOT NULL,
    tenant_id uuid NOT NULL REFERENCES billing.tenants (id),
    path text NOT NULL,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE billing.api_calls_old PARTITION OF billing.api_calls
    FOR VALUES FROM ('2000-01-01') TO ('2025-06-01');
CREATE TABLE billing.api_calls_new PARTITION OF billing.api_calls
    FOR VALUES FROM ('2025-06-01') TO ('2100-01-01');
CREATE TABLE billing.audit (invoice_no integer NOT NULL);
CREATE FUNCTION billing.note_deletion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO billing.audit (invoice_no) VALUES (OLD.invoice_no);
    RETURN OLD;
END $$;
CREATE TRIGGER invoices_deleted AFTER DELETE ON billing.invoices
    FOR EACH ROW EXECUTE FUNCTION billing.note_deletion();
"""

SQLITE_DDL = """
CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE invoices (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    invoice_no INTEGER NOT NULL,
    issued_at TEXT NOT NULL,
    status TEXT NOT NULL,
    amount_cents INTEGER,
    memo TEXT,
    PRIMARY KEY (tenant_id, invoice_no)
);
CREATE INDEX invoices_issued ON invoices (issued_at);
CREATE TABLE invoice_lines (
    tenant_id TEXT NOT NULL,
    invoice_no INTEGER NOT NULL,
    line_no INTEGER NOT NULL,
    qty INTEGER NOT NULL,
    note TEXT,
    PRIMARY KEY (tenant_id, invoice_no, line_no),
    FOREIGN KEY (tenant_id, invoice_no) REFERENCES invoices (tenant_id, invoice_no)
);
CREATE TABLE line_notes (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    invoice_no INTEGER NOT NULL,
    line_no INTEGER NOT NULL,
    body TEXT,
    FOREIGN KEY (tenant_id, invoice_no, line_no)
        REFERENCES invoice_lines (tenant_id, invoice_no, line_no)
);
CREATE TABLE sessions (id INTEGER PRIMARY KEY, started INTEGER NOT NULL, who TEXT);
CREATE TABLE audit (invoice_no INTEGER NOT NULL);
CREATE TRIGGER invoices_deleted AFTER DELETE ON invoices
    BEGIN INSERT INTO audit (invoice_no) VALUES (OLD.invoice_no); END;
"""

#: The invoices policy an operator would write for this database, per backend.
INVOICES_POLICY = {
    "postgres": """
[policy.invoices]
table = "billing.invoices"
age_column = "issued_at"
age_zone = "Europe/Paris"
older_than = "365d"
where = "status <> 'open'"
children = "auto"
batch_size = 37
""",
    "sqlite": """
[policy.invoices]
table = "invoices"
age_column = "issued_at"
age_format = "iso_text"
older_than = "365d"
where = "status <> 'open'"
children = "auto"
batch_size = 37
""",
}
#: Every policy of the database: a partitioned root on PostgreSQL, an epoch age on SQLite.
POLICIES = {
    "postgres": INVOICES_POLICY["postgres"] + """
[policy.calls]
table = "billing.api_calls"
age_column = "at"
older_than = "180d"
batch_size = 64
""",
    "sqlite": INVOICES_POLICY["sqlite"] + """
[policy.sessions]
table = "sessions"
age_column = "started"
age_format = "epoch_seconds"
older_than = "365d"
batch_size = 150
""",
}

#: The archived tables of each backend's policies, roots first.
ARCHIVED = {
    "postgres": ["billing.invoices", "billing.invoice_lines", "billing.line_notes",
                 "billing.invoice_events", "billing.api_calls"],
    "sqlite": ["invoices", "invoice_lines", "line_notes", "sessions"],
}
#: The tables archived with each invoice.
INVOICE_CHILDREN = {
    "postgres": ["billing.invoice_lines", "billing.line_notes", "billing.invoice_events"],
    "sqlite": ["invoice_lines", "line_notes"],
}
INVOICES = 240


#: The policies of each backend.
POLICY_NAMES = {"postgres": ("invoices", "calls"), "sqlite": ("invoices", "sessions")}


def backend_of(engine: sa.Engine) -> str:
    return "postgres" if engine.dialect.name == "postgresql" else "sqlite"


def create_app_schema(primary: sa.Engine) -> None:
    """Create the application's tables and fill them, as the application would."""
    backend = backend_of(primary)
    with primary.begin() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        if backend == "postgres":
            connection.exec_driver_sql(POSTGRES_DDL)
        else:
            raw.executescript(SQLITE_DDL)  # type: ignore[attr-defined]
    fill(primary, backend)


def fill(primary: sa.Engine, backend: str, first: int = 1, count: int = INVOICES) -> None:
    """Add ``count`` invoices per tenant (numbers from ``first``), with lines, notes and,
    on PostgreSQL, events; a third are recent, a fifth open, a seventh without amounts."""
    prefix = "billing." if backend == "postgres" else ""
    rows: dict[str, list[dict[str, Any]]] = {"tenants": [], "invoices": [], "lines": [],
                                             "notes": [], "events": [], "sessions": [],
                                             "calls": []}
    if first == 1:
        rows["tenants"] = [{"id": str(t), "name": f"tenant {i}, \"quoted\""}
                           for i, t in enumerate(TENANTS)]
    for t_index, tenant in enumerate(TENANTS):
        for number in range(first, first + count):
            issued = (NOW - timedelta(days=400 + number) if number % 3 else
                      NOW - timedelta(days=number % 200))
            status = "open" if number % 5 == 0 else ("void" if number % 11 == 0 else "paid")
            amount = None if number % 7 == 0 else Decimal(number) + Decimal("0.37")
            memo = TRICKY[number % len(TRICKY)]
            invoice: dict[str, Any] = {"tenant_id": str(tenant), "invoice_no": number,
                                       "status": status, "memo": memo}
            if backend == "postgres":
                invoice.update(issued_at=issued.replace(tzinfo=None), amount=amount,
                               meta=None if number % 4 == 0 else json.dumps(
                                   {"n": number, "text": memo}),
                               tags=None if number % 6 == 0 else ["a", memo, None],
                               doc=None if number % 5 == 1 else f"<n a='{number}'>&amp;</n>")
            else:
                invoice.update(issued_at=issued.isoformat().replace("+00:00", "Z"),
                               amount_cents=None if amount is None else int(amount * 100))
            rows["invoices"].append(invoice)
            for line in range(1, 1 + number % 4):
                line_id = uuid.uuid5(tenant, f"{number}-{line}")
                if backend == "postgres":
                    rows["lines"].append({
                        "id": str(line_id), "tenant_id": str(tenant), "invoice_no": number,
                        "price": None if line == 3 else Decimal("12.3456") * line,
                        "qty": line, "note": TRICKY[(number + line) % len(TRICKY)]})
                    if line == 1:
                        rows["notes"].append({"line_id": str(line_id), "seq": 1,
                                              "body": memo})
                else:
                    rows["lines"].append({"tenant_id": str(tenant), "invoice_no": number,
                                          "line_no": line, "qty": line, "note": memo})
                    if line == 1:
                        rows["notes"].append({"id": str(line_id), "tenant_id": str(tenant),
                                              "invoice_no": number, "line_no": line,
                                              "body": memo})
            if backend == "postgres" and number % 2:
                rows["events"].append({"id": t_index * 100_000 + number, "at": issued,
                                       "tenant_id": str(tenant), "invoice_no": number,
                                       "what": "issued"})
    if backend == "postgres" and first == 1:
        rows["calls"] = [{"id": i, "at": NOW - timedelta(hours=7 * i),
                          "tenant_id": str(TENANTS[i % 2]), "path": TRICKY[i % 8] or "/"}
                         for i in range(1, 1 + count * 2)]
    if backend == "sqlite" and first == 1:
        rows["sessions"] = [{"id": i, "started": int((NOW - timedelta(days=i)).timestamp()),
                             "who": TRICKY[i % len(TRICKY)]} for i in range(1, 801)]
    statements = {
        "tenants": f"INSERT INTO {prefix}tenants (id, name) VALUES (:id, :name)",
        "invoices": (
            f"INSERT INTO {prefix}invoices (tenant_id, invoice_no, issued_at, status, amount, "
            "meta, tags, memo, doc) VALUES (:tenant_id, :invoice_no, :issued_at, "
            "CAST(:status AS billing.invoice_status), :amount, CAST(:meta AS jsonb), :tags, "
            ":memo, CAST(:doc AS xml))" if backend == "postgres" else
            "INSERT INTO invoices (tenant_id, invoice_no, issued_at, status, amount_cents, "
            "memo) VALUES (:tenant_id, :invoice_no, :issued_at, :status, :amount_cents, :memo)"),
        "lines": (
            f"INSERT INTO {prefix}invoice_lines (id, tenant_id, invoice_no, price, qty, note) "
            "VALUES (:id, :tenant_id, :invoice_no, :price, :qty, :note)"
            if backend == "postgres" else
            "INSERT INTO invoice_lines (tenant_id, invoice_no, line_no, qty, note) "
            "VALUES (:tenant_id, :invoice_no, :line_no, :qty, :note)"),
        "notes": (
            f"INSERT INTO {prefix}line_notes (line_id, seq, body) VALUES (:line_id, :seq, :body)"
            if backend == "postgres" else
            "INSERT INTO line_notes (id, tenant_id, invoice_no, line_no, body) "
            "VALUES (:id, :tenant_id, :invoice_no, :line_no, :body)"),
        "events": (f"INSERT INTO {prefix}invoice_events (id, at, tenant_id, invoice_no, what) "
                   "VALUES (:id, :at, :tenant_id, :invoice_no, :what)"),
        "sessions": "INSERT INTO sessions (id, started, who) VALUES (:id, :started, :who)",
        "calls": "INSERT INTO billing.api_calls (id, at, tenant_id, path) "
                 "VALUES (:id, :at, :tenant_id, :path)",
    }
    with primary.begin() as connection:
        for name, statement in statements.items():
            if rows[name]:
                connection.execute(sa.text(statement), rows[name])


def one_policy(table: str, age_column: str, **settings: str) -> str:
    """The TOML of one policy archiving ``table`` (named after it) a year after
    ``age_column``, with ``settings`` added as written (``age_format='"epoch_seconds"'``)."""
    lines = [f"[policy.{table.rpartition('.')[2]}]", f'table = "{table}"',
             f'age_column = "{age_column}"', 'older_than = "365d"',
             *(f"{key} = {value}" for key, value in settings.items())]
    return "\n".join(lines) + "\n"


def settings_file(folder: Path, primary_url: str, archive_url: str, backend: str,
                  extra: str = "", policies: str | None = None) -> Path:
    """A settings file for this database, as an operator would write it (these policies,
    or this schema's own)."""
    path = folder / f"settings-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(f"""
[database]
primary_url = "{primary_url}"
archive_url = "{archive_url}"
primary_schema = "existing"

[service]
log_level = "WARNING"
{extra}
{POLICIES[backend] if policies is None else policies}
""")
    return path


Rows = dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]


def rows_of(engine: sa.Engine, names: list[str], *, archive: bool = False) -> Rows:
    """Every row of the named tables by primary key, data columns only, as comparable
    values (jsonb and arrays as JSON text, timestamps as UTC instants)."""
    found: Rows = {}
    with engine.connect() as connection, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Did not recognize type", sa.exc.SAWarning)
        for name in names:
            schema, _, table_name = name.rpartition(".")
            table = sa.Table(table_name, sa.MetaData(), schema=schema or None,
                             autoload_with=connection)
            columns = [c for c in table.columns
                       if c.name not in ("archived_at", "archive_run_id")]
            key = [i for i, c in enumerate(columns) if c.primary_key]
            found[name] = {}
            for row in connection.execute(sa.select(*columns)):
                values = tuple(_comparable(v) for v in row)
                found[name][tuple(values[i] for i in key)] = values
    return found


def _comparable(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, date | Decimal | str | int | float | bytes) or value is None:
        return value
    return repr(value)


def table_list(engine: sa.Engine) -> list[str]:
    """Every table, type, index, function and trigger of a database, for 'nothing changed'."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            return sorted(f"{kind} {name}" for kind, name in connection.exec_driver_sql(
                "SELECT type, name FROM sqlite_master"))
        return sorted(connection.execute(sa.text(
            "SELECT c.relkind::text || ' ' || n.nspname || '.' || c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
            "UNION ALL SELECT 'type ' || typname FROM pg_type t JOIN pg_namespace n "
            "ON n.oid = t.typnamespace WHERE n.nspname = 'billing' "
            "UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal"
        )).scalars())


@contextmanager
def engine_for(url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        yield engine
    finally:
        engine.dispose()


@dataclass
class AppDatabase:
    """An application's database (PRIMARY), an empty ARCHIVE, and a settings file."""

    backend: str
    primary_url: str
    archive_url: str
    primary: sa.Engine
    archive: sa.Engine
    folder: Path

    def settings(self, extra: str = "", policies: str | None = None) -> Path:
        path = settings_file(self.folder, self.primary_url, self.archive_url,
                                        self.backend, extra)
        if policies is not None:
            text = path.read_text().split("[policy.")[0]
            path.write_text(text + policies)
        return path

    def cli(self, *args: str, settings: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli("--settings", str(settings or self.settings()), *args)

    def execute(self, *statements: str) -> None:
        with self.primary.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
