"""The PRIMARY database: the live commerce schema that Sediment archives and reports on.

Money is integer cents (no float rounding, no Numeric drift between backends); every
timestamp is a :class:`~sediment.core.schema.types.UTCDateTime`. Every age column and foreign key is
indexed: the archiver selects by age and deletes by key, and reports join on keys. A column
reports page by is indexed together with the key, ``(column, id)``, the exact order of a
keyset page, so a page is an index range scan without a sort, however deep.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sediment.core.databases import PRIMARY
from sediment.core.schema.types import BigIntKey, UTCDateTime, metadata_for

ORDER_STATUSES = ("pending", "paid", "shipped", "closed", "cancelled")
#: Statuses after which an order never changes again; only these may be archived.
FINAL_ORDER_STATUSES = ("closed", "cancelled")
PAYMENT_METHODS = ("card", "transfer", "wallet", "voucher")


class PrimaryModel(DeclarativeBase):
    """Declarative base of the demo PRIMARY schema (its own metadata, its own history)."""

    metadata = metadata_for(PRIMARY)


class Customer(PrimaryModel):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(120))
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    country: Mapped[str] = mapped_column(sa.String(2))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Product(PrimaryModel):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    sku: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(120))
    category: Mapped[str] = mapped_column(sa.String(40), index=True)
    price_cents: Mapped[int] = mapped_column(sa.Integer)


class Order(PrimaryModel):
    __tablename__ = "orders"
    __table_args__ = (
        sa.CheckConstraint(
            sa.column("status").in_(ORDER_STATUSES), name="status_known"
        ),
        sa.Index("ix_orders_placed_at_id", "placed_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("customers.id"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), info={"choices": ORDER_STATUSES})
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class OrderItem(PrimaryModel):
    __tablename__ = "order_items"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"), index=True)
    quantity: Mapped[int] = mapped_column(sa.Integer)
    unit_price_cents: Mapped[int] = mapped_column(sa.Integer)


class Payment(PrimaryModel):
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    method: Mapped[str] = mapped_column(sa.String(16), info={"choices": PAYMENT_METHODS})
    paid_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Event(PrimaryModel):
    """An append-only audit record.

    ``order_id`` is deliberately not a foreign key: the audit log outlives the orders it
    mentions, which move to ARCHIVE on their own schedule.
    """

    __tablename__ = "events"
    __table_args__ = (sa.Index("ix_events_occurred_at_id", "occurred_at", "id"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(sa.String(32), index=True)
    customer_id: Mapped[int | None] = mapped_column(sa.ForeignKey("customers.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(sa.BigInteger, index=True)
    detail: Mapped[str] = mapped_column(sa.Text, default="")
