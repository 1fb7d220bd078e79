"""The marketplace's pages: offerings for staff, an organisation's billing page, finance's orders and exports."""

from __future__ import annotations

import csv
import io
import re

import pytest
from sqlmodel import select

from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.market import services as market
from portal.market.forms import parse_price
from portal.market.models import Invoice, InvoiceKind, Offering, OfferingPrice, OfferingState, Order, OrderState
from portal.projects import services as projects
from tests.conftest import post_form
from tests.ledger_world import HOUR
from tests.market.test_market import fresh, order, pay, shop, wait_for

#: The fixtures of tests/market/test_market.py, used here by name.
__all__ = ["shop"]


def staff(shop, login, db, role: FactoryRole):
    client = shop.app.test_client()
    user = login(client)
    grant_role(db, None, user, role, reason="test setup")
    return client, user


def paid_order(shop, db, quantity: int) -> Order:
    pay_url = order(shop, quantity)
    placed = db.exec(select(Order).order_by(Order.id.desc())).first()
    pay(pay_url)
    wait_for("payment", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    return fresh(db, Order, placed.id)


@pytest.mark.parametrize(
    ("text", "cents"), [("2.50", 250), ("2,5", 250), ("0.01", 1), ("1000", 100_000), (" 12.30 ", 1230)]
)
def test_prices_are_parsed_to_cents_exactly(text: str, cents: int) -> None:
    assert parse_price(text) == cents


@pytest.mark.parametrize("text", ["", "abc", "2.555", "-1", "0", "0.00", "NaN", "inf", "1e3"])
def test_bad_prices_are_refused(text: str) -> None:
    with pytest.raises(market.InvalidInput):
        parse_price(text)


def test_staff_create_an_offering_and_a_bad_price_is_explained(shop, db, login):
    operator, _user = staff(shop, login, db, FactoryRole.SITE_OPERATOR)
    page = operator.get("/admin/offerings")
    assert page.status_code == 200 and "H100 hours" in page.get_data(as_text=True)
    form = {
        "resource_id": shop.world.gpu.id,
        "title": "Cheap H100 hours",
        "description": "Off-peak",
        "price": "1.999",
        "min_quantity": "10",
        "max_quantity": "100",
        "validity_months": "6",
        "reason": "Off-peak hours sell badly",
    }
    bad = post_form(operator, "/admin/offerings", form, page="/admin/offerings")
    html = bad.get_data(as_text=True)
    assert bad.status_code == 422 and "at most two decimals" in html
    assert 'value="Cheap H100 hours"' in html and 'aria-invalid="true"' in html
    reversed_quantities = post_form(
        operator, "/admin/offerings", {**form, "price": "1.99", "max_quantity": "5"}, page="/admin/offerings"
    )
    assert reversed_quantities.status_code == 422
    assert db.exec(select(Offering).where(Offering.title == "Cheap H100 hours")).all() == []
    no_csrf = operator.post("/admin/offerings", data={**form, "price": "1.99"})
    assert no_csrf.status_code == 400

    created = post_form(operator, "/admin/offerings", {**form, "price": "1.99"}, page="/admin/offerings")
    assert created.status_code == 302
    offering = db.exec(select(Offering).where(Offering.title == "Cheap H100 hours")).one()
    assert (offering.price_cents, offering.min_quantity, offering.max_quantity, offering.validity_months) == (
        199,
        10,
        100,
        6,
    )
    assert offering.state == OfferingState.DRAFT
    assert "Cheap H100 hours" not in shop.client.get("/market").get_data(as_text=True)

    # publish: on sale; retire: gone again
    url = f"/admin/offerings/{offering.id}"
    assert (
        post_form(operator, f"{url}/state", {"state": "published", "reason": "Ready for sale"}, page=url).status_code
        == 302
    )
    assert "Cheap H100 hours" in shop.client.get("/market").get_data(as_text=True)
    assert (
        post_form(
            operator, f"{url}/state", {"state": "retired", "reason": "The nodes are decommissioned"}, page=url
        ).status_code
        == 302
    )
    assert "Cheap H100 hours" not in shop.client.get("/market").get_data(as_text=True)
    assert fresh(db, Offering, offering.id).state == OfferingState.RETIRED
    assert post_form(operator, f"{url}/state", {"state": "bogus"}, page=url).status_code == 302
    assert fresh(db, Offering, offering.id).state == OfferingState.RETIRED

    # buyers and finance may not manage offerings
    assert shop.client.get("/admin/offerings").status_code == 403
    finance, _f = staff(shop, login, db, FactoryRole.FINANCE)
    assert finance.get(url).status_code == 403
    assert post_form(finance, f"{url}/state", {"state": "published"}).status_code == 403
    assert operator.get("/admin/offerings/987654").status_code == 404


def test_a_new_price_applies_to_new_orders_only(shop, db, login):
    admin, _user = staff(shop, login, db, FactoryRole.ADMIN)
    order(shop, 10)
    first = db.exec(select(Order)).one()
    url = f"/admin/offerings/{shop.offering.id}"
    bad = post_form(admin, url, {"price": "-3", "reason": "Energy costs"}, page=url)
    assert bad.status_code == 422 and "positive" in bad.get_data(as_text=True)
    assert post_form(admin, url, {"price": "3.10", "reason": "Energy costs rose"}, page=url).status_code == 302
    assert fresh(db, Offering, shop.offering.id).price_cents == 310
    order(shop, 10)
    second = db.exec(select(Order).where(Order.id != first.id)).one()
    assert (fresh(db, Order, first.id).unit_price_cents, fresh(db, Order, first.id).net_cents) == (250, 2_500)
    assert (second.unit_price_cents, second.net_cents) == (310, 3_100)
    prices = db.exec(select(OfferingPrice.price_cents).where(OfferingPrice.offering_id == shop.offering.id)).all()
    assert sorted(prices) == [250, 310]
    page = admin.get(url).get_data(as_text=True)
    assert "€3.10" in page and "€2.50" in page and "Price history" in page
    listing = admin.get("/admin/offerings").get_data(as_text=True)
    assert "3.10 from" in listing and "2.50 from" in listing


def test_the_billing_page_is_for_the_buyer_and_finance(shop, db, login):
    placed = paid_order(shop, db, 40)
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).one()
    url = f"/organisations/{shop.org.id}/billing"
    assert f'href="{url}"' in shop.client.get(f"/organisations/{shop.org.id}").get_data(as_text=True)
    page = shop.client.get(url)
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert invoice.reference in html and f"/market/invoices/{invoice.id}.pdf" in html
    assert "€100.00" in html and "Shelf vision" in html and "paid" in html
    pdf = shop.client.get(f"/market/invoices/{invoice.id}.pdf")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")

    finance, _f = staff(shop, login, db, FactoryRole.FINANCE)
    assert invoice.reference in finance.get(url).get_data(as_text=True)

    outsider = shop.app.test_client()
    login(outsider)
    hidden = outsider.get(url)
    missing = outsider.get("/organisations/987654/billing")
    assert hidden.status_code == missing.status_code == 404
    assert "Kaunas Vision" not in hidden.get_data(as_text=True)
    assert outsider.get(f"/market/invoices/{invoice.id}.pdf").status_code == 404
    # a plain member of the organisation's project sees the project, not the bills
    member = shop.app.test_client()
    colleague = login(member)
    _invitation, link = projects.invite_member(
        db, shop.settings, shop.buyer, shop.project, email=colleague.email or "", role="member"
    )
    projects.accept_invitation(db, colleague, link.rsplit("/", 1)[1])
    assert member.get(url).status_code == 404


def test_finance_refunds_through_the_page_and_sees_the_credit_note(shop, db, login):
    placed = paid_order(shop, db, 40)
    ledger.charge_usage(db, placed.allocation_id, 10 * HOUR, idempotency_key="pages-usage")
    finance, _f = staff(shop, login, db, FactoryRole.FINANCE)
    assert shop.client.get("/finance/orders").status_code == 403
    page = finance.get("/finance/orders").get_data(as_text=True)
    assert "Kaunas Vision UAB" in page and "at most 30" in page

    too_many = post_form(
        finance, f"/finance/orders/{placed.id}/refund", {"quantity": "31", "reason": "Unused"}, page="/finance/orders"
    )
    assert too_many.status_code == 422 and "Between 1 and 30" in too_many.get_data(as_text=True)
    nonsense = post_form(
        finance, f"/finance/orders/{placed.id}/refund", {"quantity": "x", "reason": "Unused"}, page="/finance/orders"
    )
    assert nonsense.status_code == 422
    assert post_form(shop.client, f"/finance/orders/{placed.id}/refund", {"quantity": "1"}).status_code == 403
    assert fresh(db, Order, placed.id).refunded_cents == 0

    done = post_form(
        finance,
        f"/finance/orders/{placed.id}/refund",
        {"quantity": "30", "reason": "Customer asked: project ended"},
        page="/finance/orders",
    )
    assert done.status_code == 302
    note = db.exec(select(Invoice).where(Invoice.order_id == placed.id, Invoice.kind == InvoiceKind.CREDIT_NOTE)).one()
    assert (note.net_cents, note.gross_cents) == (-7_500, -7_500)
    after = fresh(db, Order, placed.id)
    assert (after.state, after.refunded_cents) == (OrderState.PARTIALLY_REFUNDED, 7_500)
    page = finance.get(done.headers["Location"]).get_data(as_text=True)
    assert note.reference in page and f"/market/invoices/{note.id}.pdf" in page
    assert f"credit note {note.reference}" in page  # the flashed message
    # nothing unused is left: no refund form, and a second refund is explained, not a 500
    again = post_form(
        finance, f"/finance/orders/{placed.id}/refund", {"quantity": "1", "reason": "Unused"}, page="/finance/orders"
    )
    assert again.status_code == 422 and "Between 1 and 0" in again.get_data(as_text=True)
    # the buyer sees the credit note on the billing page
    billing = shop.client.get(f"/organisations/{shop.org.id}/billing").get_data(as_text=True)
    assert note.reference in billing and "Credit note" in billing
    # filters
    assert f'id="order-{placed.id}"' in finance.get("/finance/orders?state=partially_refunded").get_data(as_text=True)
    assert f'id="order-{placed.id}"' not in finance.get("/finance/orders?state=paid").get_data(as_text=True)
    assert f'id="order-{placed.id}"' not in finance.get("/finance/orders?organisation=987654").get_data(as_text=True)
    assert f'id="order-{placed.id}"' in finance.get(f"/finance/orders?organisation={shop.org.id}").get_data(
        as_text=True
    )


def euros(cents: int) -> str:
    return ("-" if cents < 0 else "") + f"{abs(cents) // 100}.{abs(cents) % 100:02d}"


def test_the_csv_exports_match_the_database(shop, db, login):
    placed = paid_order(shop, db, 40)
    order(shop, 3)  # pending: in the orders export, without an invoice
    finance, finance_user = staff(shop, login, db, FactoryRole.FINANCE)
    market.refund_order(
        db,
        shop.settings,
        market.StripeGateway(shop.settings),
        finance_user,
        fresh(db, Order, placed.id),
        quantity=4,
        reason="test setup",
    )
    # a hostile organisation name must not become a formula
    sly = projects.create_organisation(db, shop.buyer, name="=HYPERLINK(1)", kind="sme", country="LT")
    assert shop.client.get("/finance/orders.csv").status_code == 403

    response = finance.get("/finance/orders.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    orders = db.exec(select(Order).order_by(Order.id)).all()
    assert [int(r["order_id"]) for r in rows] == [o.id for o in orders]
    for row, o in zip(rows, orders, strict=True):
        assert (row["net_eur"], row["vat_eur"], row["gross_eur"], row["refunded_eur"]) == (
            euros(o.net_cents),
            euros(o.vat_cents),
            euros(o.gross_cents),
            euros(o.refunded_cents),
        )
        assert (row["organisation"], row["country"], row["vat_scheme"], row["state"]) == (
            "Kaunas Vision UAB",
            "LT",
            o.vat_scheme,
            o.state,
        )
        assert row["vat_number"] == "LT119511515" and row["quantity"] == str(o.quantity)
    assert rows[0]["gross_eur"] == "100.00" and rows[0]["refunded_eur"] == "10.00" and rows[0]["paid_at"]
    assert rows[1]["state"] == "pending" and rows[1]["paid_at"] == ""

    invoices = finance.get("/finance/invoices.csv")
    lines = list(csv.DictReader(io.StringIO(invoices.get_data(as_text=True))))
    stored = db.exec(select(Invoice).order_by(Invoice.id)).all()
    assert [(int(r["invoice_id"]), r["reference"], r["kind"]) for r in lines] == [
        (i.id, i.reference, i.kind) for i in stored
    ]
    invoice, note = lines
    assert (invoice["net_eur"], invoice["vat_eur"], invoice["gross_eur"]) == ("100.00", "0.00", "100.00")
    assert (note["net_eur"], note["gross_eur"], note["corrects"]) == ("-10.00", "-10.00", invoice["reference"])
    assert invoice["vat_scheme"] == "reverse_charge" and invoice["vat_number"] == "LT119511515"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*", invoice["issued_at"])

    # the formula guard: an order of the sly organisation
    sly_project = projects.create_project(db, shop.buyer, sly, title="Sly")
    admin = login(shop.app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, sly, reason="test setup")
    post_form(
        shop.client,
        f"/market/offerings/{shop.offering.id}/order",
        {"project_id": sly_project.id, "quantity": 2},
        page="/market",
    )
    rows = list(csv.DictReader(io.StringIO(finance.get("/finance/orders.csv").get_data(as_text=True))))
    assert rows[-1]["organisation"] == "'=HYPERLINK(1)"


def test_the_navigation_follows_the_roles(shop, db, login):
    buyer_page = shop.client.get("/").get_data(as_text=True)
    assert 'href="/market"' in buyer_page
    assert 'href="/finance/orders"' not in buyer_page and 'href="/admin/offerings"' not in buyer_page
    finance, _f = staff(shop, login, db, FactoryRole.FINANCE)
    page = finance.get("/").get_data(as_text=True)
    assert 'href="/finance/orders"' in page and 'href="/admin/offerings"' not in page
    operator, _o = staff(shop, login, db, FactoryRole.SITE_OPERATOR)
    page = operator.get("/").get_data(as_text=True)
    assert 'href="/finance/orders"' not in page and 'href="/admin/offerings"' in page
    admin, _a = staff(shop, login, db, FactoryRole.ADMIN)
    page = admin.get("/").get_data(as_text=True)
    assert 'href="/finance/orders"' in page and 'href="/admin/offerings"' in page


def test_staff_edit_an_offerings_details_and_bad_values_are_refused(shop, db, login):
    admin_client = shop.app.test_client()
    grant_role(db, None, login(admin_client), FactoryRole.ADMIN, reason="test setup")
    page = f"/admin/offerings/{shop.offering.id}"
    bad = post_form(
        admin_client,
        f"{page}/details",
        {
            "title": "H100 hours",
            "description": "",
            "min_quantity": "50",
            "max_quantity": "10",
            "validity_months": "6",
            "reason": "Bigger orders only",
        },
        page=page,
    )
    assert bad.status_code == 422 and "at least the smallest" in bad.get_data(as_text=True)
    good = post_form(
        admin_client,
        f"{page}/details",
        {
            "title": "H100 hours, Riga",
            "description": "Fast NVLink",
            "min_quantity": "10",
            "max_quantity": "800",
            "validity_months": "12",
            "reason": "Longer validity for Riga",
        },
        page=page,
    )
    assert good.status_code == 302
    db.expire_all()
    offering = db.get(Offering, shop.offering.id)
    assert (offering.title, offering.min_quantity, offering.max_quantity, offering.validity_months) == (
        "H100 hours, Riga",
        10,
        800,
        12,
    )
