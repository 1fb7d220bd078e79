"""Private buyers: a person without an organisation buys hours for themselves at level substantial, through the
real stripe library against the local Stripe stand-in, into their personal project, with a consumer's VAT and an
invoice made out to their name and address."""

from __future__ import annotations

import csv
import io
from datetime import date
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.ledger.models import Allocation, AllocationState, EntryKind, LedgerEntry
from portal.market import services as market
from portal.market.models import PRIVATE_BUYERS, Invoice, Order, OrderState, RevenueMonth
from portal.market.vat import OUTSIDE_EU_MENTION, consumer_treatment, standard_rate
from portal.projects.models import Project, ProjectMembership, ProjectRole
from portal.reports import rollups
from tests.conftest import EIDAS, post_form
from tests.ledger_world import HOUR
from tests.market.test_invoice_pdf import text_of
from tests.market.test_market import _completed, _signed, fresh, pay, shop, wait_for

__all__ = ["shop"]


def person(shop, login, *, level: str = "substantial", identifier: str | None = None, name: str = "Zofia"):
    """A person with no organisation, logged in to the served portal at ``level`` (their eID's person identifier
    says which member state issued it)."""
    client = shop.app.test_client()
    claims = {"acr": EIDAS + level, "given_name": name, "family_name": "Wójcik"}
    if identifier:
        claims["person_identifier"] = identifier
    user = login(client, **claims)
    return client, user


def buy_privately(shop, client, *, country: str, quantity: int = 10, expect: int = 303, **fields):
    data = {
        "buyer": "private",
        "billing_name": "Zofia Wójcik",
        "billing_address": "ul. Długa 5, 80-831 Gdańsk",
        "billing_country": country,
        "quantity": quantity,
    } | fields
    response = post_form(client, f"/market/offerings/{shop.offering.id}/order", data, page="/market")
    assert response.status_code == expect, response.get_data(as_text=True)
    return response


def private_order_of(db, user) -> Order:
    db.expire_all()
    return db.exec(select(Order).where(Order.buyer_id == user.id).order_by(col(Order.id).desc())).first()


def test_a_substantial_person_buys_hours_into_a_personal_project_with_domestic_vat_and_an_invoice_to_their_name(
    shop, login, db
):
    client, zofia = person(shop, login, identifier="PL/PL/85010112345")
    form = client.get(f"/market/offerings/{shop.offering.id}/order").get_data(as_text=True)
    assert "Buy as a private person" in form and 'value="PL" selected' in form  # the eID's country, proposed
    assert 'id="private-quote-total"><strong>€3.08' in form  # 1 h × 2.50 + 23 % PL VAT, before paying

    pay_url = buy_privately(shop, client, country="PL").headers["Location"]
    placed = private_order_of(db, zofia)
    project = db.get(Project, placed.project_id)
    assert (project.organisation_id, project.owner_id) == (None, zofia.id)
    assert db.exec(select(ProjectMembership.user_id, ProjectMembership.role).where(
        ProjectMembership.project_id == project.id
    )).all() == [(zofia.id, ProjectRole.PI)]  # fmt: skip
    assert (placed.organisation_id, placed.vat_scheme, placed.vat_country, placed.vat_basis_points) == (
        None,
        "domestic",
        "PL",
        2300,
    )
    assert (placed.net_cents, placed.vat_cents, placed.gross_cents) == (2_500, 575, 3_075)
    assert (placed.billing_name, placed.billing_country, placed.login_country) == ("Zofia Wójcik", "PL", "PL")

    pay(pay_url)
    wait_for("the webhook", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    allocation = fresh(db, Allocation, placed.allocation_id)
    assert (allocation.project_id, allocation.balance, allocation.state) == (
        project.id,
        10 * HOUR,
        AllocationState.ACTIVE,
    )
    (invoice,) = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).all()
    assert invoice.organisation_id is None
    assert invoice.buyer == {"name": "Zofia Wójcik", "address": "ul. Długa 5, 80-831 Gdańsk", "country": "PL"}
    assert (invoice.vat_basis_points, invoice.vat_cents, invoice.gross_cents) == (2300, 575, 3_075)
    assert invoice.mention.startswith("Sale to a consumer: VAT 23 % of PL")

    pdf = client.get(f"/market/invoices/{invoice.id}.pdf")
    assert pdf.status_code == 200
    text = " ".join(text_of(pdf.data).split())  # a Polish seller and buyer: in Polish only
    buyer_part = text[text.index("Nabywca") : text.index("Opis")]
    assert "Zofia Wójcik" in buyer_part and "ul. Długa 5, 80-831 Gdańsk" in buyer_part
    assert "Numer VAT UE" not in buyer_part  # a consumer has none; the seller's is printed above
    for printed in ("VAT 23 % 5,75 €", "Razem 30,75 €", "Sprzedaż konsumentowi: VAT 23 % państwa PL"):
        assert printed in text, (printed, text)

    mine = client.get("/market/purchases").get_data(as_text=True)
    assert invoice.reference in mine and project.title in mine
    page = client.get(f"/projects/{project.id}").get_data(as_text=True)
    assert "Personal project" in page
    revenue = db.exec(select(RevenueMonth).where(RevenueMonth.organisation_id == PRIVATE_BUYERS)).one()
    assert (revenue.quantity, revenue.net_cents, revenue.vat_cents) == (10, 2_500, 575)
    assert rollups.rollup_differences(db) == []  # the rebuild from the invoices agrees with the rollup


def test_a_consumer_in_another_member_state_pays_their_countrys_rate_and_keeps_one_personal_project(shop, login, db):
    client, kadri = person(shop, login, identifier="EE/PL/38001085718", name="Kadri")
    estonian = standard_rate("EE", date.today())
    quote = client.get(
        f"/market/offerings/{shop.offering.id}/quote",
        query_string={"buyer": "private", "billing_country": "EE", "quantity": 10},
    ).get_data(as_text=True)
    vat = (2_500 * estonian + 5_000) // 10_000
    assert f"€{(2_500 + vat) // 100}.{(2_500 + vat) % 100:02d}" in quote and "One-Stop Shop" in quote

    first = buy_privately(shop, client, country="EE", billing_address="Narva mnt 5, 10117 Tallinn")
    placed = private_order_of(db, kadri)
    assert (placed.vat_scheme, placed.vat_country, placed.vat_basis_points, placed.vat_cents) == (
        "oss",
        "EE",
        estonian,
        vat,
    )
    assert (placed.billing_country, placed.login_country) == ("EE", "EE")  # both pieces of evidence, recorded
    pay(first.headers["Location"])
    wait_for("the webhook", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    (invoice,) = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).all()
    assert f"VAT {estonian // 100} % of EE, the customer's member state" in invoice.mention
    assert "(OSS)" in text_of(client.get(f"/market/invoices/{invoice.id}.pdf").data)

    buy_privately(shop, client, country="EE", quantity=5)
    second = private_order_of(db, kadri)
    assert second.id != placed.id and second.project_id == placed.project_id  # one personal project per person
    assert len(db.exec(select(Project).where(Project.owner_id == kadri.id)).all()) == 1


def test_consumer_vat_domestic_oss_below_the_threshold_and_outside_the_eu():
    on = date(2026, 1, 15)
    home = consumer_treatment(seller_country="PL", customer_country="PL", on=on, above_oss_threshold=True)
    assert (home.scheme, home.country, home.basis_points) == ("domestic", "PL", 2300)
    finnish = consumer_treatment(seller_country="PL", customer_country="FI", on=on, above_oss_threshold=True)
    assert (finnish.scheme, finnish.country, finnish.basis_points) == ("oss", "FI", 2550)
    assert finnish.mention.startswith("Sale to a consumer: VAT 25.5 % of FI, the customer's member state")
    small_seller = consumer_treatment(seller_country="PL", customer_country="FI", on=on, above_oss_threshold=False)
    assert (small_seller.scheme, small_seller.country, small_seller.basis_points) == ("domestic", "PL", 2300)
    assert "Article 59c" in small_seller.mention
    norwegian = consumer_treatment(seller_country="PL", customer_country="NO", on=on, above_oss_threshold=True)
    assert (norwegian.scheme, norwegian.basis_points, norwegian.mention) == ("outside_eu", 0, OUTSIDE_EU_MENTION)


def test_a_low_level_login_is_refused_saying_which_login_gives_substantial(shop, login, db):
    client, low = person(shop, login, level="low")
    form = client.get(f"/market/offerings/{shop.offering.id}/order").get_data(as_text=True)
    assert "log in at level substantial or higher" in form and "this login is at level low" in form
    assert "/login/tara?next=" in form  # TARA refuses anything below substantial: the page offers it
    refused = buy_privately(shop, client, country="PL", expect=409).get_data(as_text=True)
    assert "To buy hours as a private person, log in at level substantial" in refused and "TARA" in refused
    db.expire_all()
    assert private_order_of(db, low) is None
    assert db.exec(select(Project).where(Project.owner_id == low.id)).first() is None


def test_bad_billing_details_are_refused_with_what_to_change(shop, login, db):
    client, someone = person(shop, login)
    page = buy_privately(shop, client, country="XX", billing_address=" ", expect=422).get_data(as_text=True)
    assert "Enter your billing address" in page and "Choose the country of your billing address" in page
    assert private_order_of(db, someone) is None


def test_nobody_else_sees_the_personal_project_its_order_or_its_invoice(shop, login, db):
    client, zofia = person(shop, login, identifier="PL/PL/85010112345")
    pay(buy_privately(shop, client, country="PL").headers["Location"])
    placed = private_order_of(db, zofia)
    wait_for("the webhook", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).one()

    for other in (person(shop, login, name="Other")[0], shop.client):  # a stranger; an organisation's admin
        assert other.get(f"/projects/{placed.project_id}").status_code == 404
        assert other.get(f"/market/orders/{placed.id}").status_code == 404
        assert other.get(f"/market/invoices/{invoice.id}.pdf").status_code == 404
        assert invoice.reference not in other.get("/market/purchases").get_data(as_text=True)
        intruding = post_form(
            other,
            f"/market/offerings/{shop.offering.id}/order",
            {"project_id": placed.project_id, "quantity": 10},
            page="/market",
        )
        assert intruding.status_code == 404
    # the owner buys for it only as a private person, never through an organisation's order
    refused = post_form(
        client, f"/market/offerings/{shop.offering.id}/order", {"project_id": placed.project_id, "quantity": 10},
        page="/market",
    )  # fmt: skip
    assert refused.status_code == 409 and "personal project" in refused.get_data(as_text=True)


def test_a_repeated_webhook_for_a_private_order_changes_nothing(shop, login, db):
    client, zofia = person(shop, login)
    buy_privately(shop, client, country="DE")
    placed = private_order_of(db, zofia)
    webhook = shop.app.test_client()
    payload, signature = _signed(
        _completed(placed.id, placed.checkout_session_id, "evt_private_first", amount_total=placed.gross_cents)
    )
    first = webhook.post("/market/stripe/webhook", data=payload, headers={"Stripe-Signature": signature})
    assert first.json["outcome"] == "fulfilled"
    again = webhook.post("/market/stripe/webhook", data=payload, headers={"Stripe-Signature": signature})
    assert again.json["outcome"] == "duplicate"
    payload2, signature2 = _signed(
        _completed(placed.id, placed.checkout_session_id, "evt_private_second", amount_total=placed.gross_cents)
    )
    late = webhook.post("/market/stripe/webhook", data=payload2, headers={"Stripe-Signature": signature2})
    assert late.json["outcome"] == "already paid"
    assert fresh(db, Allocation, placed.allocation_id).balance == 10 * HOUR
    entries = db.exec(select(LedgerEntry.kind).where(LedgerEntry.allocation_id == placed.allocation_id)).all()
    assert entries == [EntryKind.PURCHASE]
    assert len(db.exec(select(Invoice).where(Invoice.order_id == placed.id)).all()) == 1
    revenue = db.exec(select(RevenueMonth).where(RevenueMonth.organisation_id == PRIVATE_BUYERS)).one()
    assert revenue.gross_cents == placed.gross_cents


def test_finance_sees_the_private_buyer_and_a_refund_credits_them_with_the_same_consumer_vat(shop, login, db):
    client, kadri = person(shop, login, identifier="EE/EE/38001085718", name="Kadri")
    pay(buy_privately(shop, client, country="EE", billing_name="Kadri Tamm").headers["Location"])
    placed = private_order_of(db, kadri)
    wait_for("the webhook", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    finance_client = shop.app.test_client()
    finance = login(finance_client)
    grant_role(db, None, finance, FactoryRole.FINANCE, reason="test setup")
    listed = finance_client.get("/finance/orders").get_data(as_text=True)
    assert "Kadri Tamm" in listed and "private buyer" in listed and "eID EE" in listed
    rows = list(csv.DictReader(io.StringIO(finance_client.get("/finance/orders.csv").get_data(as_text=True))))
    (row,) = [r for r in rows if r["order_id"] == str(placed.id)]
    assert (row["organisation"], row["country"], row["vat_scheme"], row["private_buyer"], row["login_country"]) == (
        "Kadri Tamm",
        "EE",
        "oss",
        "yes",
        "EE",
    )

    note = market.refund_order(
        db, shop.settings, market.StripeGateway(shop.settings), finance, fresh(db, Order, placed.id), quantity=4,
        reason="unused hours",
    )  # fmt: skip
    assert note.buyer["name"] == "Kadri Tamm" and note.organisation_id is None
    assert note.mention.startswith("Sale to a consumer: VAT") and "of EE" in note.mention
    assert note.net_cents == -1_000 and note.vat_cents == -(placed.vat_cents * 4 // 10)
    assert rollups.rollup_differences(db) == []
    revenue = db.exec(select(RevenueMonth).where(RevenueMonth.organisation_id == PRIVATE_BUYERS)).one()
    assert (revenue.quantity, revenue.net_cents) == (6, 1_500)


def test_the_database_holds_a_project_to_exactly_one_owner(db, shop, login):
    _client, someone = person(shop, login)
    for owners in ({}, {"organisation_id": shop.org.id, "owner_id": someone.id}):
        db.add(Project(title="Nobody's or everybody's", **owners))
        with pytest.raises(sa.exc.IntegrityError):
            db.flush()
        db.rollback()


@pytest.mark.parametrize(("identifier", "country"), [("LV/LV/010180-10000", "LV"), ("", None), ("38001085718", None),
                                                     ("12/PL/1", None), ("EE", None)])  # fmt: skip
def test_the_login_country_is_the_member_state_that_issued_the_eid(identifier, country):
    assert market.login_country(SimpleNamespace(attributes={"person_identifier": identifier})) == country
