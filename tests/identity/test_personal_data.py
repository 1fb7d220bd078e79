"""A person's data: the JSON export, erasure that keeps the books valid, and retention periods the worker enforces."""

from __future__ import annotations

import json
from datetime import timedelta

import time_machine
from sqlmodel import func, select

from portal.audit.models import AuditAction, AuditEvent
from portal.compute.models import OAuthCode, OAuthToken
from portal.db import utcnow
from portal.identity.models import ExternalIdentity, Login, User, WebSession
from portal.identity.personal_data import enforce_retention_periods
from portal.identity.services import create_api_token
from portal.ledger.models import Allocation, LedgerEntry
from portal.market.models import Invoice, Order, OrderState
from portal.notifications.models import Notification
from portal.notifications.services import notify
from tests.compute.test_compute import authorize, code_from, exchange
from tests.conftest import portal_cli_in_process, post_form
from tests.market.test_market import fresh, order, pay, shop, wait_for  # noqa: F401  (shop is a fixture)

PERSON = {"birthdate": "1980-01-08", "person_identifier": "EE/EE/48001080000"}


def test_a_person_downloads_everything_the_portal_holds_about_them(app, client, db, login):
    user = login(client, **PERSON)
    notify(db, app.extensions["portal.settings"], user, subject="Welcome", body="Your account is ready")
    _token, plain = create_api_token(db, user, name="export script", scopes=["read"], ttl_days=30)

    page = client.get("/account").get_data(as_text=True)
    assert "Download my data (JSON)" in page and 'href="/account/export"' in page
    response = client.get("/account/export")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert "attachment" in response.headers["Content-Disposition"]
    data = response.json
    assert data["user"]["email"] == user.email
    (seen,) = data["tables"]["logins"]
    assert seen["attributes"]["person_identifier"] == "EE/EE/48001080000"
    assert seen["attributes"]["birthdate"] == "1980-01-08"
    assert data["tables"]["external_identities"][0]["subject"]
    assert [n["subject"] for n in data["tables"]["notifications"]] == ["Welcome"]
    assert data["tables"]["web_sessions"] and data["tables"]["api_tokens"][0]["name"] == "export script"
    text = json.dumps(data)
    assert '"digest"' not in text and '"key_digest"' not in text, "secrets' digests are never exported"

    by_api = app.test_client().get("/api/v1/me/export", headers={"Authorization": f"Bearer {plain}"})
    assert by_api.status_code == 200
    assert by_api.json["tables"]["logins"] == data["tables"]["logins"]
    assert app.test_client().get("/api/v1/me/export").status_code == 401


def test_erasing_a_buyer_pseudonymises_them_and_keeps_ledger_invoices_and_audit_log(shop, db, login):  # noqa: F811
    pay_url = order(shop, 4)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    pay(pay_url)
    wait_for("the webhook", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    (invoice,) = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).all()
    buyer = shop.buyer
    subject = db.exec(select(ExternalIdentity.subject).where(ExternalIdentity.user_id == buyer.id)).one()
    audit_before = db.exec(select(func.count()).select_from(AuditEvent)).one()

    refused = portal_cli_in_process(shop.app, "users", "erase", buyer.email)
    assert refused.returncode == 2 and "--reason" in refused.stderr
    done = portal_cli_in_process(shop.app, "users", "erase", buyer.email, "--reason", "Art. 17 request, ticket 4711")
    assert done.returncode == 0, done.stderr
    assert f"Erased user {buyer.id}" in done.stdout

    erased = fresh(db, User, buyer.id)
    assert (erased.display_name, erased.email, erased.is_active) == (f"Erased user {buyer.id}", None, False)
    for model in (Login, ExternalIdentity, WebSession, Notification):
        assert db.exec(select(model).where(model.user_id == buyer.id)).all() == [], model.__name__
    # The books stay as they were: the invoice unchanged, the order still the buyer's, the balance its entries' sum.
    assert fresh(db, Invoice, invoice.id).model_dump() == invoice.model_dump()
    assert fresh(db, Order, placed.id).buyer_id == buyer.id
    allocation = fresh(db, Allocation, placed.allocation_id)
    entries = db.exec(select(func.sum(LedgerEntry.amount)).where(LedgerEntry.allocation_id == allocation.id)).one()
    assert allocation.balance == entries == placed.quantity * 3600
    (event,) = db.exec(select(AuditEvent).where(AuditEvent.action == AuditAction.USER_ERASED)).all()
    assert (event.object_id, event.reason, event.actor_label) == (buyer.id, "Art. 17 request, ticket 4711", "cli")
    assert buyer.email not in event.summary
    assert db.exec(select(func.count()).select_from(AuditEvent)).one() == audit_before + 1

    # The erased person's browser is logged out; logging in again with the same account makes a new, empty user.
    assert shop.client.get("/account").status_code == 302
    again = login(shop.app.test_client(), subject)
    assert again.id != buyer.id
    assert (
        portal_cli_in_process(shop.app, "users", "erase", "nobody@example.eu", "--reason", "no such user").returncode
        == 1
    )


def test_retention_periods_delete_old_sessions_codes_logins_and_notifications(app, client, db, login):
    settings = app.extensions["portal.settings"]
    user = login(client, **PERSON)
    code_from(authorize(client, scope="openid"))  # never exchanged
    assert exchange(app.test_client(), code_from(authorize(client, scope="openid"))).status_code == 200
    notify(db, settings, user, subject="Usage at 75 %", body="...")
    db.commit()
    post_form(client, "/logout")

    def left() -> dict[str, int]:
        db.expire_all()
        return {
            m.__tablename__: len(db.exec(select(m).where(m.user_id == user.id)).all())
            for m in (OAuthCode, OAuthToken, WebSession, Login, Notification)
        }

    assert left() == {"oauth_codes": 1, "oauth_tokens": 1, "web_sessions": 1, "logins": 1, "notifications": 1}
    with time_machine.travel(utcnow() + timedelta(days=40), tick=False):
        assert enforce_retention_periods(db, settings) == 3
    assert left() == {"oauth_codes": 0, "oauth_tokens": 0, "web_sessions": 0, "logins": 1, "notifications": 1}
    with time_machine.travel(utcnow() + timedelta(days=200), tick=False):
        assert enforce_retention_periods(db, settings) == 1
    assert left()["logins"] == 0 and left()["notifications"] == 1
    with time_machine.travel(utcnow() + timedelta(days=400), tick=False):
        assert enforce_retention_periods(db, settings) == 1
    assert sum(left().values()) == 0
    assert db.get(User, user.id).email == user.email  # the account itself stays


def test_shorter_retention_settings_delete_sooner_and_the_worker_runs_the_job_daily(make_settings, db, client, login):
    settings = make_settings(login_retention_days=1, notification_retention_days=1)
    user = login(client)
    post_form(client, "/logout")
    notify(db, settings, user, subject="Hello", body="...")
    db.commit()
    with time_machine.travel(utcnow() + timedelta(days=35), tick=False):
        assert enforce_retention_periods(db, settings) == 3  # the ended session, its login, the notification
    assert db.exec(select(Login).where(Login.user_id == user.id)).all() == []
    assert db.exec(select(Notification).where(Notification.user_id == user.id)).all() == []

    from portal.worker import JOBS

    (job,) = [j for j in JOBS if j.name == "enforce_retention_periods"]
    assert job.run is enforce_retention_periods and job.every == 86_400


def test_the_export_needs_a_login(client):
    assert client.get("/account/export").status_code == 302
