"""Benchmark: checkout creation (``place_order``) and webhook fulfilment (``handle_stripe_event``).

In a scratch PostgreSQL database ``bench_checkout_*`` (migrated with ``portal.migrations.upgrade``,
dropped at the end) a site with an H100 resource gets one capacity period covering the offering's
validity, a published 3-month offering, and a verified LT company whose admin buys (a login at level
substantial) for its project. A Stripe stand-in (``portal_standin.devstripe.StripeStandIn``, its own process)
runs on this machine.

(a) Checkout creation: ``--orders`` orders placed one after the other through ``market.place_order``
    with the real ``StripeGateway`` pointed at the stand-in (each holds capacity through
    ``ledger.hold_for_purchase``, writes the order, creates the Checkout Session and stores its id).
    The time inside ``create_checkout_session`` (the HTTP round trip to the stand-in and the stand-in's
    own work) is measured separately, so the share of the stand-in and of the portal can be told apart.
    Then the same with ``--threads`` threads, each with its own session.

(b) Webhook fulfilment: ``--events`` more orders are placed (untimed; their Checkout Session ids come
    from a local stub, so that the setup does not wait on the stand-in), then for each a
    ``checkout.session.completed`` event (paid) is built and signed locally with the webhook secret,
    verified with ``StripeGateway.verified_event`` and applied with ``market.handle_stripe_event`` in a
    session of its own: one after the other, then with ``--threads`` threads on another batch. The time
    in signature verification and in ``handle_stripe_event`` is printed separately.

Afterwards: each paid order has one purchase entry and one invoice, the invoice numbers are 1..N without
gaps or duplicates, and the ledger invariants hold.

    .venv/bin/python benchmarks/bench_checkout.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import stripe
from benchcommon import HOUR, check_invariants, machine_summary, make_site, person, scratch_databases
from portal_standin.devstack import free_port
from portal_standin.devstripe import StripeStandIn
from sqlmodel import Session, func, select

from portal.config import Settings, load_settings
from portal.identity.models import FactoryRole, Login, User
from portal.identity.services import grant_role
from portal.market import services as market
from portal.market.models import Invoice, Offering, OfferingState, Order, OrderState
from portal.market.stripe_gateway import CheckoutSession, StripeGateway
from portal.projects import services as projects
from portal.projects.models import Project

WEBHOOK_SECRET = "whsec_bench_checkout"  # noqa: S105  (a local signing secret, not a credential)
HOURS_PER_ORDER = 10


@dataclass
class Shop:
    settings: Settings
    buyer_id: int
    project_id: int
    offering_id: int


class TimedGateway(StripeGateway):
    """The real gateway, keeping the seconds each ``create_checkout_session`` took (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.calls: list[float] = []
        self.lock = threading.Lock()

    def create_checkout_session(self, **kwargs: Any) -> CheckoutSession:
        started = time.perf_counter()
        try:
            return super().create_checkout_session(**kwargs)
        finally:
            with self.lock:
                self.calls.append(time.perf_counter() - started)


class StubGateway(StripeGateway):
    """For the untimed setup of (b): a made-up session id instead of a call to the stand-in."""

    counter = itertools.count(1)

    def create_checkout_session(self, **kwargs: Any) -> CheckoutSession:
        return CheckoutSession(f"cs_bench_{next(self.counter)}", "http://stand-in/pay")


def login_of(user: User) -> Login:
    return Login(user_id=user.id, provider="eidas", subject="x", level="substantial", attributes={})


def build_shop(engine: sa.Engine, settings: Settings, capacity_hours: int) -> Shop:
    today = datetime.now(UTC).date()
    with Session(engine, expire_on_commit=False) as db:
        world = make_site(
            db, [(today - timedelta(days=1), today + timedelta(days=200))], capacity=capacity_hours * HOUR
        )
        offering = market.create_offering(
            db,
            None,
            resource=world.gpu,
            title="H100 hours",
            price_cents=250,
            max_quantity=500,
            validity_months=3,
            reason="benchmark data",
        )
        market.set_offering_state(db, None, offering, OfferingState.PUBLISHED, reason="benchmark data")
        staff = person(db, "Staff")
        grant_role(db, None, staff, FactoryRole.ADMIN, reason="benchmark data")
        buyer = person(db, "Buyer")
        org = projects.create_organisation(
            db, buyer, name="Kaunas Vision UAB", kind="sme", country="LT", vat_number="LT119511515"
        )
        projects.verify_organisation(db, staff, org, reason="benchmark data")
        project = projects.create_project(db, buyer, org, title="Shelf vision")
        return Shop(settings, buyer.id, project.id, offering.id)


def place(engine: sa.Engine, shop: Shop, gateway: StripeGateway) -> Order:
    with Session(engine, expire_on_commit=False) as db:
        user = db.get(User, shop.buyer_id)
        project = db.get(Project, shop.project_id)
        offering = db.get(Offering, shop.offering_id)
        assert user is not None and project is not None and offering is not None
        order, _url = market.place_order(
            db,
            shop.settings,
            gateway,
            user,
            login_of(user),
            offering=offering,
            project=project,
            quantity=HOURS_PER_ORDER,
        )
        return order


def run_in_threads(count: int, items: list[Any], work: Callable[[Any], Any]) -> list[Any]:
    """``work(item)`` for every item, by ``count`` threads taking items from a shared iterator."""
    results: list[Any] = []
    lock = threading.Lock()
    source = iter(items)

    def loop() -> None:
        while True:
            with lock:
                item = next(source, None)
            if item is None:
                return
            result = work(item)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=loop) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def signed_completed(order: Order) -> tuple[bytes, str]:
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": order.checkout_session_id,
                "object": "checkout.session",
                "payment_status": "paid",
                "payment_intent": f"pi_bench_{order.id}",
                "metadata": {"order_id": str(order.id)},
            }
        },
    }
    payload = json.dumps(event).encode()
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload.decode()}", WEBHOOK_SECRET)
    return payload, f"t={timestamp},v1={signature}"


def bench_checkout(engine: sa.Engine, shop: Shop, orders: int, threads: int) -> None:
    print(f"(a) checkout creation: place_order with the real StripeGateway against the stand-in, {orders} orders")
    for label, count in (("1 thread", 1), (f"{threads} threads", threads)):
        gateway = TimedGateway(shop.settings)
        latencies: list[float] = []

        def one(_i: int, gateway: TimedGateway = gateway, latencies: list[float] = latencies) -> Order:
            started = time.perf_counter()
            order = place(engine, shop, gateway)
            latencies.append(time.perf_counter() - started)
            return order

        started = time.perf_counter()
        placed = run_in_threads(count, list(range(orders)), one)
        elapsed = time.perf_counter() - started
        assert len(placed) == orders and all(o.checkout_session_id for o in placed)
        share = sum(gateway.calls) / sum(latencies)
        print(
            f"  {label:<11} {orders / elapsed:7.1f} orders/s   median {statistics.median(latencies) * 1000:6.1f} ms"
            f"   p90 {statistics.quantiles(latencies, n=10)[-1] * 1000:6.1f} ms"
            f"   in the stand-in {share:5.1%} (median {statistics.median(gateway.calls) * 1000:.1f} ms a call),"
            f" in the portal {1 - share:5.1%}"
        )
    print()


def bench_webhooks(engine: sa.Engine, shop: Shop, events: int, threads: int) -> None:
    print(f"(b) webhook fulfilment: verified_event + handle_stripe_event, {events} checkout.session.completed")
    verifier = StripeGateway(shop.settings)
    for label, count in (("1 thread", 1), (f"{threads} threads", threads)):
        stub = StubGateway(shop.settings)
        started = time.perf_counter()
        orders = [place(engine, shop, stub) for _ in range(events)]
        setup = time.perf_counter() - started
        deliveries = [signed_completed(o) for o in orders]
        verify_seconds: list[float] = []
        handle_seconds: list[float] = []

        def one(delivery: tuple[bytes, str], v: list[float] = verify_seconds, h: list[float] = handle_seconds) -> str:
            t0 = time.perf_counter()
            event = verifier.verified_event(*delivery)
            t1 = time.perf_counter()
            with Session(engine, expire_on_commit=False) as db:
                outcome = market.handle_stripe_event(db, shop.settings, event)
            t2 = time.perf_counter()
            v.append(t1 - t0)
            h.append(t2 - t1)
            return outcome

        started = time.perf_counter()
        outcomes = run_in_threads(count, deliveries, one)
        elapsed = time.perf_counter() - started
        assert outcomes == ["fulfilled"] * events, set(outcomes)
        latencies = [a + b for a, b in zip(verify_seconds, handle_seconds, strict=True)]
        share = sum(verify_seconds) / sum(latencies)
        print(
            f"  {label:<11} {events / elapsed:7.1f} events/s   median {statistics.median(latencies) * 1000:6.1f} ms"
            f"   p90 {statistics.quantiles(latencies, n=10)[-1] * 1000:6.1f} ms"
            f"   signature check {share:5.1%}, handle_stripe_event {1 - share:5.1%}"
            f"   (setup: {events} orders in {setup:.1f} s)"
        )
    print()


def check(engine: sa.Engine, shop: Shop) -> None:
    with Session(engine) as db:
        numbers = db.exec(
            select(Invoice.number)
            .where(Invoice.seller_vat_number == shop.settings.seller_vat_number)
            .order_by(Invoice.number)
        ).all()
        assert list(numbers) == list(range(1, len(numbers) + 1)), "invoice numbers have gaps or duplicates"
        paid = db.exec(select(func.count()).where(Order.state == OrderState.PAID)).one()
        invoiced = db.exec(select(func.count(sa.distinct(Invoice.order_id)))).one()
        assert paid == invoiced == len(numbers), (paid, invoiced, len(numbers))
    print(f"checked: {len(numbers)} paid orders, one invoice each, numbered 1..{len(numbers)} without gaps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (any database on it)")
    parser.add_argument("--orders", type=int, default=300, help="orders placed in (a), per run")
    parser.add_argument("--events", type=int, default=1000, help="webhook events applied in (b), per run")
    parser.add_argument("--threads", type=int, default=8, help="threads of the concurrent runs")
    args = parser.parse_args()
    print(machine_summary(args.database_url))
    print()
    with tempfile.TemporaryDirectory() as tmp, scratch_databases(args.database_url, "checkout") as scratch:
        _name, url = scratch.create()
        stand_in = StripeStandIn(free_port(), Path(tmp) / "stripe", from_scratch=True).start()
        try:
            settings = load_settings(
                env="test",
                database_url=url,
                secret_key="bench",  # noqa: S106
                mail_backend="log",
                log_level="WARNING",
                stripe_api_base=stand_in.url,
                stripe_api_key=stand_in.api_key,
                stripe_webhook_secret=WEBHOOK_SECRET,
            )
            engine = sa.create_engine(url, pool_size=args.threads + 4, max_overflow=0)
            capacity = HOURS_PER_ORDER * 2 * (args.orders + args.events) + 1000
            shop = build_shop(engine, settings, capacity)
            # warm up: imports, connections, the stand-in's first request
            for _ in range(3):
                place(engine, shop, StripeGateway(settings))
            bench_checkout(engine, shop, args.orders, args.threads)
            bench_webhooks(engine, shop, args.events, args.threads)
            check(engine, shop)
            engine.dispose()
            check_invariants(url)
            print("ledger invariants hold")
        finally:
            stand_in.stop()


if __name__ == "__main__":
    main()
