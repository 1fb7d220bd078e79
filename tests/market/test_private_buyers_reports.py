"""Private buyers in the operators' dashboards: a personal project has no organisation, yet its hours and its
invoices count in every table (sector "Private buyers", the private side, the owner's billing country), so
that each table adds up to the same totals as the capacity and revenue-by-month tables."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from types import SimpleNamespace

import pytest
from sqlmodel import Session

from portal.identity.models import FactoryRole
from portal.identity.services import create_api_token
from portal.ledger import services as ledger
from portal.ledger.models import AllocationSource, ResourceKind
from portal.market import services as market
from portal.market.models import InvoiceKind, Order, OrderState
from portal.market.vat import vat_cents
from portal.projects import services as projects
from portal.reports import rollups
from portal.reports import services as reports
from tests.ledger_world import HOUR, person
from tests.reports.test_reports import Q1, at, by, charge, factory, shop, staff_client, table_of

__all__ = ["factory", "shop"]

#: name -> (billing country or None for one who never bought, hours bought on Warsaw's H100 in 2030-Q1, hours used)
BUYERS = {"Zofia": ("PL", 50, 30), "Kadri": ("EE", 40, 12), "Given": (None, 10, 4)}


def sell_privately(db: Session, settings, shop, name: str, country: str, allocation, hours: int) -> Order:
    """A private buyer's order, paid and invoiced as the webhook does it, with the consumer VAT of ``country``."""
    offering = shop.offerings["h100"]
    treatment = market.private_buyer_vat(settings, country)
    net = hours * offering.price_cents
    vat = vat_cents(net, treatment.basis_points)
    order = Order(
        organisation_id=None,
        billing_name=f"{name} Private",
        billing_address="Somewhere 1",
        billing_country=country,
        project_id=allocation.project_id,
        buyer_id=shop.buyers[name].id,
        offering_id=offering.id,
        quantity=hours,
        unit_price_cents=offering.price_cents,
        net_cents=net,
        vat_basis_points=treatment.basis_points,
        vat_cents=vat,
        gross_cents=net + vat,
        vat_scheme=treatment.scheme,
        vat_country=treatment.country,
        state=OrderState.PAID,
        allocation_id=allocation.id,
        paid_at=datetime.now(UTC),
    )
    db.add(order)
    db.flush()
    market.issue_invoice(db, settings, order, InvoiceKind.INVOICE, quantity=hours, net_cents=net)
    db.commit()
    return order


@pytest.fixture
def buyers(db, settings, shop) -> SimpleNamespace:
    """The seeded factory and shop of ``tests.reports.test_reports``, plus three persons' personal projects on Warsaw's
    H100 in 2030-Q1: two bought their hours (Zofia in PL, Kadri in EE), one (Given) holds hours without an order
    (a transfer), so no billing country is known for them."""
    shop.buyers, shop.personal, shop.private_orders = {}, {}, {}
    usage = []
    for name, (country, bought, used) in BUYERS.items():
        buyer = person(db, name)
        project = projects.open_personal_project(db, buyer)
        allocation = ledger.open_allocation(
            db,
            None,
            project=project,
            resource=shop.resources[("waw", "h100")],
            amount=bought * HOUR,
            starts_at=at(Q1[0]),
            ends_at=at(Q1[1]),
            source=AllocationSource.PURCHASE if country else AllocationSource.TRANSFER,
            title=f"{name}'s hours",
        )
        shop.buyers[name], shop.personal[name] = buyer, project
        shop.allocations[f"personal-{name}"] = allocation
        usage.append((f"personal-{name}", used, date(2030, 2, 1)))
        if country:
            shop.private_orders[name] = sell_privately(db, settings, shop, name, country, allocation, bought)
    charge(db, shop.allocations, usage, prefix="private")
    return shop


PRIVATE_USED = sum(used for _c, _b, used in BUYERS.values()) * HOUR
PRIVATE_BOUGHT = sum(bought for _c, bought, _u in BUYERS.values()) * HOUR


def totals(rows: list[dict], kind: str, column: str) -> int:
    return sum(r[column] for r in rows if r["kind"] == kind)


def test_private_buyers_use_counts_in_capacity_and_every_grouped_table_with_the_same_totals(db, factory, buyers):
    capacity = table_of(db, buyers.admin, "capacity")
    h100 = by(capacity, "resource")["H100 GPU-hours"]
    # the seeded Warsaw H100: 125 h of the university, 80 h of the startup, 90 h of Big Corp; plus 46 h of persons
    assert h100["used"] == (125 + 80 + 90) * HOUR + PRIVATE_USED
    for kind in (ResourceKind.GPU, ResourceKind.CPU):
        used, allocated = totals(capacity, kind, "used"), totals(capacity, kind, "allocated")
        for name in ("sectors", "countries", "public_private"):
            rows = table_of(db, buyers.admin, name)
            assert totals(rows, kind, "used") == used, (name, kind)
            assert totals(rows, kind, "allocated") == allocated, (name, kind)

    sectors = by(table_of(db, buyers.admin, "sectors"), "group", "kind")
    assert sectors[(reports.PRIVATE_BUYERS_LABEL, "gpu")]["used"] == PRIVATE_USED
    assert sectors[(reports.PRIVATE_BUYERS_LABEL, "gpu")]["allocated"] == PRIVATE_BOUGHT
    assert sectors[(reports.PRIVATE_BUYERS_LABEL, "cpu")]["used"] == 0  # listed like every sector, with nothing

    countries = by(table_of(db, buyers.admin, "countries"), "group", "kind")
    assert countries[("PL", "gpu")]["used"] == (125 + 20 + 30) * HOUR  # Uni of Warsaw's H100 and H200, Zofia
    assert countries[("EE", "gpu")]["used"] == (80 + 12) * HOUR  # the Tallinn startup, Kadri
    assert countries[(reports.PRIVATE_BUYERS_LABEL, "gpu")]["used"] == 4 * HOUR  # Given: no billing address

    sides = by(table_of(db, buyers.admin, "public_private"), "group", "kind")
    assert sides[("private", "gpu")]["used"] == (80 + 90) * HOUR + PRIVATE_USED
    assert sides[("public", "gpu")]["used"] == (125 + 20 + 30) * HOUR


def test_a_private_buyer_ranks_among_the_top_projects_under_their_country(db, factory, buyers):
    gpu = [r for r in table_of(db, buyers.admin, "top_projects") if r["kind"] == "gpu"]
    zofia = next(r for r in gpu if r["project_id"] == buyers.personal["Zofia"].id)
    assert (zofia["project"], zofia["organisation"], zofia["sector"], zofia["country"], zofia["used"]) == (
        buyers.personal["Zofia"].title,
        "",
        reports.PRIVATE_BUYERS_LABEL,
        "PL",
        30 * HOUR,
    )
    given = next(r for r in gpu if r["project_id"] == buyers.personal["Given"].id)
    assert (given["sector"], given["country"]) == (reports.PRIVATE_BUYERS_LABEL, "")
    assert sum(r["used"] for r in gpu) == totals(table_of(db, buyers.admin, "capacity"), "gpu", "used")


def test_private_buyers_revenue_adds_up_in_every_revenue_table_on_the_private_side(db, factory, buyers):
    today = datetime.now(UTC).date()
    quarter = f"{today.year}-Q{(today.month - 1) // 3 + 1}"
    private = list(buyers.private_orders.values())
    private_net = sum(o.net_cents for o in private)
    private_vat = sum(o.vat_cents for o in private)
    assert private_net == (50 + 40) * 300 and private_vat > 0
    seeded_net = sum(h * p for _o, _k, h, p, _v in buyers.sales) + sum(n for *_x, n, _v in buyers.refunds)

    months = table_of(db, buyers.admin, "revenue_by_month", quarter)
    offerings = table_of(db, buyers.admin, "revenue_by_offering", quarter)
    sides = by(table_of(db, buyers.admin, "revenue_public_private", quarter), "side")
    net = sum(r["net_cents"] for r in months)
    assert net == seeded_net + private_net
    assert sum(r["net_cents"] for r in offerings) == net == sum(r["net_cents"] for r in sides.values())
    for column in ("vat_cents", "gross_cents"):
        assert sum(r[column] for r in months) == sum(r[column] for r in sides.values()), column
    assert by(offerings, "offering")["H100 hours"]["hours"] == 26 + 50 + 40
    assert sides["private"]["net_cents"] == 10 * 300 + 20 * 300 - 1_200 + private_net
    assert sides["public"]["net_cents"] == 5 * 400 + 7 * 400
    assert rollups.rollup_differences(db) == []  # the rollup agrees with a rebuild from the invoices


def test_pages_csv_and_api_show_private_buyers(app, db, login, factory, buyers):
    client, finance = staff_client(app, db, login, FactoryRole.FINANCE)
    usage = client.get("/reports?quarter=2030-Q1")
    assert usage.status_code == 200 and reports.PRIVATE_BUYERS_LABEL in usage.get_data(as_text=True)
    assert client.get("/reports/revenue").status_code == 200
    rows = list(csv.DictReader(io.StringIO(client.get("/reports/sectors.csv?quarter=2030-Q1").get_data(as_text=True))))
    (row,) = [r for r in rows if r["group"] == reports.PRIVATE_BUYERS_LABEL and r["kind"] == "gpu"]
    assert int(row["used"]) == PRIVATE_USED
    _token, bearer = create_api_token(db, finance, name="reports", scopes=["reports:read"], ttl_days=30)
    top = client.get("/api/v1/reports/top_projects?quarter=2030-Q1", headers={"Authorization": f"Bearer {bearer}"})
    assert top.status_code == 200
    assert buyers.personal["Zofia"].id in {r["project_id"] for r in top.json["rows"]}
