"""The audit log: every privileged action leaves exactly one append-only event with who, when, what and why,
written in the action's own transaction; admins search and export it, nobody else sees it."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
import stripe
from flask.testing import FlaskClient
from sqlmodel import Session, func, select

import portal
from portal.audit import services as audit
from portal.audit.models import AuditAction, AuditEvent
from portal.errors import InvalidInput, NotAuthorised
from portal.grants import services as grants
from portal.grants.models import AccessMode, Award, Call, CallState, ReviewKind, ReviewMode
from portal.identity.models import ApiToken, FactoryRole, RoleGrant
from portal.identity.services import create_agent_token, create_api_token, grant_role, revoke_role
from portal.ledger import services as ledger
from portal.ledger.models import AllocationSource, AllocationState, CapacityPeriod, Resource, ResourceKind, Site
from portal.market import services as market
from portal.market.models import Offering, OfferingState, Order, OrderState, StripeEvent
from portal.metering.models import SlurmAccount, SlurmUser
from portal.metering.services import map_slurm_account
from portal.metering.slurm import set_slurm_username
from portal.migrations import upgrade
from portal.projects import services as projects
from portal.reports import services as reports
from portal.reports.models import OperatorSite
from tests.conftest import portal_cli, portal_cli_in_process, post_form
from tests.grants_world import complete_draft, login_of, mail_settings, make_grant_world, staff
from tests.ledger_world import HOUR, Q1, admin, at, make_world, open_q1, person
from tests.market.test_market import fresh, order, pay, shop, wait_for

#: The fixtures of tests/market/test_market.py, used here by name.
__all__ = ["shop"]
SETTINGS = mail_settings()


def mark(db: Session) -> int:
    """The newest event's id: what an action adds comes after it."""
    db.expire_all()
    return db.exec(select(func.max(AuditEvent.id))).one() or 0


def added_since(db: Session, since: int) -> list[AuditEvent]:
    db.expire_all()
    return list(db.exec(select(AuditEvent).where(AuditEvent.id > since).order_by(AuditEvent.id)))


def only_event(db: Session, since: int) -> AuditEvent:
    events = added_since(db, since)
    assert len(events) == 1, [(e.action, e.summary) for e in events]
    return events[0]


# --- each privileged action leaves exactly one event ----------------------------------------------------


def test_granting_and_revoking_a_role_on_the_users_page_records_the_admin_and_the_request(
    client: FlaskClient, db: Session, login
) -> None:
    boss = login(client, given_name="Agnes", family_name="Admin")
    grant_role(db, None, boss, FactoryRole.ADMIN, reason="test setup")
    someone = person(db, "Teodors")
    since = mark(db)
    response = post_form(
        client,
        f"/admin/users/{someone.id}/roles",
        {"role": "finance", "reason": "  Runs the invoices from May  "},
        headers={"X-Request-ID": "req-grant-42"},
    )
    assert response.status_code == 302
    event = only_event(db, since)
    assert (event.action, event.actor_user_id, event.object_type, event.object_id) == (
        AuditAction.ROLE_GRANTED,
        boss.id,
        "users",
        someone.id,
    )
    assert event.actor_label == f"{boss.display_name} <{boss.email}>"
    assert event.summary == f"Teodors <{someone.email}> is now finance"
    assert event.request_id == "req-grant-42" and event.ip_address == "127.0.0.1"
    assert event.reason == "Runs the invoices from May"
    assert event.occurred_at.tzinfo is not None and datetime.now(UTC) - event.occurred_at < timedelta(minutes=1)

    since = mark(db)
    revoke = f"/admin/users/{someone.id}/roles/finance/revoke"
    assert post_form(client, revoke, {"reason": "Left the finance team"}).status_code == 302
    event = only_event(db, since)
    assert (event.action, event.actor_user_id, event.summary, event.reason) == (
        AuditAction.ROLE_REVOKED,
        boss.id,
        f"Teodors <{someone.email}> is no longer finance",
        "Left the finance team",
    )


def test_a_role_granted_on_the_command_line_is_recorded_as_cli(app, db: Session) -> None:
    someone = person(db, "Ilze")
    since = mark(db)
    why = ("--reason", "Operates the Riga site from June")
    result = portal_cli_in_process(app, "users", "grant-role", someone.email or "", "site_operator", *why)
    assert result.returncode == 0, result.stderr
    event = only_event(db, since)
    assert (event.action, event.actor_user_id, event.actor_label, event.object_id, event.reason) == (
        AuditAction.ROLE_GRANTED,
        None,
        "cli",
        someone.id,
        "Operates the Riga site from June",
    )
    assert event.request_id is None and event.ip_address is None
    # granting a role someone already holds changes nothing, so records nothing
    assert portal_cli_in_process(app, "users", "grant-role", someone.email or "", "site_operator", *why).returncode == 0
    assert added_since(db, event.id) == []


def test_refused_role_changes_leave_no_event(db: Session) -> None:
    boss, someone, intruder = admin(db), person(db, "Someone"), person(db, "Intruder")
    since = mark(db)
    with pytest.raises(NotAuthorised):
        grant_role(db, intruder, intruder, FactoryRole.ADMIN, reason="test setup")
    db.rollback()
    with pytest.raises(Exception, match="does not hold"):
        revoke_role(db, boss, someone, FactoryRole.FINANCE, reason="test setup")
    db.rollback()
    assert added_since(db, since) == []
    assert db.exec(select(RoleGrant).where(RoleGrant.user_id == intruder.id)).all() == []


def test_a_manual_adjustment_records_the_admin_the_amount_and_the_reason(db: Session) -> None:
    world = make_world(db)
    allocation = open_q1(db, world, 10)
    boss = admin(db)
    since = mark(db)
    with pytest.raises(InvalidInput, match="Say why"):
        ledger.adjust(db, boss, allocation.id, HOUR, reason=" ")
    with pytest.raises(NotAuthorised):
        ledger.adjust(db, world.pi, allocation.id, HOUR, reason="I want more")
    with pytest.raises(ledger.CapacityExhausted):
        ledger.adjust(db, boss, allocation.id, 5000 * HOUR, reason="Far too much")
    assert added_since(db, since) == []

    entry = ledger.adjust(db, boss, allocation.id, -2 * HOUR, reason="Node outage double-charged job 4711")
    event = only_event(db, since)
    assert (event.action, event.actor_user_id, event.object_type, event.object_id) == (
        AuditAction.ALLOCATION_ADJUSTED,
        boss.id,
        "allocations",
        allocation.id,
    )
    assert event.reason == "Node outage double-charged job 4711"
    assert event.summary == "balance -2.0 GPU-hours"
    assert event.details == {"amount": -2 * HOUR, "balance_after": 8 * HOUR, "ledger_entry_id": entry.id}


@pytest.mark.postgres
def test_an_adjustment_rolled_back_with_its_unit_of_work_leaves_no_event(postgres_url: str) -> None:
    # SQLite: tests/ledger/test_ledger.py::
    #   test_a_unit_of_work_that_fails_after_its_first_ledger_call_leaves_nothing_behind
    upgrade(postgres_url)
    engine = sa.create_engine(postgres_url)
    try:
        with Session(engine, expire_on_commit=False) as db:
            world = make_world(db)
            allocation = open_q1(db, world, 10)
            boss = admin(db)
            since = mark(db)
            with pytest.raises(ledger.CapacityExhausted), ledger.unit_of_work(db):
                ledger.adjust(db, boss, allocation.id, HOUR, reason="First half of a correction")
                assert [e.reason for e in added_since(db, since)] == ["First half of a correction"]
                ledger.adjust(db, boss, allocation.id, 5000 * HOUR, reason="Second half, refused")
            assert added_since(db, since) == []
            db.refresh(allocation)
            assert allocation.balance == 10 * HOUR
    finally:
        engine.dispose()


def test_suspending_and_resuming_an_allocation_are_recorded_with_the_reason(db: Session) -> None:
    world = make_world(db)
    allocation = open_q1(db, world, 10)
    boss = admin(db)
    since = mark(db)
    with pytest.raises(InvalidInput):
        ledger.set_suspended(db, boss, allocation.id, True, reason="")
    ledger.set_suspended(db, boss, allocation.id, True, reason="Crypto mining reported by the site")
    suspended = only_event(db, since)
    assert (suspended.action, suspended.reason, suspended.details) == (
        AuditAction.ALLOCATION_SUSPENDED,
        "Crypto mining reported by the site",
        {"before": "pending", "after": "suspended"},
    )
    ledger.set_suspended(db, boss, allocation.id, False, reason="The PI explained")
    resumed = only_event(db, suspended.id)
    assert (resumed.action, resumed.reason, resumed.details["before"]) == (
        AuditAction.ALLOCATION_RESUMED,
        "The PI explained",
        AllocationState.SUSPENDED.value,
    )


def test_an_allocation_opened_by_hand_is_recorded_but_an_award_is_recorded_as_its_decision_only(
    db: Session,
) -> None:
    world = make_world(db)
    boss = admin(db)
    since = mark(db)
    allocation = ledger.open_allocation(
        db,
        boss,
        project=world.project,
        resource=world.gpu,
        amount=5 * HOUR,
        starts_at=at(2030, 1, 1),
        ends_at=at(2030, 4, 1),
        source=AllocationSource.ADMIN,
        title="Goodwill hours",
        reason="Compensation for the March outage",
    )
    event = only_event(db, since)
    assert (event.action, event.object_id, event.reason) == (
        AuditAction.ALLOCATION_OPENED,
        allocation.id,
        "Compensation for the March outage",
    )
    assert event.summary == f"opened with 5.0 GPU-hours for project {world.project.id}"
    open_q1(db, world, 3)  # the portal's own opening (as for an award) is not a person's privileged act
    assert added_since(db, event.id) == []


def test_capacity_and_overbooking_changes_record_before_and_after(db: Session) -> None:
    world = make_world(db, q1_gpu_hours=100)
    open_q1(db, world, 60)
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
    since = mark(db)
    with pytest.raises(ledger.CapacityExhausted):
        ledger.set_capacity(
            db, operator, world.gpu, starts_on=Q1[0], ends_on=Q1[1], capacity=50 * HOUR, reason="test setup"
        )
    with pytest.raises(InvalidInput):
        ledger.set_overbooking(db, operator, world.gpu, 500, reason="test setup")
    assert added_since(db, since) == []

    period = ledger.set_capacity(
        db, operator, world.gpu, starts_on=Q1[0], ends_on=Q1[1], capacity=80 * HOUR, reason="test setup"
    )
    event = only_event(db, since)
    assert (event.action, event.actor_user_id, event.object_type, event.object_id) == (
        AuditAction.CAPACITY_CHANGED,
        operator.id,
        "capacity_periods",
        period.id,
    )
    assert event.summary == "H100 GPU-hours, 2030-01-01 to 2030-04-01: 100.0 GPU-hours -> 80.0 GPU-hours"
    assert event.details == {"resource_id": world.gpu.id, "before": 100 * HOUR, "after": 80 * HOUR}

    ledger.set_overbooking(db, operator, world.gpu, 1250, reason="test setup")
    event = only_event(db, event.id)
    assert (event.action, event.object_type, event.details) == (
        AuditAction.OVERBOOKING_CHANGED,
        "resources",
        {"before_permille": 1000, "after_permille": 1250},
    )


def test_new_sites_and_resources_are_recorded_and_a_failed_commit_leaves_no_event(db: Session) -> None:
    boss = admin(db)
    since = mark(db)
    site = ledger.create_site(
        db, boss, code="tll2", name="Tallinn Two", city="Tallinn", country="ee", reason="test setup"
    )
    resource = ledger.create_resource(
        db, boss, site, code="h200", name="H200 GPU-hours", kind=ResourceKind.GPU, gpu_model="H200", reason="test setup"
    )
    created = added_since(db, since)
    assert [(e.action, e.object_type, e.object_id, e.actor_user_id) for e in created] == [
        (AuditAction.SITE_CREATED, "sites", site.id, boss.id),
        (AuditAction.RESOURCE_CREATED, "resources", resource.id, boss.id),
    ]
    # the event is written in the action's transaction: when the database refuses the row, both are gone
    with pytest.raises(InvalidInput, match="already has a resource"):
        ledger.create_resource(
            db, boss, site, code="h200", name="Again", kind=ResourceKind.GPU, gpu_model="H200", reason="test setup"
        )
    assert added_since(db, created[-1].id) == []


def test_offering_creation_price_details_and_state_changes_are_recorded(app, client, db, login) -> None:
    world = make_world(db)
    operator = login(client, given_name="Sandra", family_name="Operator")
    grant_role(db, None, operator, FactoryRole.SITE_OPERATOR, reason="test setup")
    since = mark(db)
    with pytest.raises(InvalidInput):
        market.create_offering(
            db, operator, resource=world.gpu, title="", price_cents=0, max_quantity=5, reason="test setup"
        )
    offering = market.create_offering(
        db, operator, resource=world.gpu, title="H100 hours", price_cents=250, max_quantity=50, reason="test setup"
    )
    created = only_event(db, since)
    assert (created.action, created.object_id, created.summary) == (
        AuditAction.OFFERING_CREATED,
        offering.id,
        "offering 'H100 hours' of H100 GPU-hours at 250 cents an hour",
    )
    # the price through the staff page
    response = post_form(
        client,
        f"/admin/offerings/{offering.id}",
        {"price": "3.10", "reason": "Electricity costs rose 20 %"},
        page=f"/admin/offerings/{offering.id}",
    )
    assert response.status_code in (302, 303), response.get_data(as_text=True)
    priced = only_event(db, created.id)
    assert (priced.action, priced.actor_user_id, priced.details, priced.reason) == (
        AuditAction.PRICE_CHANGED,
        operator.id,
        {"before_cents": 250, "after_cents": 310},
        "Electricity costs rose 20 %",
    )
    market.update_offering(
        db,
        operator,
        offering,
        title="H100 hours",
        description="Now with NVLink",
        min_quantity=1,
        max_quantity=80,
        validity_months=6,
        reason="test setup",
    )
    updated = only_event(db, priced.id)
    assert updated.action == AuditAction.OFFERING_UPDATED
    assert updated.details == {
        "description": {"before": "", "after": "Now with NVLink"},
        "max_quantity": {"before": 50, "after": 80},
    }
    market.set_offering_state(db, operator, offering, OfferingState.PUBLISHED, reason="test setup")
    published = only_event(db, updated.id)
    assert (published.action, published.summary) == (
        AuditAction.OFFERING_STATE_CHANGED,
        "offering 'H100 hours' draft -> published",
    )


def test_calls_and_award_decisions_are_recorded_with_the_managers_reasons(db: Session) -> None:
    g = make_grant_world(db, mode=ReviewMode.TECHNICAL)
    call_events = [e for e in added_since(db, 0) if e.object_type == "calls" and e.object_id == g.call.id]
    assert [e.action for e in call_events] == [AuditAction.CALL_CREATED, AuditAction.CALL_STATE_CHANGED]
    assert call_events[0].actor_label == "system"  # seed data: no person created it
    assert (call_events[1].actor_user_id, call_events[1].details) == (
        g.manager.id,
        {"before": "draft", "after": "open"},
    )

    def ranked():
        application = complete_draft(db, g, hours=100)
        grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
        grants.administrative_check(db, SETTINGS, g.manager, application, passed=True)
        operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
        review = grants.assign_reviewer(db, SETTINGS, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
        grants.submit_review(db, operator, review.id, comment_to_applicant="OK", feasible=True)
        grants.complete_technical_assessment(db, SETTINGS, g.manager, application)
        return application

    application = ranked()
    since = mark(db)
    with pytest.raises(InvalidInput):
        grants.decide_accept(db, SETTINGS, g.manager, application, awarded={g.ledger.gpu.id: 101 * HOUR})
    assert added_since(db, since) == []
    grants.decide_accept(
        db,
        SETTINGS,
        g.manager,
        application,
        awarded={g.ledger.gpu.id: 100 * HOUR},
        first_tranche_percent=50,
        reason="Strong technical plan",
    )
    accepted = only_event(db, since)
    assert (accepted.action, accepted.actor_user_id, accepted.object_type, accepted.object_id, accepted.reason) == (
        AuditAction.APPLICATION_ACCEPTED,
        g.manager.id,
        "applications",
        application.id,
        "Strong technical plan",
    )
    assert accepted.details["awarded"] == {str(g.ledger.gpu.id): 100 * HOUR}
    assert accepted.details["first_tranche_percent"] == 50

    held = db.exec(select(Award).where(Award.application_id == application.id, Award.tranche == 2)).one()
    grants.release_tranche(db, SETTINGS, g.manager, held.id)
    released = only_event(db, accepted.id)
    assert (released.action, released.object_type, released.object_id, released.details["amount"]) == (
        AuditAction.TRANCHE_RELEASED,
        "awards",
        held.id,
        50 * HOUR,
    )

    second = ranked()
    since = mark(db)
    grants.decide_reject(db, SETTINGS, g.manager, second, reason="The budget is spent on stronger proposals")
    rejected = only_event(db, since)
    assert (rejected.action, rejected.object_id, rejected.reason) == (
        AuditAction.APPLICATION_REJECTED,
        second.id,
        "The budget is spent on stronger proposals",
    )
    grants.set_call_state(db, g.manager, g.call, CallState.CLOSED, reason="test setup")
    assert only_event(db, rejected.id).summary == f"call '{g.call.title}' open -> closed"


def test_an_acceptance_refused_for_lack_of_capacity_leaves_no_event(db: Session) -> None:
    g = make_grant_world(db, mode=ReviewMode.TECHNICAL, capacity_hours=50)
    application = complete_draft(db, g, hours=100)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    grants.administrative_check(db, SETTINGS, g.manager, application, passed=True)
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
    review = grants.assign_reviewer(db, SETTINGS, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, review.id, comment_to_applicant="OK", feasible=True)
    grants.complete_technical_assessment(db, SETTINGS, g.manager, application)
    since = mark(db)
    with pytest.raises(Exception, match="not enough capacity"):
        grants.decide_accept(db, SETTINGS, g.manager, application, awarded={g.ledger.gpu.id: 100 * HOUR})
    assert added_since(db, since) == []


def test_refunds_by_finance_and_from_stripes_dashboard_are_each_recorded_once(shop, db, login) -> None:
    pay_url = order(shop, 40)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    pay(pay_url)
    wait_for("payment", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    finance_client = shop.app.test_client()
    finance = login(finance_client)
    grant_role(db, None, finance, FactoryRole.FINANCE, reason="test setup")
    placed = fresh(db, Order, placed.id)
    gateway = market.StripeGateway(shop.settings)
    since = mark(db)
    with pytest.raises(InvalidInput, match="unused hours"):
        market.refund_order(db, shop.settings, gateway, finance, placed, quantity=41, reason="The project ended")
    assert added_since(db, since) == []
    # the finance page asks why before anything goes to Stripe
    blank = post_form(
        finance_client,
        f"/finance/orders/{placed.id}/refund",
        {"quantity": "10", "reason": BLANK},
        page="/finance/orders",
    )
    assert blank.status_code == 422 and "Say why" in blank.get_data(as_text=True)
    assert (fresh(db, Order, placed.id).refunded_cents, added_since(db, since)) == (0, [])
    assert client_refunds(shop, placed) == []

    note = market.refund_order(db, shop.settings, gateway, finance, placed, quantity=10, reason=WHY)
    wait_for(
        "charge.refunded",
        lambda: db.exec(
            select(StripeEvent).where(StripeEvent.type == "charge.refunded", StripeEvent.order_id == placed.id)
        ).first(),
    )
    refund = only_event(db, since)  # Stripe's own event of that refund finds it booked: no second record
    assert (refund.action, refund.actor_user_id, refund.object_type, refund.object_id) == (
        AuditAction.REFUND_ISSUED,
        finance.id,
        "orders",
        placed.id,
    )
    assert refund.details == {"quantity": 10, "gross_cents": 2_500, "credit_note_id": note.id}
    assert refund.reason == KEPT
    assert note.reference in refund.summary

    client = stripe.StripeClient(shop.stand_in.api_key, base_addresses={"api": shop.stand_in.url})
    made = client.v1.refunds.create(
        {"payment_intent": placed.payment_intent_id, "amount": 1_000, "reason": "requested_by_customer"}
    )  # 4 hours
    wait_for("the dashboard refund", lambda: fresh(db, Order, placed.id).refunded_cents == 3_500)
    dashboard = only_event(db, refund.id)
    assert (dashboard.action, dashboard.actor_user_id, dashboard.actor_label, dashboard.details["quantity"]) == (
        AuditAction.REFUND_ISSUED,
        None,
        "stripe",
        4,
    )
    # nobody typed a reason: the log says it came from Stripe's dashboard, with Stripe's reason and refund
    assert dashboard.reason == f"refunded in Stripe's dashboard (requested by customer; {made.id})"


def client_refunds(shop, placed) -> list:
    client = stripe.StripeClient(shop.stand_in.api_key, base_addresses={"api": shop.stand_in.url})
    return list(client.v1.refunds.list({"payment_intent": placed.payment_intent_id}).data)


def test_verifying_an_organisation_and_making_an_agent_token_are_recorded(db: Session) -> None:
    boss, owner = admin(db), person(db, "Owner")
    org = projects.create_organisation(db, owner, name="Riga Robotics SIA", kind="sme", country="LV")
    world = make_world(db)
    since = mark(db)
    projects.verify_organisation(db, boss, org, reason="test setup")
    projects.verify_organisation(
        db, boss, org, reason="test setup"
    )  # already verified: nothing happens, nothing is recorded
    verified = only_event(db, since)
    assert (verified.action, verified.object_type, verified.object_id, verified.summary) == (
        AuditAction.ORGANISATION_VERIFIED,
        "organisations",
        org.id,
        "verified Riga Robotics SIA (LV)",
    )
    token, _plain = create_agent_token(
        db, None, owner=boss, site_id=world.site.id, name="riga-agent", reason="test setup"
    )
    made = only_event(db, verified.id)
    assert (made.action, made.actor_label, made.object_type, made.object_id) == (
        AuditAction.AGENT_TOKEN_CREATED,
        "cli",
        "api_tokens",
        token.id,
    )
    assert _plain not in made.summary and token.digest not in made.summary


def test_site_assignments_and_slurm_mappings_are_recorded(app, db: Session) -> None:
    boss, operator = admin(db), person(db, "Olga")
    world = make_world(db)
    allocation = open_q1(db, world, 10)
    grant_role(db, None, operator, FactoryRole.SITE_OPERATOR, reason="test setup")
    since = mark(db)
    reports.assign_site(db, boss, operator, world.site, reason="test setup")
    reports.assign_site(
        db, boss, operator, world.site, reason="test setup"
    )  # assigned already: nothing happens, nothing is recorded
    assigned = only_event(db, since)
    assert (assigned.action, assigned.actor_user_id, assigned.object_type, assigned.object_id) == (
        AuditAction.OPERATOR_SITE_ASSIGNED,
        boss.id,
        "users",
        operator.id,
    )
    assert world.site.name in assigned.summary and assigned.details["site_id"] == world.site.id
    other_site = ledger.create_site(
        db, None, code="rix2", name="Riga two", city="Riga", country="LV", reason="test setup"
    )
    since = mark(db)
    result = portal_cli_in_process(
        app, "reports", "assign-site", operator.email or "", "rix2", "--reason", "Covers Riga two"
    )
    assert result.returncode == 0, result.stderr
    by_cli = only_event(db, since)
    assert (by_cli.action, by_cli.actor_label, by_cli.details["site_id"], by_cli.reason) == (
        AuditAction.OPERATOR_SITE_ASSIGNED,
        "cli",
        other_site.id,
        "Covers Riga two",
    )

    since = mark(db)
    mapping = map_slurm_account(
        db, None, cluster="baltic", account="proj-1", allocation_id=allocation.id, reason="test setup"
    )
    map_slurm_account(db, None, cluster="baltic", account="proj-1", allocation_id=allocation.id, reason="test setup")
    mapped = only_event(db, since)
    assert (mapped.action, mapped.object_type, mapped.object_id) == (
        AuditAction.SLURM_ACCOUNT_MAPPED,
        "slurm_accounts",
        mapping.id,
    )
    assert f"allocation {allocation.id}" in mapped.summary
    since = mark(db)
    set_slurm_username(db, boss, cluster="baltic", user=operator, username="olga", reason="test setup")
    set_slurm_username(
        db, boss, cluster="baltic", user=operator, username="olga", reason="test setup"
    )  # unchanged: not recorded
    set_slurm_username(db, boss, cluster="baltic", user=operator, username="olga2", reason="test setup")
    first, changed = added_since(db, since)
    assert (first.action, first.actor_user_id, first.details["before"], first.details["after"]) == (
        AuditAction.SLURM_USER_SET,
        boss.id,
        None,
        "olga",
    )
    assert (changed.details["before"], changed.details["after"]) == ("olga", "olga2")
    since = mark(db)
    with pytest.raises(NotAuthorised):
        reports.assign_site(db, operator, operator, world.site, reason="test setup")
    with pytest.raises(NotAuthorised):
        set_slurm_username(db, operator, cluster="baltic", user=operator, username="mine", reason="test setup")
    assert added_since(db, since) == []


def test_every_audit_action_is_recorded_somewhere_in_the_portal() -> None:
    """A new action name that no service records would be a promise the log does not keep."""
    sources = "\n".join(
        path.read_text() for path in Path(portal.__file__).parent.rglob("*.py") if "audit" not in path.parts
    )
    assert [a.name for a in AuditAction if f"AuditAction.{a.name}" not in sources] == []


# --- every privileged action says why --------------------------------------------------------------------

#: What the actor types (with stray spaces) and what the log keeps.
WHY = "  Agreed at the operations meeting of 3 May  "
KEPT = "Agreed at the operations meeting of 3 May"
BLANK = "   "


def scene(db: Session) -> SimpleNamespace:
    """An admin, a world with a site and an allocation, an organisation, an offering, a call and a site
    operator, each made through the services, so that every privileged action has something to act on."""
    boss, someone, operator = admin(db), person(db, "Someone"), person(db, "Olga")
    grant_role(db, None, someone, FactoryRole.REVIEWER, reason="reviews for the spring round")
    grant_role(db, None, operator, FactoryRole.SITE_OPERATOR, reason="runs the Riga site")
    world = make_world(db)
    org = projects.create_organisation(db, someone, name="Riga Robotics SIA", kind="sme", country="LV")
    offering = market.create_offering(
        db, None, resource=world.gpu, title="H100 hours", price_cents=250, max_quantity=50, reason="seed"
    )
    return SimpleNamespace(
        boss=boss,
        someone=someone,
        operator=operator,
        world=world,
        org=org,
        offering=offering,
        allocation=open_q1(db, world, 10),
        call=new_call(db, boss, world, "seed"),
    )


def new_call(db: Session, actor, world, reason: str):
    now = datetime.now(UTC)
    return grants.create_call(
        db,
        actor,
        title="Spring Fast Lane",
        access_mode=AccessMode.FAST_LANE,
        review_mode=ReviewMode.TECHNICAL,
        manager=actor,
        budgets={world.gpu.id: 500 * HOUR},
        max_request=100 * HOUR,
        opens_at=now,
        closes_at=now + timedelta(days=90),
        first_cutoff=now.date() + timedelta(days=14),
        reason=reason,
    )


def count(db: Session, model) -> int:
    db.expire_all()
    return db.exec(select(func.count()).select_from(model)).one()


def roles_of(db: Session, user) -> list[str]:
    db.expire_all()
    return sorted(db.exec(select(RoleGrant.role).where(RoleGrant.user_id == user.id)).all())


def reread(db: Session, obj, field: str):
    db.expire_all()
    return getattr(db.get(type(obj), obj.id), field)


#: Each privileged action with a reason: how to take it, and what a user would see change.
ACTIONS = {
    "grant a role": (
        lambda db, c, why: grant_role(db, c.boss, c.someone, FactoryRole.FINANCE, reason=why),
        lambda db, c: roles_of(db, c.someone),
    ),
    "revoke a role": (
        lambda db, c, why: revoke_role(db, c.boss, c.someone, FactoryRole.REVIEWER, reason=why),
        lambda db, c: roles_of(db, c.someone),
    ),
    "make an agent token": (
        lambda db, c, why: create_agent_token(
            db, c.boss, owner=c.operator, site_id=c.world.site.id, name="riga-agent", reason=why
        ),
        lambda db, c: count(db, ApiToken),
    ),
    "verify an organisation": (
        lambda db, c, why: projects.verify_organisation(db, c.boss, c.org, reason=why),
        lambda db, c: reread(db, c.org, "verified_at"),
    ),
    "create a call": (
        lambda db, c, why: new_call(db, c.boss, c.world, why),
        lambda db, c: count(db, Call),
    ),
    "open a call": (
        lambda db, c, why: grants.set_call_state(db, c.boss, c.call, CallState.OPEN, reason=why),
        lambda db, c: reread(db, c.call, "state"),
    ),
    "create a site": (
        lambda db, c, why: ledger.create_site(
            db, c.boss, code="tll2", name="Tallinn two", city="Tallinn", country="EE", reason=why
        ),
        lambda db, c: count(db, Site),
    ),
    "update a site": (
        lambda db, c, why: ledger.update_site(db, c.boss, c.world.site, city="Kaunas", reason=why),
        lambda db, c: reread(db, c.world.site, "city"),
    ),
    "create a resource": (
        lambda db, c, why: ledger.create_resource(
            db, c.boss, c.world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason=why
        ),
        lambda db, c: count(db, Resource),
    ),
    "change overbooking": (
        lambda db, c, why: ledger.set_overbooking(db, c.boss, c.world.gpu, 1100, reason=why),
        lambda db, c: reread(db, c.world.gpu, "overbooking_permille"),
    ),
    "change capacity": (
        lambda db, c, why: ledger.set_capacity(
            db, c.boss, c.world.gpu, starts_on=Q1[0], ends_on=Q1[1], capacity=900 * HOUR, reason=why
        ),
        lambda db, c: sorted(db.exec(select(CapacityPeriod.capacity)).all()),
    ),
    "create an offering": (
        lambda db, c, why: market.create_offering(
            db, c.boss, resource=c.world.gpu, title="Night hours", price_cents=150, max_quantity=9, reason=why
        ),
        lambda db, c: count(db, Offering),
    ),
    "edit an offering": (
        lambda db, c, why: market.update_offering(
            db,
            c.boss,
            c.offering,
            title="H100 hours, Riga",
            description="",
            min_quantity=1,
            max_quantity=50,
            validity_months=6,
            reason=why,
        ),
        lambda db, c: reread(db, c.offering, "title"),
    ),
    "change a price": (
        lambda db, c, why: market.change_price(db, c.boss, c.offering, 310, reason=why),
        lambda db, c: reread(db, c.offering, "price_cents"),
    ),
    "publish an offering": (
        lambda db, c, why: market.set_offering_state(db, c.boss, c.offering, OfferingState.PUBLISHED, reason=why),
        lambda db, c: reread(db, c.offering, "state"),
    ),
    "adjust a balance": (
        lambda db, c, why: ledger.adjust(db, c.boss, c.allocation.id, HOUR, reason=why),
        lambda db, c: reread(db, c.allocation, "balance"),
    ),
    "suspend an allocation": (
        lambda db, c, why: ledger.set_suspended(db, c.boss, c.allocation.id, True, reason=why),
        lambda db, c: reread(db, c.allocation, "state"),
    ),
    "map a Slurm account": (
        lambda db, c, why: map_slurm_account(
            db, c.boss, cluster="baltic", account="legacy", allocation_id=c.allocation.id, reason=why
        ),
        lambda db, c: count(db, SlurmAccount),
    ),
    "set a Slurm login": (
        lambda db, c, why: set_slurm_username(
            db, c.boss, cluster="baltic", user=c.someone, username="someone", reason=why
        ),
        lambda db, c: count(db, SlurmUser),
    ),
    "assign a site to an operator": (
        lambda db, c, why: reports.assign_site(db, c.boss, c.operator, c.world.site, reason=why),
        lambda db, c: count(db, OperatorSite),
    ),
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_each_privileged_action_records_the_reason_it_was_given(db: Session, action: str) -> None:
    take, _seen = ACTIONS[action]
    c = scene(db)
    since = mark(db)
    take(db, c, WHY)
    assert only_event(db, since).reason == KEPT


@pytest.mark.parametrize("reason", [BLANK, "", "ok", "x" * 501])
@pytest.mark.parametrize("action", list(ACTIONS))
def test_a_blank_or_out_of_bounds_reason_is_refused_and_changes_nothing(db: Session, action: str, reason: str) -> None:
    take, seen = ACTIONS[action]
    c = scene(db)
    before, since = seen(db, c), mark(db)
    with pytest.raises(InvalidInput, match="Say why") as refused:
        take(db, c, reason)
    db.rollback()
    assert refused.value.errors == {"reason": "Say why, in 3 to 500 characters."}
    assert (seen(db, c), added_since(db, since)) == (before, [])


def test_the_longest_reason_is_kept_whole() -> None:
    assert audit.require_reason(f" {'y' * 500} ") == "y" * 500
    assert audit.require_reason("ok!") == "ok!"


#: The staff pages' forms of privileged actions: where they post, what they send, what a user would see change.
PAGE_FORMS = {
    "grant a role": (
        lambda c: f"/admin/users/{c.someone.id}/roles",
        {"role": "finance"},
        "/admin/users",
        lambda db, c: roles_of(db, c.someone),
    ),
    "revoke a role": (
        lambda c: f"/admin/users/{c.someone.id}/roles/reviewer/revoke",
        {},
        "/admin/users",
        lambda db, c: roles_of(db, c.someone),
    ),
    "verify an organisation": (
        lambda c: f"/organisations/{c.org.id}/verify",
        {},
        None,
        lambda db, c: reread(db, c.org, "verified_at"),
    ),
    "plan capacity": (
        lambda c: "/admin/capacity",
        {"quarter_start": "2030-02-01", "capacity": "900"},
        "/admin/capacity",
        lambda db, c: sorted(db.exec(select(CapacityPeriod.capacity)).all()),
    ),
    "change overbooking": (
        lambda c: "/admin/capacity/overbooking",
        {"factor": "1.1"},
        "/admin/capacity",
        lambda db, c: reread(db, c.world.gpu, "overbooking_permille"),
    ),
    "create an offering": (
        lambda c: "/admin/offerings",
        {"title": "Night hours", "price": "1.50", "min_quantity": "1", "max_quantity": "9", "validity_months": "6"},
        "/admin/offerings",
        lambda db, c: count(db, Offering),
    ),
    "change a price": (
        lambda c: f"/admin/offerings/{c.offering.id}",
        {"price": "3.10"},
        None,
        lambda db, c: reread(db, c.offering, "price_cents"),
    ),
    "edit an offering": (
        lambda c: f"/admin/offerings/{c.offering.id}/details",
        {"title": "H100 hours, Riga", "min_quantity": "1", "max_quantity": "50", "validity_months": "6"},
        None,
        lambda db, c: reread(db, c.offering, "title"),
    ),
    "publish an offering": (
        lambda c: f"/admin/offerings/{c.offering.id}/state",
        {"state": "published"},
        None,
        lambda db, c: reread(db, c.offering, "state"),
    ),
    "open a call": (
        lambda c: f"/calls/{c.call.id}/state",
        {"state": "open"},
        None,
        lambda db, c: reread(db, c.call, "state"),
    ),
}


def page_scene(client: FlaskClient, db: Session, login) -> SimpleNamespace:
    boss = login(client, given_name="Agnes", family_name="Admin")
    grant_role(db, None, boss, FactoryRole.ADMIN, reason="test setup")
    c = scene(db)
    c.boss = boss
    c.call = new_call(db, boss, c.world, "seed")
    return c


def page_data(form: dict, c: SimpleNamespace, reason: str) -> dict:
    return {"resource_id": c.world.gpu.id, **form, "reason": reason}


@pytest.mark.parametrize("form", list(PAGE_FORMS))
def test_each_staff_form_records_the_reason_typed_into_it(client: FlaskClient, db: Session, login, form: str) -> None:
    url, data, page, _seen = PAGE_FORMS[form]
    c = page_scene(client, db, login)
    since = mark(db)
    response = post_form(client, url(c), page_data(data, c, WHY), page=page or "/account")
    assert response.status_code == 302, response.get_data(as_text=True)
    assert only_event(db, since).reason == KEPT


@pytest.mark.parametrize("form", list(PAGE_FORMS))
def test_a_staff_form_with_a_blank_reason_is_shown_again_with_the_message_and_changes_nothing(
    client: FlaskClient, db: Session, login, form: str
) -> None:
    url, data, page, seen = PAGE_FORMS[form]
    c = page_scene(client, db, login)
    before, since = seen(db, c), mark(db)
    response = post_form(client, url(c), page_data(data, c, BLANK), page=page or "/account")
    assert response.status_code == 422
    assert "Say why" in response.get_data(as_text=True)
    assert "<form" in response.get_data(as_text=True)  # the page with its form, not an error page
    assert (seen(db, c), added_since(db, since)) == (before, [])


def test_creating_a_call_on_its_page_asks_why(client: FlaskClient, db: Session, login) -> None:
    c = page_scene(client, db, login)
    today = datetime.now(UTC).date()
    form = {
        "title": "Autumn Fast Lane",
        "access_mode": "fast_lane",
        "review_mode": "technical",
        "manager_email": c.boss.email,
        "min_request": "0",
        "max_request": "100",
        "duration_months": "6",
        "opens_on": today.isoformat(),
        "closes_on": (today + timedelta(days=90)).isoformat(),
        "first_cutoff": (today + timedelta(days=14)).isoformat(),
        "budgets-0-resource_id": str(c.world.gpu.id),
        "budgets-0-hours": "500",
        "questions": "[]",
        "criteria": "[]",
    }
    calls, since = count(db, Call), mark(db)
    blank = post_form(client, "/admin/calls/new", {**form, "reason": BLANK}, page="/admin/calls/new")
    assert blank.status_code == 422 and "Say why" in blank.get_data(as_text=True)
    assert (count(db, Call), added_since(db, since)) == (calls, [])
    created = post_form(client, "/admin/calls/new", {**form, "reason": WHY}, page="/admin/calls/new")
    assert created.status_code == 302
    assert only_event(db, since).reason == KEPT


#: The commands of privileged actions: their arguments, and what a user would see change.
COMMANDS = {
    "grant-role": (
        lambda c: ["users", "grant-role", c.someone.email, "finance"],
        lambda db, c: roles_of(db, c.someone),
    ),
    "assign-site": (
        lambda c: ["reports", "assign-site", c.operator.email, c.world.site.code],
        lambda db, c: count(db, OperatorSite),
    ),
    "agent-token": (
        lambda c: ["sites", "agent-token", c.world.site.code, "--owner", c.operator.email, "--name", "riga-agent"],
        lambda db, c: count(db, ApiToken),
    ),
    "slurm map": (
        lambda c: ["slurm", "map", "--cluster", "baltic", "--account", "legacy", "--allocation", str(c.allocation.id)],
        lambda db, c: count(db, SlurmAccount),
    ),
    "slurm set-username": (
        lambda c: ["slurm", "set-username", "--cluster", "baltic", c.someone.email, "someone"],
        lambda db, c: count(db, SlurmUser),
    ),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_asks_why_and_records_it(app, db: Session, command: str) -> None:
    args, seen = COMMANDS[command]
    c = scene(db)
    clusters = json.dumps([{"name": "baltic", "site": c.world.site.code}])
    before, since = seen(db, c), mark(db)
    missing = portal_cli(app, *args(c), PORTAL_SLURM_CLUSTERS=clusters)
    assert missing.returncode == 2 and "Missing option '--reason'" in missing.stderr
    blank = portal_cli(app, *args(c), "--reason", BLANK, PORTAL_SLURM_CLUSTERS=clusters)
    assert blank.returncode == 1 and "Say why" in blank.stderr
    assert (seen(db, c), added_since(db, since)) == (before, [])
    done = portal_cli(app, *args(c), "--reason", WHY, PORTAL_SLURM_CLUSTERS=clusters)
    assert done.returncode == 0, done.stderr
    assert only_event(db, since).reason == KEPT


# --- the database refuses changes ------------------------------------------------------------------------


def _refuses_changes(db: Session) -> None:
    boss = admin(db)  # records a role grant
    event_id = mark(db)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        db.execute(sa.text("UPDATE audit_events SET reason = 'nothing to see' WHERE id = :i"), {"i": event_id})
    db.rollback()
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        db.execute(sa.text("DELETE FROM audit_events WHERE id = :i"), {"i": event_id})
    db.rollback()
    event = db.get(AuditEvent, event_id)
    assert event is not None and event.actor_label == "cli" and event.object_id == boss.id


def test_audit_events_cannot_be_changed_or_deleted_on_sqlite(db: Session) -> None:
    _refuses_changes(db)


@pytest.mark.postgres
def test_audit_events_cannot_be_changed_or_deleted_on_postgresql(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = sa.create_engine(postgres_url)
    try:
        with Session(engine, expire_on_commit=False) as db:
            _refuses_changes(db)
            with pytest.raises(sa.exc.DatabaseError, match="append-only"):
                db.execute(sa.text("TRUNCATE audit_events CASCADE"))
            db.rollback()
    finally:
        engine.dispose()


# --- searching, paging and exporting ---------------------------------------------------------------------


#: Adjustments in the history: more than a page of the audit log.
BATCH = 60


@pytest.fixture
def history(db: Session):
    """An admin, and a few dozen events of several kinds by several people."""
    world = make_world(db)
    allocation = open_q1(db, world, 100)
    boss, other = admin(db), admin(db)
    for i in range(BATCH):
        ledger.adjust(db, boss, allocation.id, HOUR, reason=f"batch {i} of the Riga re-run")
    ledger.adjust(db, other, allocation.id, -HOUR, reason='=HYPERLINK("http://evil")')
    ledger.set_suspended(db, other, allocation.id, True, reason="Abuse report")
    return boss, other, allocation, world


def test_admins_search_by_actor_action_object_dates_and_words(db: Session, history) -> None:
    boss, other, allocation, _world = history
    search = lambda **f: audit.search(db, boss, audit.AuditFilters(**f), limit=500).events  # noqa: E731

    by_other = search(actor=other.email)
    assert [e.action for e in by_other] == [AuditAction.ALLOCATION_SUSPENDED, AuditAction.ALLOCATION_ADJUSTED]
    assert {e.action for e in search(actor="cli")} == {AuditAction.ROLE_GRANTED}
    assert len(search(action=AuditAction.ALLOCATION_ADJUSTED)) == BATCH + 1
    on_allocation = search(object_type="allocations", object_id=allocation.id)
    assert len(on_allocation) == BATCH + 2 and on_allocation[0].action == AuditAction.ALLOCATION_SUSPENDED
    assert search(object_type="allocations", object_id=allocation.id + 999) == []
    assert [e.reason for e in search(text="ABUSE")] == ["Abuse report"]
    assert len(search(text="riga re-run")) == BATCH
    assert search(text="100%") == []  # wildcards are taken literally
    today = datetime.now(UTC).date()
    assert len(search(since=today, until=today, object_id=allocation.id, object_type="allocations")) == BATCH + 2
    assert search(until=today - timedelta(days=1)) == []
    assert search(since=today + timedelta(days=1)) == []


def test_pages_run_newest_first_without_gaps_and_cost_the_same_queries(app, db: Session, history) -> None:
    boss, _other, allocation, _world = history
    filters = audit.AuditFilters(object_type="allocations", object_id=allocation.id)
    seen, before, pages = [], None, 0
    while True:
        page = audit.search(db, boss, filters, before=before, limit=10)
        seen += [e.id for e in page.events]
        pages += 1
        if page.next_before is None:
            break
        before = page.next_before
    assert pages == 7 and len(seen) == BATCH + 2 and seen == sorted(seen, reverse=True)

    engine = app.extensions["portal.engine"]
    counted: list[str] = []

    def count(*_args) -> None:
        counted.append("query")

    def queries(filters: audit.AuditFilters, limit: int) -> int:
        with Session(engine) as fresh:
            counted.clear()
            sa.event.listen(engine, "before_cursor_execute", count)
            try:
                assert len(audit.search(fresh, boss, filters, limit=limit).events) == limit
            finally:
                sa.event.remove(engine, "before_cursor_execute", count)
            return len(counted)

    # the admin's roles, then the page: the same two queries for 5 rows or 30, filtered or not
    assert queries(audit.AuditFilters(), 5) == queries(filters, 30) == 2


def test_the_audit_page_filters_pages_and_links_the_csv_of_the_same_search(client, db, login, history) -> None:
    _boss, other, _allocation, _world = history
    me = login(client, given_name="Alma", family_name="Auditor")
    grant_role(db, None, me, FactoryRole.ADMIN, reason="test setup")
    html = client.get("/").get_data(as_text=True)
    assert 'href="/admin/audit"' in html  # in the admin's navigation

    page = client.get("/admin/audit?action=allocation_adjusted&q=batch+1")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert body.count('id="audit-event-') == 11  # batch 1 and batch 10 to 19
    assert "batch 19 of the Riga re-run" in body and "Abuse report" not in body
    assert 'href="/admin/audit.csv?action=allocation_adjusted&amp;q=batch+1"' in body
    assert "Older events" not in body

    everything = client.get("/admin/audit").get_data(as_text=True)
    assert everything.count('id="audit-event-') == audit.PAGE_SIZE
    assert "Older events" in everything
    link = re.search(r'<a href="([^"]+)" rel="next">', everything)
    assert link is not None
    older = client.get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    shown = re.findall(r'id="audit-event-(\d+)"', everything)
    following = re.findall(r'id="audit-event-(\d+)"', older)
    assert following and int(following[0]) == int(shown[-1]) - 1  # no gap, no repeat

    bad = client.get("/admin/audit?since=yesterday&object_id=-3")
    assert bad.status_code == 422
    assert "Not a valid date value" in bad.get_data(as_text=True)

    by_other = client.get(f"/admin/audit?actor={other.email}&q=abuse").get_data(as_text=True)
    assert by_other.count('id="audit-event-') == 1 and "Abuse report" in by_other


def test_the_csv_export_holds_the_whole_filtered_set_and_defuses_formulas(client, db, login, history) -> None:
    _boss, other, allocation, _world = history
    me = login(client)
    grant_role(db, None, me, FactoryRole.ADMIN, reason="test setup")
    response = client.get(f"/admin/audit.csv?object_type=allocations&object_id={allocation.id}")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="audit-log.csv"'
    assert response.is_streamed
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == BATCH + 2  # more than a page: the export is not cut at the page size
    assert rows[0]["action"] == "allocation_suspended" and rows[0]["reason"] == "Abuse report"
    assert rows[0]["actor_user_id"] == str(other.id) and other.email in rows[0]["actor"]
    assert rows[1]["reason"] == '\'=HYPERLINK("http://evil")'  # a spreadsheet shows it, never runs it
    assert rows[1]["details"].startswith("{") and '"amount": -3600' in rows[1]["details"]
    assert datetime.fromisoformat(rows[0]["occurred_at"]).tzinfo is not None
    assert client.get("/admin/audit.csv?since=last+week").status_code == 422
    too_big = 2**64
    assert client.get(f"/admin/audit.csv?object_id={too_big}").status_code == 422
    assert client.get(f"/admin/audit?before={too_big}").status_code == 422


def test_admins_read_the_log_through_the_api(client, db, login, history) -> None:
    _boss, other, allocation, _world = history
    me = login(client)
    grant_role(db, None, me, FactoryRole.ADMIN, reason="test setup")
    _token, plain = create_api_token(db, me, name="audit", scopes=["read"], ttl_days=5)
    auth = {"Authorization": f"Bearer {plain}"}
    first = client.get(f"/api/v1/audit?object_type=allocations&object_id={allocation.id}&limit=50", headers=auth)
    assert first.status_code == 200, first.get_data(as_text=True)
    assert len(first.json["events"]) == 50 and first.json["events"][0]["reason"] == "Abuse report"
    rest = client.get(
        f"/api/v1/audit?object_type=allocations&object_id={allocation.id}&limit=50&before={first.json['next_before']}",
        headers=auth,
    ).json
    assert len(rest["events"]) == BATCH + 2 - 50 and rest["next_before"] is None
    assert rest["events"][-1]["details"]["amount"] == HOUR
    found = client.get(f"/api/v1/audit?actor={other.email}&action=allocation_suspended", headers=auth).json
    assert [e["action"] for e in found["events"]] == ["allocation_suspended"]
    assert found["events"][0]["actor_user_id"] == other.id
    refused = client.get("/api/v1/audit?action=no_such_action", headers=auth)
    assert refused.status_code == 422 and refused.mimetype == "application/problem+json"
    for query in (f"object_id={2**64}", f"before={2**64}"):
        too_big = client.get(f"/api/v1/audit?{query}", headers=auth)
        assert too_big.status_code == 422 and too_big.mimetype == "application/problem+json", query
    assert "/api/v1/audit" in client.get("/api/v1/openapi.json").json["paths"]


# --- nobody else sees it --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [None, FactoryRole.FINANCE, FactoryRole.SITE_OPERATOR, FactoryRole.REVIEWER])
def test_only_admins_see_the_audit_log(client, db, login, role) -> None:
    grant_role(db, None, person(db, "Secretly Promoted"), FactoryRole.FINANCE, reason="test setup")
    user = login(client, given_name="Nosy", family_name="Staffer")
    if role is not None:
        grant_role(db, None, user, role, reason="test setup")
    _token, plain = create_api_token(db, user, name="probe", scopes=["read", "write"], ttl_days=5)
    assert 'href="/admin/audit"' not in client.get("/").get_data(as_text=True)
    for path in ("/admin/audit", "/admin/audit?actor=cli", "/admin/audit.csv", "/admin/audit.csv?action=role_granted"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert "Secretly Promoted" not in response.get_data(as_text=True)
    api = client.get("/api/v1/audit", headers={"Authorization": f"Bearer {plain}"})
    assert api.status_code == 403 and api.mimetype == "application/problem+json"
    assert "Secretly Promoted" not in api.get_data(as_text=True)
    with pytest.raises(NotAuthorised):
        audit.search(db, user, audit.AuditFilters())
    with pytest.raises(NotAuthorised):
        audit.export_rows(db, user, audit.AuditFilters())


def test_anonymous_visitors_are_sent_to_log_in_and_the_api_wants_a_token(client) -> None:
    assert client.get("/admin/audit").status_code == 302
    assert client.get("/admin/audit.csv").status_code == 302
    assert client.get("/api/v1/audit").status_code == 401
