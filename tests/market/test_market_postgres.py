"""The marketplace under real concurrency on PostgreSQL: gapless invoice numbers, no overselling of the last
capacity, and a webhook delivered many times at once crediting the hours once.

Orders are placed through ``market.place_order`` with the real ``StripeGateway`` against the local Stripe
stand-in; webhooks are signed payloads verified by ``StripeGateway.verified_event`` and applied with
``market.handle_stripe_event``, each thread in its own session, all released together.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import stripe
from portal_standin.devstack import free_port
from portal_standin.devstripe import StripeStandIn
from sqlmodel import Session, col, func, select

from portal.config import Settings, load_settings
from portal.identity.models import Login, User
from portal.ledger import services as ledger
from portal.ledger.models import (
    Allocation,
    AllocationState,
    CapacityPeriod,
    CapacityReservation,
    EntryKind,
    LedgerEntry,
)
from portal.market import services as market
from portal.market.models import Invoice, Offering, Order, OrderState, StripeEvent
from portal.market.stripe_gateway import StripeGateway
from portal.migrations import upgrade
from portal.projects import services as projects
from portal.projects.models import Project
from tests.ledger.test_ledger_postgres import all_at_once
from tests.ledger_world import HOUR, admin, make_world, person, publish_offering

pytestmark = pytest.mark.postgres
WEBHOOK_SECRET = "whsec_market_postgres"
THREADS = 32
BUYERS = 50


@pytest.fixture(scope="module")
def engine(postgres_url: str):
    upgrade(postgres_url)
    engine = sa.create_engine(postgres_url, pool_size=BUYERS + 6, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StripeStandIn]:
    server = StripeStandIn(free_port(), tmp_path_factory.mktemp("stripe"), from_scratch=True).start()
    yield server
    server.stop()


def shop_settings(postgres_url: str, stand_in: StripeStandIn) -> Settings:
    """Settings of a seller of its own (VAT number and invoice prefix), so each test's numbering starts at 1."""
    tag = uuid.uuid4().hex[:8]
    return load_settings(
        env="test",
        database_url=postgres_url,
        secret_key="test-secret-key",
        mail_backend="log",
        stripe_api_base=stand_in.url,
        stripe_api_key=stand_in.api_key,
        stripe_webhook_secret=WEBHOOK_SECRET,
        seller_vat_number=f"PL{int(tag, 16) % 10**10:010d}",
        invoice_prefix=f"T{tag}",
    )


def login_of(user: User) -> Login:
    """A login at level substantial, as a session holds it (the services only read its level)."""
    return Login(user_id=user.id, provider="eidas", subject="x", level="substantial", attributes={})


@dataclass
class Buyer:
    user: User
    project: Project


@dataclass
class Shop:
    settings: Settings
    offering: Offering
    period: CapacityPeriod
    buyers: list[Buyer]


def make_shop(engine: sa.Engine, settings: Settings, *, capacity_hours: int, buyers: int) -> Shop:
    """A published 3-month H100 offering whose validity lies inside one capacity period of
    ``capacity_hours``, and ``buyers`` verified LT companies, each with its admin and one project."""
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db)
        today = datetime.now(UTC).date()
        period = ledger.set_capacity(
            db,
            None,
            world.gpu,
            starts_on=today - timedelta(days=1),
            ends_on=today + timedelta(days=200),
            capacity=capacity_hours * HOUR,
            reason="test setup",
        )
        offering = publish_offering(db, world.gpu)
        staff = admin(db)
        made = []
        for i in range(buyers):
            user = person(db, f"Buyer{i}")
            org = projects.create_organisation(
                db, user, name=f"Company {i} UAB", kind="sme", country="LT", vat_number="LT119511515"
            )
            projects.verify_organisation(db, staff, org, reason="test setup")
            made.append(Buyer(user, projects.create_project(db, user, org, title=f"Vision {i}")))
        return Shop(settings, offering, period, made)


def place(engine: sa.Engine, shop: Shop, buyer: Buyer, hours: int) -> Order:
    """``place_order`` as the order form calls it, in a session of its own, with the real gateway."""
    with Session(engine, expire_on_commit=False) as db:
        user = db.get(User, buyer.user.id)
        project = db.get(Project, buyer.project.id)
        offering = db.get(Offering, shop.offering.id)
        assert user is not None and project is not None and offering is not None
        order, url = market.place_order(
            db,
            shop.settings,
            StripeGateway(shop.settings),
            user,
            login_of(user),
            offering=offering,
            project=project,
            quantity=hours,
        )
        assert url.startswith("http")
        return order


def signed_completed(order: Order, event_id: str) -> tuple[bytes, str]:
    """A checkout.session.completed event for the order, paid, signed as Stripe signs it."""
    event = {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": order.checkout_session_id,
                "object": "checkout.session",
                "payment_status": "paid",
                "payment_intent": f"pi_{order.id}",
                "amount_total": order.gross_cents,
                "currency": order.currency.lower(),
                "metadata": {"order_id": str(order.id)},
            }
        },
    }
    payload = json.dumps(event).encode()
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload.decode()}", WEBHOOK_SECRET)
    return payload, f"t={timestamp},v1={signature}"


def deliver(engine: sa.Engine, settings: Settings, payload: bytes, signature: str) -> str:
    """What the webhook route does: verify the signature, then apply the event in a session of its own."""
    event = StripeGateway(settings).verified_event(payload, signature)
    with Session(engine, expire_on_commit=False) as db:
        return market.handle_stripe_event(db, settings, event)


def test_32_orders_fulfilled_at_once_get_invoice_numbers_1_to_32(engine, postgres_url, stand_in):
    settings = shop_settings(postgres_url, stand_in)
    shop = make_shop(engine, settings, capacity_hours=10_000, buyers=4)
    orders = [place(engine, shop, shop.buyers[i % 4], 10 + i) for i in range(THREADS)]
    deliveries = [signed_completed(o, f"evt_{uuid.uuid4().hex}") for o in orders]

    results = all_at_once(THREADS, lambda i: deliver(engine, settings, *deliveries[i]))
    assert results == ["fulfilled"] * THREADS, results
    with Session(engine) as db:
        invoices = db.exec(
            select(Invoice).where(Invoice.seller_vat_number == settings.seller_vat_number).order_by(Invoice.number)
        ).all()
        assert [i.number for i in invoices] == list(range(1, THREADS + 1))
        assert sorted(i.order_id for i in invoices) == sorted(o.id for o in orders)  # one per order
        assert {i.year for i in invoices} == {datetime.now(UTC).year}
        for order in orders:
            fresh = db.get(Order, order.id)
            allocation = db.get(Allocation, order.allocation_id)
            assert fresh is not None and allocation is not None
            assert fresh.state == OrderState.PAID
            assert (allocation.state, allocation.balance) == (AllocationState.ACTIVE, order.quantity * HOUR)
        assert ledger.balance_mismatches(db) == []


def test_50_concurrent_orders_for_the_last_capacity_never_oversell(engine, postgres_url, stand_in):
    settings = shop_settings(postgres_url, stand_in)
    fits = 10
    shop = make_shop(engine, settings, capacity_hours=fits * 10, buyers=BUYERS)  # room for ten 10-hour orders

    results = all_at_once(BUYERS, lambda i: place(engine, shop, shop.buyers[i], 10))
    placed = [r for r in results if isinstance(r, Order)]
    refused = [r for r in results if isinstance(r, ledger.CapacityExhausted)]
    assert (len(placed), len(refused)) == (fits, BUYERS - fits), results
    with Session(engine) as db:
        period = db.get(CapacityPeriod, shop.period.id)
        assert period is not None and period.reserved == period.capacity == fits * 10 * HOUR
        orders = db.exec(select(Order).where(Order.offering_id == shop.offering.id)).all()
        assert sorted(o.id for o in orders) == sorted(o.id for o in placed)
        assert all(o.state == OrderState.PENDING and o.checkout_session_id for o in orders)
        # nothing half-made by the refused ones: every allocation of the resource belongs to an order
        allocations = db.exec(select(Allocation).where(Allocation.resource_id == shop.offering.resource_id)).all()
        assert sorted(a.id for a in allocations) == sorted(o.allocation_id for o in orders)
        assert all(
            (a.state, a.reserved, a.balance) == (AllocationState.AWAITING_PAYMENT, 10 * HOUR, 0) for a in allocations
        )
        reserved = db.exec(
            select(func.sum(CapacityReservation.amount)).where(CapacityReservation.period_id == shop.period.id)
        ).one()
        assert reserved == period.capacity
        # each Checkout Session exists at the stand-in, for its order
        client = stripe.StripeClient(stand_in.api_key, base_addresses={"api": stand_in.url})
        for order in orders:
            session = client.v1.checkout.sessions.retrieve(order.checkout_session_id)
            assert session.metadata["order_id"] == str(order.id)


def test_one_webhook_delivered_by_10_threads_at_once_credits_the_hours_once(engine, postgres_url, stand_in):
    settings = shop_settings(postgres_url, stand_in)
    shop = make_shop(engine, settings, capacity_hours=1000, buyers=1)
    order = place(engine, shop, shop.buyers[0], 40)
    payload, signature = signed_completed(order, "evt_same_delivery")

    results = all_at_once(10, lambda _i: deliver(engine, settings, payload, signature))
    assert sorted(results) == ["duplicate"] * 9 + ["fulfilled"], results
    with Session(engine) as db:
        entries = db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == order.allocation_id)).all()
        assert [(e.kind, e.amount) for e in entries] == [(EntryKind.PURCHASE, 40 * HOUR)]
        assert len(db.exec(select(Invoice).where(Invoice.order_id == order.id)).all()) == 1
        assert db.exec(select(func.count()).where(col(StripeEvent.id) == "evt_same_delivery")).one() == 1
        allocation = db.get(Allocation, order.allocation_id)
        assert allocation is not None and (allocation.state, allocation.balance) == (
            AllocationState.ACTIVE,
            40 * HOUR,
        )
        assert db.get(Order, order.id).state == OrderState.PAID


def test_ten_events_of_one_payment_applied_at_once_credit_once_and_are_all_answered(engine, postgres_url, stand_in):
    """Different event ids for the same paid session (Stripe resending under a new id, or a completed and an
    async_payment_succeeded event): the one that loses the race on the allocation's lock is told "already
    paid" and recorded, instead of raising AllocationClosed (a 409 that Stripe would retry for days)."""
    settings = shop_settings(postgres_url, stand_in)
    shop = make_shop(engine, settings, capacity_hours=1000, buyers=1)
    order = place(engine, shop, shop.buyers[0], 40)
    deliveries = [signed_completed(order, f"evt_other_{uuid.uuid4().hex}_{i}") for i in range(10)]

    results = all_at_once(10, lambda i: deliver(engine, settings, *deliveries[i]))
    assert sorted(results) == ["already paid"] * 9 + ["fulfilled"], results
    with Session(engine) as db:
        entries = db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == order.allocation_id)).all()
        assert [(e.kind, e.amount) for e in entries] == [(EntryKind.PURCHASE, 40 * HOUR)]
        assert len(db.exec(select(Invoice).where(Invoice.order_id == order.id)).all()) == 1
        assert db.exec(select(func.count()).where(StripeEvent.order_id == order.id)).one() == 10


def test_an_event_that_read_the_order_before_another_paid_it_does_not_invoice_twice(engine, postgres_url, stand_in):
    """The narrow window of the test above, made certain: B reads the order (pending), A's event pays it and
    commits, then B fulfils. fulfil_purchase replays A's ledger entry; B must not issue a second invoice."""
    settings = shop_settings(postgres_url, stand_in)
    shop = make_shop(engine, settings, capacity_hours=1000, buyers=1)
    order = place(engine, shop, shop.buyers[0], 40)
    late = StripeGateway(settings).verified_event(*signed_completed(order, f"evt_late_{uuid.uuid4().hex}"))
    with Session(engine, expire_on_commit=False) as db_b:
        stale = db_b.get(Order, order.id)
        assert stale is not None and stale.state == OrderState.PENDING
        assert deliver(engine, settings, *signed_completed(order, f"evt_first_{uuid.uuid4().hex}")) == "fulfilled"
        outcome = market._fulfil(db_b, settings, late, stale, late.data.object.to_dict())
    assert outcome == "already paid"
    with Session(engine) as db:
        assert len(db.exec(select(Invoice).where(Invoice.order_id == order.id)).all()) == 1
        entries = db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == order.allocation_id)).all()
        assert [(e.kind, e.amount) for e in entries] == [(EntryKind.PURCHASE, 40 * HOUR)]
