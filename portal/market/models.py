"""Offerings and their prices, orders paid through Stripe Checkout, Stripe events, invoices and credit notes.

Money is integer cents of ``currency`` (EUR); quantities are whole display units of the resource
(GPU-hours, core-hours, TB-months).
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import StrEnumType, UTCDateTime, utcnow


class OfferingState(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    RETIRED = "retired"


class Offering(SQLModel, table=True):
    __tablename__ = "offerings"
    __table_args__ = (
        sa.CheckConstraint("price_cents > 0", name="price_positive"),
        sa.CheckConstraint("min_quantity >= 1 AND max_quantity >= min_quantity", name="quantities_ordered"),
        sa.CheckConstraint("validity_months IN (3, 6, 12)", name="validity_3_6_12"),
    )

    id: int | None = Field(default=None, primary_key=True)
    resource_id: int = Field(foreign_key="resources.id", index=True)
    title: str = Field(max_length=200)
    description: str = Field(default="", max_length=5000)
    #: Net price of one display unit (one GPU-hour), in cents; applies to new orders only.
    price_cents: int = Field(sa_type=sa.BigInteger)
    currency: str = Field(default="EUR", max_length=3)
    min_quantity: int = Field(default=1)
    max_quantity: int
    #: Months the bought hours can be used after the purchase.
    validity_months: int = Field(default=6)
    state: OfferingState = Field(default=OfferingState.DRAFT, sa_type=StrEnumType(OfferingState, 16))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class OfferingPrice(SQLModel, table=True):
    """Every price an offering has had, from when."""

    __tablename__ = "offering_prices"

    id: int | None = Field(default=None, primary_key=True)
    offering_id: int = Field(foreign_key="offerings.id", index=True)
    price_cents: int = Field(sa_type=sa.BigInteger)
    valid_from: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    changed_by_id: int | None = Field(default=None, foreign_key="users.id")


class OrderState(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


class Order(SQLModel, table=True):
    __tablename__ = "orders"
    __table_args__ = (
        sa.CheckConstraint("gross_cents = net_cents + vat_cents", name="gross_is_net_plus_vat"),
        sa.CheckConstraint(
            "organisation_id IS NOT NULL OR (billing_name IS NOT NULL AND billing_country IS NOT NULL)",
            name="organisation_or_private_buyer",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: The buying organisation; None for a private buyer (a person buying for their personal project).
    organisation_id: int | None = Field(default=None, foreign_key="organisations.id", index=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    buyer_id: int = Field(foreign_key="users.id")
    offering_id: int = Field(foreign_key="offerings.id")
    #: Display units bought (GPU-hours).
    quantity: int
    unit_price_cents: int = Field(sa_type=sa.BigInteger)
    net_cents: int = Field(sa_type=sa.BigInteger)
    vat_basis_points: int
    vat_cents: int = Field(sa_type=sa.BigInteger)
    gross_cents: int = Field(sa_type=sa.BigInteger)
    currency: str = Field(default="EUR", max_length=3)
    #: domestic, reverse_charge, oss or outside_eu
    vat_scheme: str = Field(max_length=16)
    vat_country: str | None = Field(default=None, max_length=2)
    customer_vat_number: str | None = Field(default=None, max_length=32)
    #: A private buyer's name and address as the invoice prints them; None for an organisation's order.
    billing_name: str | None = Field(default=None, max_length=200)
    billing_address: str | None = Field(default=None, max_length=500)
    #: The country of the private buyer's declared billing address: it decides the consumer VAT (OSS).
    billing_country: str | None = Field(default=None, max_length=2)
    #: The second piece of evidence of where the private buyer lives: the country of the eID they logged in
    #: with (the eIDAS person identifier's issuing member state), None when the login gave none.
    login_country: str | None = Field(default=None, max_length=2)
    state: OrderState = Field(default=OrderState.PENDING, sa_type=StrEnumType(OrderState, 24), index=True)
    #: The allocation holding the order's capacity, credited when the payment arrives.
    allocation_id: int = Field(foreign_key="allocations.id")
    checkout_session_id: str | None = Field(default=None, max_length=100, unique=True)
    payment_intent_id: str | None = Field(default=None, max_length=100, index=True)
    refunded_cents: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    paid_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Why a payment Stripe reported could not be booked (another amount or currency, capacity gone, validity
    #: over): shown to finance, who refund it in Stripe. ``None`` for an order without trouble.
    problem: str | None = Field(default=None, max_length=500)


class StripeEvent(SQLModel, table=True):
    """Every Stripe event handled: its id is the key that makes a redelivery change nothing."""

    __tablename__ = "stripe_events"

    id: str = Field(primary_key=True, max_length=100)
    type: str = Field(max_length=100)
    order_id: int | None = Field(default=None, foreign_key="orders.id")
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class InvoiceKind(StrEnum):
    INVOICE = "invoice"
    CREDIT_NOTE = "credit_note"


class InvoiceSequence(SQLModel, table=True):
    """The last number used per seller and year: numbers come without gaps."""

    __tablename__ = "invoice_sequences"

    seller_vat_number: str = Field(primary_key=True, max_length=32)
    year: int = Field(primary_key=True)
    last_number: int = Field(default=0)


class Invoice(SQLModel, table=True):
    """An issued invoice or credit note: never changed once written (the PDF is drawn from these fields)."""

    __tablename__ = "invoices"
    __table_args__ = (sa.UniqueConstraint("seller_vat_number", "year", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: InvoiceKind = Field(sa_type=StrEnumType(InvoiceKind, 16))
    seller_vat_number: str = Field(max_length=32)
    year: int
    number: int
    #: What is printed: ``BAIF-2026-000042``.
    reference: str = Field(max_length=40, unique=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    #: None for a private buyer's invoice (``buyer`` holds their name and address).
    organisation_id: int | None = Field(default=None, foreign_key="organisations.id", index=True)
    #: For a credit note, the invoice it corrects.
    corrects_id: int | None = Field(default=None, foreign_key="invoices.id")
    issued_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    seller: dict[str, Any] = Field(sa_type=sa.JSON)
    buyer: dict[str, Any] = Field(sa_type=sa.JSON)
    #: [{"description", "quantity", "unit", "unit_price_cents", "net_cents"}]
    lines: list[dict[str, Any]] = Field(sa_type=sa.JSON)
    currency: str = Field(max_length=3)
    net_cents: int = Field(sa_type=sa.BigInteger)
    vat_basis_points: int
    vat_cents: int = Field(sa_type=sa.BigInteger)
    gross_cents: int = Field(sa_type=sa.BigInteger)
    #: The legal mention (reverse charge, outside the EU) or empty.
    mention: str = Field(default="", max_length=500)


#: ``RevenueMonth.organisation_id`` of the revenue from private buyers (no organisation has id 0).
PRIVATE_BUYERS = 0


class RevenueMonth(SQLModel, table=True):
    """Invoiced amounts (credit notes subtracted) per month of issue, offering and buying organisation;
    written in the transaction that issues the invoice or credit note, read by the operators' dashboards.
    Private buyers' invoices add up under ``PRIVATE_BUYERS`` (0) in ``organisation_id``."""

    __tablename__ = "report_revenue_months"

    #: First day of the month the invoices were issued in (UTC).
    month: date = Field(primary_key=True, index=True)
    offering_id: int = Field(foreign_key="offerings.id", primary_key=True)
    #: The buying organisation's id, or ``PRIVATE_BUYERS`` for all private buyers together (no foreign key, so).
    organisation_id: int = Field(primary_key=True)
    #: Display units (hours) invoiced, credit notes subtracted.
    quantity: int = Field(default=0, sa_type=sa.BigInteger)
    net_cents: int = Field(default=0, sa_type=sa.BigInteger)
    vat_cents: int = Field(default=0, sa_type=sa.BigInteger)
    gross_cents: int = Field(default=0, sa_type=sa.BigInteger)
