"""The operators' dashboards: every figure against a seeded factory whose totals are computed here, in plain
Python over the seeding's own inputs; pages, CSV and JSON agree; who sees what; query counts stay put."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import unescape
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlmodel import Session, select

from portal.formatting import money, quantity
from portal.grants import services as grants
from portal.grants.models import ReviewMode
from portal.identity.models import FactoryRole, User
from portal.identity.services import create_api_token, grant_role
from portal.ledger import services as ledger
from portal.ledger.models import AllocationSource, ResourceKind, UsageMonth
from portal.ledger.services import UsageCharge
from portal.market import services as market
from portal.market.models import InvoiceKind, Order, OrderState
from portal.projects import services as projects
from portal.reports import rollups
from portal.reports import services as reports
from portal.reports.jobs import check_report_rollups
from tests.conftest import portal_cli_in_process
from tests.grants_world import complete_draft, login_of, make_grant_world, staff
from tests.ledger_world import HOUR, person

Q1 = (date(2030, 1, 1), date(2030, 4, 1))
Q2 = (date(2030, 4, 1), date(2030, 7, 1))


def at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# --- the seeding's inputs: everything the expected figures are computed from -----------------------------

SITES = {"waw": ("Warsaw", "PL"), "rix": ("Riga", "LV")}
#: (site, resource code) -> (kind, display name)
RESOURCES = {
    ("waw", "h100"): (ResourceKind.GPU, "H100 GPU-hours"),
    ("waw", "cpu"): (ResourceKind.CPU, "CPU core-hours"),
    ("rix", "h200"): (ResourceKind.GPU, "H200 GPU-hours"),
}
#: (site, resource) -> {quarter start: capacity in hours}
CAPACITY = {
    ("waw", "h100"): {Q1[0]: 2_000, Q2[0]: 1_500},
    ("waw", "cpu"): {Q1[0]: 40_000},
    ("rix", "h200"): {Q1[0]: 1_000, Q2[0]: 1_000},
}
#: name -> (kind, country)
ORGANISATIONS = {
    "Uni of Warsaw": ("university", "PL"),
    "Latvian Agency": ("public_body", "LV"),
    "Tallinn Startup": ("sme", "EE"),
    "Big Corp": ("large_company", "DE"),
    "Krakow SME": ("sme", "PL"),
}
#: key -> (organisation, site, resource, source, hours, starts, ends)
ALLOCATIONS = {
    "uni-h100": ("Uni of Warsaw", "waw", "h100", AllocationSource.AWARD, 500, Q1[0], Q1[1]),
    "agency-h200": ("Latvian Agency", "rix", "h200", AllocationSource.AWARD, 200, Q1[0], Q1[1]),
    "startup-h100": ("Tallinn Startup", "waw", "h100", AllocationSource.PURCHASE, 100, Q1[0], Q1[1]),
    "startup-cpu": ("Tallinn Startup", "waw", "cpu", AllocationSource.PURCHASE, 1_000, Q1[0], Q1[1]),
    # spans the quarters: its reservation is split by time, Feb 15 - Apr 1 in Q1 and Apr 1 - May 15 in Q2
    "corp-h100": ("Big Corp", "waw", "h100", AllocationSource.PURCHASE, 300, date(2030, 2, 15), date(2030, 5, 15)),
    "krakow-cpu": ("Krakow SME", "waw", "cpu", AllocationSource.AWARD, 2_000, Q1[0], Q1[1]),
    "uni-h200": ("Uni of Warsaw", "rix", "h200", AllocationSource.AWARD, 150, Q1[0], Q2[1]),
}
#: Purchases whose capacity is held while the payment is awaited: (organisation, site, resource, hours, dates)
HOLDS = {"agency-hold": ("Latvian Agency", "rix", "h200", 40, Q1[0], Q1[1])}
#: Hours given back to the pool (they stop counting as allocated).
RELEASES = {"uni-h100": 50}
#: (allocation, hours, day of use)
USAGE = [
    ("uni-h100", 40, date(2030, 1, 5)),
    ("uni-h100", 60, date(2030, 1, 20)),
    ("uni-h100", 25, date(2030, 3, 31)),
    ("agency-h200", 30, date(2030, 2, 2)),
    ("startup-h100", 80, date(2030, 2, 10)),
    ("startup-cpu", 700, date(2030, 1, 15)),
    ("corp-h100", 90, date(2030, 3, 1)),
    ("corp-h100", 70, date(2030, 4, 20)),  # Q2
    ("krakow-cpu", 1_500, date(2030, 2, 28)),
    ("uni-h200", 20, date(2030, 3, 15)),
    ("uni-h200", 15, date(2030, 5, 1)),  # Q2
]


def days_between(a: date, b: date) -> int:
    return (b - a).days


def quarter_share(hours: int, starts: date, ends: date, quarter: tuple[date, date]) -> int:
    """Base units of an allocation reserved in ``quarter``: in proportion to the time it spends there; the
    last quarter it touches takes the remainder of the division."""
    total = days_between(starts, ends)
    quarters = [q for q in (Q1, Q2) if min(ends, q[1]) > max(starts, q[0])]
    shares = {q: hours * HOUR * days_between(max(starts, q[0]), min(ends, q[1])) // total for q in quarters}
    shares[quarters[-1]] += hours * HOUR - sum(shares.values())
    return shares.get(quarter, 0)


def public(kind: str) -> str:
    return "public" if kind in ("university", "public_body") else "private"


SECTOR_LABELS = {
    "university": "University or research institute",
    "public_body": "Public body",
    "sme": "SME or startup",
    "large_company": "Large company",
}


@dataclass
class Expected:
    """The figures of 2030-Q1 computed from the inputs above."""

    def allocated(self, site: str, code: str) -> int:
        total = sum(
            quarter_share(h, s, e, Q1) for (_o, si, r, _src, h, s, e) in ALLOCATIONS.values() if (si, r) == (site, code)
        )
        total += sum(quarter_share(h, s, e, Q1) for (_o, si, r, h, s, e) in HOLDS.values() if (si, r) == (site, code))
        return total - sum(
            h * HOUR for key, h in RELEASES.items() if ALLOCATIONS[key][1:3] == (site, code)
        )  # released in Q1: the allocations that give back lie wholly in Q1

    def used(self, site: str, code: str, start: date = Q1[0], end: date = Q1[1]) -> int:
        return sum(h * HOUR for key, h, day in USAGE if ALLOCATIONS[key][1:3] == (site, code) and start <= day < end)

    def used_by(self, group: Any, kind: ResourceKind) -> dict[str, int]:
        totals: dict[str, int] = {}
        for key, h, day in USAGE:
            org, site, code = ALLOCATIONS[key][:3]
            if Q1[0] <= day < Q1[1] and RESOURCES[(site, code)][0] == kind:
                name = group(org)
                totals[name] = totals.get(name, 0) + h * HOUR
        return totals

    def allocated_by(self, group: Any, kind: ResourceKind) -> dict[str, int]:
        totals: dict[str, int] = {}
        items = [(k, o, si, r, h, s, e) for k, (o, si, r, _src, h, s, e) in ALLOCATIONS.items()]
        items += [(k, o, si, r, h, s, e) for k, (o, si, r, h, s, e) in HOLDS.items()]
        for key, org, site, code, h, s, e in items:
            if RESOURCES[(site, code)][0] != kind:
                continue
            name = group(org)
            totals[name] = totals.get(name, 0) + quarter_share(h, s, e, Q1) - RELEASES.get(key, 0) * HOUR
        return totals


def sector_of(org: str) -> str:
    return SECTOR_LABELS[ORGANISATIONS[org][0]]


def country_of(org: str) -> str:
    return ORGANISATIONS[org][1]


def side_of(org: str) -> str:
    return public(ORGANISATIONS[org][0])


# --- seeding through the services ------------------------------------------------------------------------


def seed(db: Session) -> SimpleNamespace:
    sites = {
        code: ledger.create_site(db, None, code=code, name=name, city=name, country=country, reason="test setup")
        for code, (name, country) in SITES.items()
    }
    resources = {}
    for (site, code), (kind, name) in RESOURCES.items():
        resource = ledger.create_resource(
            db,
            None,
            sites[site],
            code=code,
            name=name,
            kind=kind,
            gpu_model="H100" if kind == "gpu" else None,
            reason="test setup",
        )
        resources[(site, code)] = resource
        for start, hours in CAPACITY[(site, code)].items():
            end = Q1[1] if start == Q1[0] else Q2[1]
            ledger.set_capacity(
                db, None, resource, starts_on=start, ends_on=end, capacity=hours * HOUR, reason="test setup"
            )
    owner = person(db, "Owner")
    organisations = {
        name: projects.create_organisation(db, owner, name=name, kind=kind, country=country)
        for name, (kind, country) in ORGANISATIONS.items()
    }
    project_of = {
        name: projects.create_project(db, owner, org, title=f"{name} research") for name, org in organisations.items()
    }
    allocations = {}
    for key, (org, site, code, source, hours, starts, ends) in ALLOCATIONS.items():
        allocations[key] = ledger.open_allocation(
            db,
            None,
            project=project_of[org],
            resource=resources[(site, code)],
            amount=hours * HOUR,
            starts_at=at(starts),
            ends_at=at(ends),
            source=source,
            title=key,
        )
    for key, (org, site, code, hours, starts, ends) in HOLDS.items():
        allocations[key] = ledger.hold_for_purchase(
            db,
            project=project_of[org],
            resource=resources[(site, code)],
            amount=hours * HOUR,
            starts_at=at(starts),
            ends_at=at(ends),
            title=key,
        )
    admin = person(db, "Admin")
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    for key, hours in RELEASES.items():
        ledger.release_to_pool(db, admin, allocations[key].id, hours * HOUR)
    charge(db, allocations, USAGE)
    return SimpleNamespace(
        sites=sites,
        resources=resources,
        organisations=organisations,
        projects=project_of,
        allocations=allocations,
        owner=owner,
        admin=admin,
    )


def charge(db: Session, allocations: dict, usage: list[tuple[str, int, date]], prefix: str = "seed") -> None:
    charges = [
        UsageCharge(allocations[key].id, hours * HOUR, f"{prefix}:{i}", "Slurm job", day)
        for i, (key, hours, day) in enumerate(usage)
    ]
    assert len(ledger.charge_usage_batch(db, charges)) == len(charges)


@pytest.fixture
def factory(db: Session) -> SimpleNamespace:
    return seed(db)


def staff_client(app: Flask, db: Session, login, role: FactoryRole | None) -> tuple[Any, User]:
    client = app.test_client()
    user = login(client)
    if role is not None:
        grant_role(db, None, user, role, reason="test setup")
    return client, user


def table_of(db: Session, actor: User, name: str, quarter: str = "2030-Q1", site: int | None = None) -> list[dict]:
    _scope, table = reports.report_table(db, actor, name, reports.parse_filter(quarter, site))
    return table.rows


def by(rows: list[dict], *keys: str) -> dict:
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows}


# --- the figures -----------------------------------------------------------------------------------------


def test_capacity_allocated_and_used_per_resource_match_the_seeded_factory(db, factory):
    expected = Expected()
    rows = by(table_of(db, factory.admin, "capacity"), "site", "resource")
    assert len(rows) == len(RESOURCES)
    for (site, code), (_kind, name) in RESOURCES.items():
        row = rows[(SITES[site][0], name)]
        capacity = CAPACITY[(site, code)][Q1[0]] * HOUR
        allocated, used = expected.allocated(site, code), expected.used(site, code)
        assert (row["capacity"], row["allocated"], row["used"]) == (capacity, allocated, used), (site, code)
        assert row["allocated_percent"] == round(allocated * 100 / capacity, 1)
        assert row["used_percent"] == round(used * 100 / capacity, 1)
        assert row["used_of_allocated_percent"] == round(used * 100 / allocated, 1)
    # spot checks a person can do by hand: 500 - 50 given back + 100 + 300 × 45/89 days
    assert rows[("Warsaw", "H100 GPU-hours")]["allocated"] == 550 * HOUR + 300 * HOUR * 45 // 89
    assert rows[("Warsaw", "H100 GPU-hours")]["used"] == (40 + 60 + 25 + 80 + 90) * HOUR


def test_utilisation_by_month_spreads_each_quarters_capacity_over_its_days(db, factory):
    expected = Expected()
    rows = by(table_of(db, factory.admin, "utilisation", quarter="2030-Q2"), "month", "resource")
    months = [f"{y}-{m:02d}" for y, m in [(2029, 7 + i) if i < 6 else (2030, i - 5) for i in range(12)]]
    assert sorted({m for m, _r in rows}) == months
    for (site, code), (_kind, name) in RESOURCES.items():
        for month_text in months:
            year, month = map(int, month_text.split("-"))
            first = date(year, month, 1)
            after = date(year + month // 12, month % 12 + 1, 1)
            capacity = 0
            for start, hours in CAPACITY[(site, code)].items():
                end = Q1[1] if start == Q1[0] else Q2[1]
                overlap = days_between(max(start, first), min(end, after))
                if overlap > 0:
                    capacity += hours * HOUR * overlap // days_between(start, end)
            row = rows[(month_text, name)]
            assert row["capacity"] == capacity, (name, month_text)
            assert row["used"] == expected.used(site, code, first, after), (name, month_text)
    march = rows[("2030-03", "H100 GPU-hours")]
    assert march["capacity"] == 2_000 * HOUR * 31 // 90
    assert march["used_percent"] == round((25 + 90) * 100 / (2_000 * 31 / 90), 1)


@pytest.mark.parametrize(
    ("name", "group"),
    [("sectors", sector_of), ("countries", country_of), ("public_private", side_of)],
)
def test_allocations_and_use_by_sector_country_and_public_private_side(db, factory, name, group):
    expected = Expected()
    rows = by(table_of(db, factory.admin, name), "group", "kind")
    for kind in (ResourceKind.GPU, ResourceKind.CPU):
        used, allocated = expected.used_by(group, kind), expected.allocated_by(group, kind)
        total = sum(used.values())
        for group_name in set(used) | set(allocated):
            row = rows[(group_name, kind)]
            assert row["used"] == used.get(group_name, 0), (group_name, kind)
            assert row["allocated"] == allocated.get(group_name, 0), (group_name, kind)
            assert row["used_share_percent"] == round(used.get(group_name, 0) * 100 / total, 1)
        listed = {g for g, k in rows if k == kind and (rows[(g, k)]["used"] or rows[(g, k)]["allocated"])}
        assert listed == {g for g in set(used) | set(allocated) if used.get(g) or allocated.get(g)}
    if name == "public_private":
        # GPU used in Q1: public = university 40+60+25+20 and agency 30; private = 80 + 90
        assert rows[("public", "gpu")]["used"] == 175 * HOUR
        assert rows[("private", "gpu")]["used"] == 170 * HOUR
    if name == "sectors":
        assert rows[("Large company", "cpu")] == {
            "group": "Large company", "kind": "cpu", "allocated": 0, "used": 0, "used_share_percent": 0.0,
        }  # fmt: skip


def test_top_projects_rank_each_kind_by_use_in_the_quarter(db, factory):
    rows = table_of(db, factory.admin, "top_projects")
    used: dict[tuple[str, str], int] = {}
    for key, hours, day in USAGE:
        org, site, code = ALLOCATIONS[key][:3]
        if Q1[0] <= day < Q1[1]:
            kind = str(RESOURCES[(site, code)][0])
            used[(kind, org)] = used.get((kind, org), 0) + hours * HOUR
    for kind in ("gpu", "cpu"):
        ranked = sorted(((a, o) for (k, o), a in used.items() if k == kind), key=lambda p: -p[0])
        total = sum(a for a, _o in ranked)
        got = [r for r in rows if r["kind"] == kind]
        assert [(r["organisation"], r["used"]) for r in got] == [(o, a) for a, o in ranked]
        assert [r["rank"] for r in got] == list(range(1, len(ranked) + 1))
        assert got[0]["used_share_percent"] == round(ranked[0][0] * 100 / total, 1)
        assert got[0]["project"] == f"{ranked[0][1]} research"
        assert got[0]["sector"] == sector_of(ranked[0][1]) and got[0]["country"] == country_of(ranked[0][1])
    # the University of Warsaw used 125 h of H100 and 20 h of H200: one project, 145 GPU-hours, first
    first_gpu = next(r for r in rows if r["kind"] == "gpu")
    assert first_gpu["organisation"] == "Uni of Warsaw" and first_gpu["used"] == 145 * HOUR


def sell(db: Session, settings, factory, lines: list[tuple[str, str, int, int, int]]) -> list[tuple]:
    """Orders paid and invoiced as the webhook would do it: (organisation, offering, hours, unit price, VAT bp)."""
    sold = []
    for org_name, offering_key, hours, unit_cents, vat_bp in lines:
        org, offering = factory.organisations[org_name], factory.offerings[offering_key]
        allocation = factory.allocations["startup-h100"]
        net = hours * unit_cents
        vat = net * vat_bp // 10_000
        order = Order(
            organisation_id=org.id,
            project_id=factory.projects[org_name].id,
            buyer_id=factory.owner.id,
            offering_id=offering.id,
            quantity=hours,
            unit_price_cents=unit_cents,
            net_cents=net,
            vat_basis_points=vat_bp,
            vat_cents=vat,
            gross_cents=net + vat,
            vat_scheme="domestic",
            vat_country=org.country,
            state=OrderState.PAID,
            allocation_id=allocation.id,
            paid_at=datetime.now(UTC),
        )
        db.add(order)
        db.flush()
        invoice = market.issue_invoice(db, settings, order, InvoiceKind.INVOICE, quantity=hours, net_cents=net)
        db.commit()
        sold.append((order, invoice))
    return sold


@pytest.fixture
def shop(db, settings, factory):
    factory.offerings = {
        "h100": market.create_offering(
            db,
            None,
            resource=factory.resources[("waw", "h100")],
            title="H100 hours",
            price_cents=300,
            max_quantity=500,
            reason="test setup",
        ),
        "h200": market.create_offering(
            db,
            None,
            resource=factory.resources[("rix", "h200")],
            title="H200 hours",
            price_cents=400,
            max_quantity=500,
            reason="test setup",
        ),
    }
    sales = [
        ("Tallinn Startup", "h100", 10, 300, 2_200),
        ("Big Corp", "h100", 20, 300, 0),
        ("Uni of Warsaw", "h200", 5, 400, 2_300),
        ("Latvian Agency", "h200", 7, 400, 2_100),
    ]
    sold = sell(db, settings, factory, sales)
    # Big Corp gets 4 hours back: a credit note of -4 h × 3.00
    big_order, big_invoice = sold[1]
    market.issue_invoice(
        db, settings, big_order, InvoiceKind.CREDIT_NOTE, quantity=-4, net_cents=-1_200, corrects=big_invoice
    )
    db.commit()
    factory.sales = sales
    factory.refunds = [("Big Corp", "h100", -4, -1_200, 0)]
    return factory


def test_revenue_by_month_offering_and_side_subtract_credit_notes(db, shop):
    today = datetime.now(UTC).date()
    quarter = f"{today.year}-Q{(today.month - 1) // 3 + 1}"
    lines = [(o, k, h, h * p, h * p * v // 10_000) for o, k, h, p, v in shop.sales]
    lines += [(o, k, h, n, v) for o, k, h, n, v in shop.refunds]
    net = sum(n for *_x, n, _v in lines)
    vat = sum(v for *_x, v in lines)
    months = by(table_of(db, shop.admin, "revenue_by_month", quarter), "month")
    assert len(months) == 12
    this_month = months[today.strftime("%Y-%m")]
    assert (this_month["net_cents"], this_month["vat_cents"], this_month["gross_cents"]) == (net, vat, net + vat)
    assert sum(r["net_cents"] for r in months.values()) == net
    offerings = by(table_of(db, shop.admin, "revenue_by_offering", quarter), "offering")
    for key, title in (("h100", "H100 hours"), ("h200", "H200 hours")):
        own = [line for line in lines if line[1] == key]
        assert offerings[title]["hours"] == sum(h for _o, _k, h, _n, _v in own)
        assert offerings[title]["net_cents"] == sum(n for _o, _k, _h, n, _v in own)
        assert offerings[title]["gross_cents"] == sum(n + v for _o, _k, _h, n, v in own)
    assert offerings["H100 hours"]["hours"] == 26 and offerings["H100 hours"]["net_cents"] == 7_800
    sides = by(table_of(db, shop.admin, "revenue_public_private", quarter), "side")
    for side in ("public", "private"):
        assert sides[side]["net_cents"] == sum(n for o, _k, _h, n, _v in lines if side_of(o) == side)
    assert sides["public"]["net_cents"] == 5 * 400 + 7 * 400
    assert sides["private"]["net_share_percent"] == round(7_800 * 100 / net, 1)
    for name in ("revenue_by_month", "revenue_by_offering", "revenue_public_private"):
        assert {r["currency"] for r in table_of(db, shop.admin, name, quarter)} == {"EUR"}, name
    # an earlier quarter has none of it
    assert all(r["net_cents"] == 0 for r in table_of(db, shop.admin, "revenue_by_offering", "2030-Q1"))


def test_the_applications_funnel_counts_each_calls_applications_by_stage(app, db, settings):
    g = make_grant_world(db, mode=ReviewMode.TECHNICAL)
    manager = g.manager

    organisation = projects.get_organisation(db, g.pi, g.project.organisation_id)

    def application(title: str):
        g.project = projects.create_project(db, g.pi, organisation, title=title)
        return complete_draft(db, g)

    draft = application("Drafting")
    submitted = grants.submit(db, settings, g.pi, login_of(g.pi), application("Waiting"))
    withdrawn = grants.withdraw(
        db, settings, g.pi, grants.submit(db, settings, g.pi, login_of(g.pi), application("Changed mind"))
    )
    rejected = grants.administrative_check(
        db,
        settings,
        manager,
        grants.submit(db, settings, g.pi, login_of(g.pi), application("Ineligible")),
        passed=False,
    )
    checked = grants.administrative_check(
        db, settings, manager, grants.submit(db, settings, g.pi, login_of(g.pi), application("Checked")), passed=True
    )
    states = [a.state for a in (draft, submitted, withdrawn, rejected, checked)]
    assert [str(s) for s in states] == ["draft", "submitted", "withdrawn", "rejected", "technical_assessment"]
    admin = staff(db, FactoryRole.ADMIN, "Admin")
    rows = by(table_of(db, admin, "funnel"), "call_id")
    row = rows[g.call.id]
    assert {k: row[k] for k in ("started", "submitted", "in_review", "accepted", "rejected", "withdrawn")} == {
        "started": 5,
        "submitted": 4,
        "in_review": 2,
        "accepted": 0,
        "rejected": 1,
        "withdrawn": 1,
    }
    assert row["accepted_percent"] == 0.0 and row["call"] == g.call.title


# --- rollups: kept in the charge's and the invoice's transaction, rebuilt and checked --------------------


def test_rollups_agree_with_a_recomputation_from_the_ledger_and_invoices(db, shop):
    assert rollups.rollup_differences(db) == []
    rows = db.exec(select(UsageMonth.allocation_id, UsageMonth.month, UsageMonth.amount)).all()
    months = {(a, m): x for a, m, x in rows}
    corp = shop.allocations["corp-h100"].id
    assert months[(corp, date(2030, 3, 1))] == 90 * HOUR and months[(corp, date(2030, 4, 1))] == 70 * HOUR


def test_portal_reports_check_finds_drift_and_rebuild_repairs_it(app, db, shop):
    assert portal_cli_in_process(app, "reports", "check").returncode == 0
    uni = shop.allocations["uni-h100"].id
    db.execute(sa.text("UPDATE report_usage_months SET amount = amount + 1 WHERE allocation_id = :a"), {"a": uni})
    db.execute(sa.text("DELETE FROM report_revenue_months"))
    db.commit()
    checked = portal_cli_in_process(app, "reports", "check")
    assert checked.returncode == 1
    assert "report_usage_months" in checked.stdout and "report_revenue_months" in checked.stdout
    assert "allocations.used" in checked.stdout
    rebuilt = portal_cli_in_process(app, "reports", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    usage_months = {(key, day.month) for key, _h, day in USAGE}
    revenue_rows = {(org, offering) for org, offering, *_rest in shop.sales}  # one month: (organisation, offering)
    assert f"rebuilt {len(usage_months)} usage months and {len(revenue_rows)} revenue months" in rebuilt.stdout
    again = portal_cli_in_process(app, "reports", "check")
    assert again.returncode == 0 and "agree" in again.stdout
    warsaw = by(table_of(db, shop.admin, "capacity"), "site", "resource")[("Warsaw", "H100 GPU-hours")]
    assert warsaw["used"] == Expected().used("waw", "h100")


# --- pages, CSV and JSON agree -----------------------------------------------------------------------


def html_table(page: str, name: str) -> list[list[str]]:
    match = re.search(rf'<table class="report" data-report="{name}">(.*?)</table>', page, re.S)
    assert match, f"no table {name} on the page"
    body = match.group(1).split("<tbody>")[1]
    return [
        [unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def shown(value: Any, fmt: str, row: dict) -> str:
    if value is None:
        return "–"
    if fmt == "quantity":
        return quantity(value, row["kind"])
    if fmt == "cents":
        return money(value, row["currency"])
    if fmt == "percent":
        return f"{value:,.1f} %"
    if fmt == "int":
        return f"{value:,}"
    return str(value)


def test_pages_csv_and_json_show_the_same_figures(app, db, login, shop):
    client, finance = staff_client(app, db, login, FactoryRole.FINANCE)
    _token, bearer = create_api_token(db, finance, name="dashboards", scopes=["reports:read"], ttl_days=30)
    today = datetime.now(UTC).date()
    quarters = {"usage": "2030-Q1", "revenue": f"{today.year}-Q{(today.month - 1) // 3 + 1}", "calls": "2030-Q1"}
    paths = {"usage": "/reports", "revenue": "/reports/revenue", "calls": "/reports/calls"}
    pages = {page: client.get(f"{paths[page]}?quarter={q}") for page, q in quarters.items()}
    assert all(p.status_code == 200 for p in pages.values())
    assert "<svg" in pages["usage"].get_data(as_text=True)
    for name, (page, _build) in reports.TABLES.items():
        query = f"quarter={quarters[page]}"
        api = client.get(f"/api/v1/reports/{name}?{query}", headers={"Authorization": f"Bearer {bearer}"})
        assert api.status_code == 200, api.get_data(as_text=True)
        body = api.get_json()
        assert body["quarter"] == quarters[page] and body["report"] == name
        expected_rows = table_of(db, finance, name, quarters[page])
        assert body["rows"] == expected_rows
        exported = client.get(f"/reports/{name}.csv?{query}")
        assert exported.status_code == 200 and exported.mimetype == "text/csv"
        records = list(csv.reader(io.StringIO(exported.get_data(as_text=True))))
        keys = [c["key"] for c in body["columns"]]
        assert records[0] == keys
        assert records[1:] == [["" if r[k] is None else str(r[k]) for k in keys] for r in body["rows"]]
        formats = [c["format"] for c in body["columns"]]
        cells = html_table(pages[page].get_data(as_text=True), name)
        if body["rows"]:
            assert cells == [[shown(r[k], f, r) for k, f in zip(keys, formats, strict=True)] for r in body["rows"]]
    capacity = html_table(pages["usage"].get_data(as_text=True), "capacity")
    assert ["Warsaw", "H100 GPU-hours", "gpu", "2,000.0 GPU-hours"] in [c[:4] for c in capacity]


def test_the_site_filter_narrows_every_usage_table_to_one_site(db, factory):
    riga = factory.sites["rix"].id
    rows = table_of(db, factory.admin, "capacity", site=riga)
    assert [r["resource"] for r in rows] == ["H200 GPU-hours"]
    sides = by(table_of(db, factory.admin, "public_private", site=riga), "group", "kind")
    assert sides[("public", "gpu")]["used"] == (30 + 20) * HOUR and sides[("private", "gpu")]["used"] == 0
    top = table_of(db, factory.admin, "top_projects", site=riga)
    assert [(r["organisation"], r["used"]) for r in top] == [
        ("Latvian Agency", 30 * HOUR),
        ("Uni of Warsaw", 20 * HOUR),
    ]


# --- who sees what -------------------------------------------------------------------------------------


def test_a_site_operator_sees_only_the_sites_assigned_to_them_and_no_revenue(app, db, login, shop):
    client, operator = staff_client(app, db, login, FactoryRole.SITE_OPERATOR)
    page = client.get("/reports?quarter=2030-Q1").get_data(as_text=True)
    assert "No site is assigned to you yet" in page and "GPU-hours" not in page
    reports.assign_site(db, shop.admin, operator, shop.sites["rix"], reason="test setup")
    page = client.get("/reports?quarter=2030-Q1").get_data(as_text=True)
    assert [row[:2] for row in html_table(page, "capacity")] == [["Riga", "H200 GPU-hours"]]
    assert "H100 GPU-hours" not in page and "Tallinn Startup" not in page
    assert client.get(f"/reports?site={shop.sites['waw'].id}").status_code == 404
    assert client.get(f"/reports/capacity.csv?site={shop.sites['waw'].id}").status_code == 404
    assert client.get("/reports/revenue").status_code == 403
    assert client.get("/reports/revenue_by_month.csv").status_code == 403
    assert client.get("/reports/calls").status_code == 200
    assert 'href="/reports/revenue' not in page
    _token, bearer = create_api_token(db, operator, name="ops", scopes=["reports:read"], ttl_days=30)
    headers = {"Authorization": f"Bearer {bearer}"}
    assert client.get("/api/v1/reports/revenue_by_offering", headers=headers).status_code == 403
    rows = client.get("/api/v1/reports/capacity?quarter=2030-Q1", headers=headers).get_json()["rows"]
    assert [r["site"] for r in rows] == ["Riga"]


def test_people_without_a_staff_role_get_403_everywhere(app, db, login, factory):
    client, outsider = staff_client(app, db, login, None)
    for path in ["/reports", "/reports/revenue", "/reports/calls", *(f"/reports/{n}.csv" for n in reports.TABLES)]:
        assert client.get(path).status_code == 403, path
    _token, bearer = create_api_token(db, outsider, name="x", scopes=["reports:read"], ttl_days=30)
    for name in reports.TABLES:
        response = client.get(f"/api/v1/reports/{name}", headers={"Authorization": f"Bearer {bearer}"})
        assert response.status_code == 403 and response.mimetype == "application/problem+json"
    _token, reader = create_api_token(db, factory.admin, name="read only", scopes=["read"], ttl_days=30)
    refused = client.get("/api/v1/reports/capacity", headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403 and "reports:read" in refused.get_json()["detail"]
    assert "Reports" not in client.get("/").get_data(as_text=True)


def test_operators_pick_any_quarter_with_capacity_past_or_planned_and_see_its_chart(app, db, login, factory):
    client, _admin = staff_client(app, db, login, FactoryRole.SITE_OPERATOR)
    reports.assign_site(db, factory.admin, _admin, factory.sites["rix"], reason="test setup")
    page = client.get("/reports").get_data(as_text=True)
    choices = re.findall(r'<option value="(\d{4}-Q\d)"', page)
    today = datetime.now(UTC).date()
    this = f"{today.year}-Q{(today.month - 1) // 3 + 1}"
    # the seeded capacity lies in 2030 (planned, years ahead): its quarters are offered, as are two years back
    assert choices[0] == "2030-Q2" and "2030-Q1" in choices and this in choices
    assert f"{today.year - 2}-Q{(today.month - 1) // 3 + 1}" in choices
    assert choices == sorted(choices, reverse=True) and len(choices) == len(set(choices))
    q1 = client.get("/reports?quarter=2030-Q1").get_data(as_text=True)
    chart = q1[q1.index('id="capacity"') : q1.index('id="utilisation"')]
    allocated = 100 * (quarter_share(200, *Q1, Q1) + quarter_share(150, Q1[0], Q2[1], Q1) + 40 * HOUR) / (1_000 * HOUR)
    assert "<svg" in chart and f"Riga · H200 GPU-hours, Allocated: {allocated:,.1f} %" in chart
    assert f"Riga · H200 GPU-hours, Used: {100 * 50 / 1_000:,.1f} %" in chart


def test_a_bad_quarter_or_an_unknown_report_is_a_clear_error(app, db, login, factory):
    client, _admin = staff_client(app, db, login, FactoryRole.ADMIN)
    for query in ("quarter=2030-Q5", "quarter=0000-Q1", "quarter=9999-Q4", "quarter=1999-Q4", "site=%C2%B2"):
        response = client.get(f"/reports?{query}")
        assert response.status_code == 422, query
        assert "Choose a" in response.get_data(as_text=True)
    _token, bearer = create_api_token(db, _admin, name="dashboards", scopes=["reports:read"], ttl_days=30)
    api = client.get("/api/v1/reports/capacity?quarter=0000-Q1", headers={"Authorization": f"Bearer {bearer}"})
    assert api.status_code == 422 and "2000 to 2999" in api.get_json()["detail"]
    assert client.get("/reports/nonsense.csv").status_code == 404
    assert ">Reports<" in client.get("/").get_data(as_text=True)


# --- cost does not grow with usage ------------------------------------------------------------------------


def test_dashboards_cost_the_same_queries_with_few_or_many_usage_records(app, db, login, shop):
    client, finance = staff_client(app, db, login, FactoryRole.FINANCE)
    _token, bearer = create_api_token(db, finance, name="dashboards", scopes=["reports:read"], ttl_days=30)
    paths = ["/reports?quarter=2030-Q1", "/reports/revenue?quarter=2030-Q1", "/reports/calls"]
    paths += [f"/reports/{name}.csv?quarter=2030-Q1" for name in reports.TABLES]
    api = [f"/api/v1/reports/{name}?quarter=2030-Q1" for name in reports.TABLES]
    engine = app.extensions["portal.engine"]

    def counts() -> list[int]:
        found: list[int] = []

        def count(*_args: Any) -> None:
            found[-1] += 1

        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            for path in paths + api:
                found.append(0)
                headers = {"Authorization": f"Bearer {bearer}"} if path.startswith("/api/") else {}
                assert client.get(path, headers=headers).status_code == 200, path
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        return found

    client.get(api[0], headers={"Authorization": f"Bearer {bearer}"})  # the token's first use is recorded once
    few = counts()
    many = [(key, 1, date(2030, 1, 1) + timedelta(days=i % 90)) for i, key in enumerate(list(ALLOCATIONS) * 60)]
    charge(db, shop.allocations, many, prefix="many")
    assert counts() == few
    assert max(few) <= 20, dict(zip(paths + api, few, strict=True))  # the usage page: six tables, 17 queries


def test_the_nightly_worker_job_reports_rollup_rows_that_drifted(db, settings, shop):
    assert check_report_rollups(db, settings) == 0
    db.execute(
        sa.text("DELETE FROM report_usage_months WHERE allocation_id = :a"), {"a": shop.allocations["corp-h100"].id}
    )
    db.commit()
    # its March and April rows are missing, and its months no longer add up to its used hours
    assert check_report_rollups(db, settings) == 3


def test_chart_labels_slant_when_they_would_overlap_and_stay_level_when_they_fit() -> None:
    from portal.reports.charts import grouped_bars

    few = grouped_bars("Two", ["Riga", "Vilnius"], {"Used": [10.0, 20.0]})
    many = grouped_bars("Many", [f"Site {n} AI Centre · H100 GPU-hours" for n in range(24)], {"Used": [1.0] * 24})
    assert (few.label_angle, few.height) == (0, 220)
    assert many.label_angle == -40 and many.height > 220  # room below the plot for the slanted labels
    assert all(len(label) <= 18 for _, label in many.labels) and many.labels[0][1].endswith("…")
    assert many.bars[0].title.startswith("Site 0 AI Centre · H100 GPU-hours")  # the full name on hover
