"""Who may see and change which project or organisation: every such route, HTML and JSON API alike.

The route table below is checked against ``app.url_map``: a route added to the app that names a project,
organisation, invitation or user and is missing from the table fails ``test_outsider_learns_and_changes_nothing``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from flask import session as flask_session
from flask.testing import FlaskClient
from flask_wtf.csrf import generate_csrf
from sqlmodel import Session, select

from portal.audit.models import AuditEvent
from portal.classroom import services as classroom
from portal.classroom.models import Course, CourseSeat
from portal.compute.services import check_spawn, hub_username
from portal.grants import outputs
from portal.grants import services as grants
from portal.grants.models import (
    AccessMode,
    Application,
    ApplicationFile,
    Award,
    Call,
    CallBudget,
    CallState,
    ProgressReport,
    Reply,
    ReportKind,
    ResearchOutput,
    Review,
    ReviewKind,
    ReviewMode,
)
from portal.identity.models import FactoryRole, RoleGrant, User
from portal.identity.services import create_api_token, grant_role
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, LedgerEntry, Resource, ResourceKind, Site
from portal.market import services as market
from portal.market.models import Invoice, InvoiceKind, Offering, OfferingPrice, OfferingState, Order, OrderState
from portal.notifications.models import Notification
from portal.projects import services
from portal.projects.models import (
    Invitation,
    Organisation,
    OrganisationMembership,
    Project,
    ProjectMembership,
    ProjectRole,
)
from tests.conftest import csrf_token, post_form
from tests.factories import open_now, plan_capacity_around_now
from tests.grants_world import login_of
from tests.ledger_world import HOUR, make_world, open_q1

#: URL arguments that name an object someone may not be allowed to see.
OBJECT_ARGUMENTS = {
    "project_id",
    "organisation_id",
    "invitation_id",
    "user_id",
    "token",
    "allocation_id",
    "call_id",
    "application_id",
    "review_id",
    "file_id",
    "award_id",
    "notification_id",
    "offering_id",
    "order_id",
    "invoice_id",
    "session_id",
    "course_id",
    "seat_id",
    "output_id",
    "report_id",
    "site_id",  # the sites' set-up is the operators' (their API needs the operate scope)
}
#: Paths that deal with projects or organisations (or their applications, reviews and notices) even
#: without naming one.
OBJECT_WORDS = ("/organisations", "/projects", "/invitations", "/calls", "/applications", "/reviews", "/inbox")
OBJECT_WORDS += ("/courses",)  # a course's students and their use are its teacher's only
OBJECT_WORDS += ("/audit",)  # the audit log names every project, organisation and person acted on
OBJECT_WORDS += ("/reports",)  # the operators' dashboards name projects and organisations

SECRET_TITLE = "Kappa Secret Research"
SECRET_ORG = "Hiddenorg Dynamics"
SECRET_EMAIL = "pending-invitee@example.eu"
SECRET_APPLICATION = "Zeta Confidential Proposal"
SECRET_CITATION = "Quartermain, Z. (2026) Unpublished secret results"
SECRET_ABSTRACT = "Nobody else may read this abstract."
SECRET_COURSE = "Omega Private Course"
MISSING_ID = 987654


@dataclass(frozen=True)
class Route:
    method: str
    rule: str
    #: Form fields (HTML) or JSON body (API), valid ones: a refusal must come from the permission check.
    data: dict[str, Any] | None = None
    #: What an outsider gets: 404 for an object they may not know of, 403 where the route reveals nothing,
    #: 2xx/3xx for lists and creation that only ever touch the caller's own objects.
    outsider: int = 404
    #: URL arguments that take another value than the world's default (``user_id`` -> ``"outsider"``).
    args: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> bool:
        return self.rule.startswith("/api/")

    def url(self, values: dict[str, Any]) -> str:
        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            return str(values[self.args.get(name, name)])

        return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", fill, self.rule)


NEW_ORG = {"name": "Outsider Two Ltd", "kind": "sme", "country": "LT", "registry_id": "", "vat_number": ""}

ROUTES: list[Route] = [
    # --- HTML pages -----------------------------------------------------------------------------------
    Route("GET", "/", outsider=200),
    Route("GET", "/organisations/new", outsider=200),
    Route("POST", "/organisations/new", NEW_ORG, outsider=302),
    Route("GET", "/organisations/<int:organisation_id>"),
    Route("POST", "/organisations/<int:organisation_id>/verify"),
    Route("GET", "/organisations/<int:organisation_id>/projects/new"),
    Route("POST", "/organisations/<int:organisation_id>/projects/new", {"title": "Intruder project"}),
    Route("GET", "/projects/<int:project_id>"),
    Route("GET", "/projects/<int:project_id>/edit"),
    Route("POST", "/projects/<int:project_id>/edit", {"title": "Defaced", "description": "pwned"}),
    Route("POST", "/projects/<int:project_id>/invitations", {"email": "intruder@example.eu", "role": "manager"}),
    Route("POST", "/projects/<int:project_id>/invitations/<int:invitation_id>/revoke"),
    Route("POST", "/projects/<int:project_id>/members/<int:user_id>/role", {"role": "pi"}),
    Route("POST", "/projects/<int:project_id>/members/<int:user_id>/remove"),
    Route("POST", "/projects/<int:project_id>/leave"),
    Route("GET", "/projects/<int:project_id>/allocations/<int:allocation_id>"),
    Route("GET", "/projects/<int:project_id>/allocations/<int:allocation_id>/entries"),
    Route("POST", "/projects/<int:project_id>/allocations/<int:allocation_id>/release", {"hours": "5"}),
    Route("POST", "/projects/<int:project_id>/allocations/transfer", {"from_id": "0", "to_id": "0", "hours": "5"}),
    # an invitation link is a capability: a guessed one finds nothing
    Route("GET", "/invitations/<token>"),
    Route("POST", "/invitations/<token>"),
    # factory roles: an outsider trying to make themselves admin
    Route("POST", "/admin/users/<int:user_id>/roles", {"role": "admin"}, outsider=403, args={"user_id": "outsider"}),
    Route("POST", "/admin/users/<int:user_id>/roles/<role>/revoke", outsider=403),
    # --- calls, applications, reviews, the inbox --------------------------------------------------------
    # open calls are public; applying takes a project of one's own (P is not among the outsider's choices)
    Route("GET", "/calls", outsider=200),
    Route("GET", "/calls/<int:call_id>", outsider=200),
    Route("POST", "/calls/<int:call_id>/apply", {"project_id": "0", "title": "Intrusion"}, outsider=422),
    # the call manager's pages: the call is public, so its manager's pages only refuse
    Route("GET", "/calls/<int:call_id>/manage", outsider=403),
    Route("GET", "/calls/<int:call_id>/applications.csv", outsider=403),
    Route("POST", "/calls/<int:call_id>/state", {"state": "closed"}, outsider=403),
    Route("GET", "/admin/calls/new", outsider=403),
    Route("POST", "/admin/calls/new", {"title": "Intruder call", "manager_email": "x@example.eu"}, outsider=403),
    # P's application: its project's members, the call's manager and its reviewers only
    Route("GET", "/applications/<int:application_id>"),
    Route("GET", "/applications/<int:application_id>/edit"),
    Route("POST", "/applications/<int:application_id>/edit", {"title": "Defaced", "abstract": "pwned"}),
    Route("POST", "/applications/<int:application_id>/save", {"title": "Defaced", "abstract": "pwned"}),
    Route("POST", "/applications/<int:application_id>/sites", {"title": "Defaced", "sites_shown": "1"}),
    Route("POST", "/applications/<int:application_id>/files", {"question": "plan"}),
    Route("GET", "/files/<int:file_id>"),
    Route("POST", "/applications/<int:application_id>/submit"),
    Route("POST", "/applications/<int:application_id>/withdraw"),
    Route("POST", "/applications/<int:application_id>/reply", {"reply": "pwned"}),
    Route("POST", "/applications/<int:application_id>/check", {"decision": "fail", "fail_reason": "pwned"}),
    Route("POST", "/applications/<int:application_id>/reviewers", {"email": "x@example.eu", "kind": "technical"}),
    Route("POST", "/applications/<int:application_id>/complete-technical-assessment"),
    Route("POST", "/applications/<int:application_id>/request-reply"),
    Route("POST", "/applications/<int:application_id>/rank"),
    Route("POST", "/applications/<int:application_id>/accept", {"first_tranche_percent": "100"}),
    Route("POST", "/applications/<int:application_id>/reject", {"reject_reason": "pwned"}),
    Route("POST", "/applications/<int:application_id>/tranches/<int:award_id>/release"),
    # somebody else's review and notice
    Route("GET", "/reviews", outsider=200),
    Route("GET", "/reviews/<int:review_id>"),
    Route("POST", "/reviews/<int:review_id>", {"feasible": "no", "comment_to_applicant": "pwned"}),
    Route("POST", "/reviews/<int:review_id>/conflict", {"conflict_reason": "pwned"}),
    Route("GET", "/inbox", outsider=200),
    Route("POST", "/inbox/<int:notification_id>/read"),
    # P's research outputs and the reports its award owes: its members only, and only its PI and managers write
    Route("GET", "/projects/<int:project_id>/outputs/new"),
    Route(
        "POST", "/projects/<int:project_id>/outputs", {"kind": "dataset", "citation": "Intruder data", "year": "2026"}
    ),
    Route("POST", "/projects/<int:project_id>/outputs/<int:output_id>/remove"),
    Route("GET", "/progress-reports/<int:report_id>"),
    Route("POST", "/progress-reports/<int:report_id>", {"text": "pwned"}),
    # --- the marketplace --------------------------------------------------------------------------------
    # a published offering is public; buying it for P takes being P's buyer (a "<name>" value is the world's)
    Route("GET", "/market/offerings/<int:offering_id>/order", outsider=200),
    Route("GET", "/market/offerings/<int:offering_id>/quote", outsider=200),
    Route("GET", "/api/v1/allocations/<int:allocation_id>"),
    Route("GET", "/api/v1/allocations/<int:allocation_id>/entries"),
    Route("GET", "/api/v1/allocations/<int:allocation_id>/usage"),
    Route("GET", "/api/v1/notebooks/<int:session_id>"),
    Route("POST", "/api/v1/notebooks/<int:session_id>/stop"),
    Route("GET", "/api/v1/invoices/<int:invoice_id>/pdf"),
    Route("GET", "/api/v1/calls", outsider=200),
    Route("GET", "/api/v1/applications", outsider=200),
    Route("POST", "/api/v1/applications", {"call_id": "<call_id>", "project_id": "<project_id>", "title": "Intrusion"}),
    Route("GET", "/api/v1/applications/<int:application_id>"),
    Route("PATCH", "/api/v1/applications/<int:application_id>", {"title": "Defaced"}),
    Route("POST", "/api/v1/applications/<int:application_id>/submit"),
    Route("GET", "/api/v1/courses", outsider=200),
    Route("GET", "/api/v1/courses/<int:course_id>/seats"),
    Route("POST", "/api/v1/notifications/<int:notification_id>/read"),
    # the operators' API: a token without the operate or admin scope is refused before anything is looked up
    Route(
        "POST",
        "/api/v1/admin/allocations/<int:allocation_id>/adjustments",
        {"amount": 3600, "reason": "pwned"},
        outsider=403,
    ),
    Route(
        "POST",
        "/api/v1/admin/users/<int:user_id>/role-grants",
        {"role": "admin", "reason": "pwned"},
        outsider=403,
        args={"user_id": "outsider"},
    ),
    Route(
        "POST", "/api/v1/admin/users/<int:user_id>/role-revocations", {"role": "admin", "reason": "pwned"}, outsider=403
    ),
    Route("PATCH", "/api/v1/admin/sites/<int:site_id>", {"name": "Defaced", "reason": "pwned"}, outsider=403),
    Route(
        "POST",
        "/api/v1/admin/sites/<int:site_id>/resources",
        {"code": "evil", "name": "Intruder hours", "kind": "cpu", "reason": "pwned"},
        outsider=403,
    ),
    Route("POST", "/market/offerings/<int:offering_id>/order", {"project_id": "<project_id>", "quantity": "10"}),
    # O's order, invoice and billing page: O's admins and billing members, and finance staff only
    Route("GET", "/market/orders/<int:order_id>"),
    Route("POST", "/market/orders/<int:order_id>/cancel"),
    Route("GET", "/projects/<int:project_id>/notebooks"),
    Route("POST", "/projects/<int:project_id>/notebooks", {"allocation_id": "1", "profile": "cpu", "hours": "1"}),
    Route("GET", "/projects/<int:project_id>/notebooks/profiles"),
    Route("GET", "/notebooks/<int:session_id>"),
    Route("POST", "/notebooks/<int:session_id>/stop"),
    Route("GET", "/market/invoices/<int:invoice_id>.pdf"),
    Route("GET", "/organisations/<int:organisation_id>/billing"),
    # staff pages: the offering is public, so they only refuse
    Route("GET", "/admin/offerings/<int:offering_id>", outsider=403),
    Route("POST", "/admin/offerings/<int:offering_id>", {"price": "0.01"}, outsider=403),
    Route("POST", "/admin/offerings/<int:offering_id>/state", {"state": "retired"}, outsider=403),
    Route(
        "POST",
        "/admin/offerings/<int:offering_id>/details",
        {"title": "Defaced", "min_quantity": "1", "max_quantity": "2", "validity_months": "6"},
        outsider=403,
    ),
    Route("POST", "/finance/orders/<int:order_id>/refund", {"quantity": "1"}, outsider=403),
    # --- courses: the owner teaches C (funded from P); its students and their use are the teacher's only ----
    Route("GET", "/courses", outsider=200),
    Route("GET", "/courses/new", outsider=200),
    Route(
        "POST",
        "/courses/new",
        {
            "title": "Intruder course",
            "allocation_id": "<allocation_id>",
            "starts_on": "2030-01-02",
            "ends_on": "2030-01-20",
            "student_hours": "10",
            "max_seats": "5",
            "profiles": "1x-h100",
        },
        outsider=422,  # P's allocation is not among the outsider's choices
    ),
    Route("GET", "/courses/join", outsider=200),
    Route("POST", "/courses/join", {"code": "GUESSED123"}, outsider=422),  # the code is the capability
    Route("GET", "/courses/<int:course_id>"),
    Route("GET", "/courses/<int:course_id>/usage.csv"),
    Route("POST", "/courses/<int:course_id>/seats/<int:seat_id>/cap", {"hours": "50"}),
    Route("POST", "/courses/<int:course_id>/seats/<int:seat_id>/remove"),
    Route("POST", "/courses/<int:course_id>/close"),
    Route("POST", "/courses/<int:course_id>/notebooks", {"profile": "cpu", "hours": "1"}),
    # the audit log: admins only (it shows P's award, its order's refund, the owner's name)
    Route("GET", "/admin/audit", outsider=403),
    Route("GET", "/admin/audit.csv", outsider=403),
    # --- the operators' dashboards: factory staff only ----------------------------------------------------
    Route("GET", "/reports", outsider=403),
    Route("GET", "/reports/revenue", outsider=403),
    Route("GET", "/reports/calls", outsider=403),
    Route("GET", "/reports/<name>.csv", outsider=403, args={"name": "report"}),
    Route("GET", "/api/v1/reports/<name>", outsider=403, args={"name": "report"}),
    # --- JSON API -------------------------------------------------------------------------------------
    Route("GET", "/api/v1/audit", outsider=403),
    Route("GET", "/api/v1/organisations", outsider=200),
    Route("POST", "/api/v1/organisations", {**NEW_ORG, "name": "Outsider Three Ltd"}, outsider=201),
    Route("GET", "/api/v1/organisations/<int:organisation_id>"),
    Route("POST", "/api/v1/organisations/<int:organisation_id>/projects", {"title": "Intruder project"}),
    Route("GET", "/api/v1/projects", outsider=200),
    Route("GET", "/api/v1/projects/<int:project_id>"),
    Route("GET", "/api/v1/projects/<int:project_id>/members"),
    Route("POST", "/api/v1/projects/<int:project_id>/invitations", {"email": "intruder@example.eu", "role": "manager"}),
]


def object_routes(app: Flask) -> set[tuple[str, str]]:
    """Every (rule, method) of the app that touches a project, organisation, invitation or user."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "api.openapi_document":
            continue
        touches = (
            rule.endpoint.startswith("projects.")
            or bool(set(rule.arguments) & OBJECT_ARGUMENTS)
            or any(word in rule.rule for word in OBJECT_WORDS)
        )
        if touches:
            found |= {(rule.rule, m) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    return found


# --- the world: project P of organisation O, seen by its owner, members, an outsider, an admin ------------


def new_client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def world(app: Flask, db: Session, login, settings) -> SimpleNamespace:
    owner_client = new_client(app)
    owner = login(owner_client, given_name="Olga", family_name="Owner")
    org = services.create_organisation(db, owner, name=SECRET_ORG, kind="sme", country="EE", registry_id="14532901")
    project = services.create_project(db, owner, org, title=SECRET_TITLE, description="Nobody else may read this.")

    def join(client: FlaskClient, role: str, **claims: Any) -> User:
        user = login(client, **claims)
        _invitation, link = services.invite_member(db, settings, owner, project, email=user.email or "", role=role)
        services.accept_invitation(db, user, link.rsplit("/", 1)[1])
        return user

    member_client = new_client(app)
    member = join(member_client, "member", given_name="Zebulon", family_name="Quartermain")
    member2 = join(new_client(app), "member", given_name="Ysolde", family_name="Memberton")
    invitation, _link = services.invite_member(db, settings, owner, project, email=SECRET_EMAIL, role="member")

    outsider_client = new_client(app)
    outsider = login(outsider_client, given_name="Otto", family_name="Outsider")
    other_org = services.create_organisation(db, outsider, name="Outsider Ltd", kind="sme", country="LT")
    other_project = services.create_project(db, outsider, other_org, title="Outsider's own project")
    _token, outsider_token = create_api_token(db, outsider, name="probe", scopes=["read", "write"], ttl_days=30)
    ledger_world = make_world(db)
    allocation = open_q1(db, ledger_world, 100, project=project, title="Secret GPU hours")
    second_allocation = open_q1(db, ledger_world, 50, project=project, title="Second GPU hours")
    cpu = ledger.create_resource(
        db, None, ledger_world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    plan_capacity_around_now(db, cpu, 1000 * HOUR)
    running = open_now(db, project, cpu, 10)
    notebook = check_spawn(
        db, settings, hub_username(owner), "a1-1", {"allocation": running.id, "profile": "cpu", "hours": 1}
    ).session
    grant = grant_world(app, db, login, settings, owner, project, ledger_world.gpu)
    course = classroom.create_course(
        db,
        settings,
        owner,
        parent_allocation_id=running.id,
        title=SECRET_COURSE,
        starts_at=datetime.now(UTC),
        ends_at=datetime.now(UTC) + timedelta(days=10),
        student_cap=HOUR,
        max_seats=3,
        profiles=["cpu"],
    )
    student = login(new_client(app), given_name="Stella", family_name="Studentova")
    seat = classroom.join_course(db, student, None, course.join_code)
    shop = market_world(db, settings, owner, org, project, allocation, ledger_world.gpu)
    output = outputs.add_output(
        db, owner, project, kind="publication", citation=SECRET_CITATION, year=date.today().year
    )
    progress_report = ProgressReport(
        application_id=grant["application"].id, kind=ReportKind.PROGRESS, due_on=date.today() + timedelta(days=30)
    )
    db.add(progress_report)
    db.commit()

    return SimpleNamespace(
        **grant,
        **shop,
        owner=owner,
        owner_client=owner_client,
        org=org,
        project=project,
        member=member,
        member_client=member_client,
        member2=member2,
        invitation=invitation,
        outsider=outsider,
        outsider_client=outsider_client,
        outsider_token=outsider_token,
        other_project=other_project,
        allocation=allocation,
        second_allocation=second_allocation,
        site=ledger_world.site,
        notebook=notebook,
        course=course,
        seat=seat,
        output=output,
        progress_report=progress_report,
    )


def grant_world(app: Flask, db: Session, login, settings, owner: User, project: Project, gpu) -> dict[str, Any]:
    """P's application to an open Fast Lane call, through to an award with a held second tranche: with a
    PDF, a technical review by a site operator and the owner's notices."""
    manager = login(new_client(app), given_name="Magda", family_name="Callmanager")
    operator = login(new_client(app), given_name="Oskar", family_name="Operator")
    grant_role(db, None, operator, FactoryRole.SITE_OPERATOR, reason="test setup")
    start = date.today()
    for _ in range(3):  # awards start today
        q_start, q_end = ledger.quarter_of(start)
        ledger.set_capacity(
            db, None, gpu, starts_on=q_start, ends_on=q_end, capacity=10_000 * HOUR, reason="test setup"
        )
        start = q_end
    now = datetime.now(UTC)
    call = grants.create_call(
        db,
        None,
        title="Open call for everyone",
        access_mode=AccessMode.FAST_LANE,
        review_mode=ReviewMode.TECHNICAL,
        manager=manager,
        budgets={gpu.id: 1000 * HOUR},
        max_request=500 * HOUR,
        opens_at=now - timedelta(days=1),
        closes_at=now + timedelta(days=30),
        first_cutoff=date.today() + timedelta(days=14),
        questions=[{"key": "plan", "label": "Work plan", "type": "pdf"}],
        reason="test setup",
    )
    grants.set_call_state(db, manager, call, CallState.OPEN, reason="test setup")
    application = grants.start_application(
        db, owner, login_of(owner), call=call, project=project, title=SECRET_APPLICATION
    )
    grants.save_draft(
        db,
        owner,
        application,
        abstract=SECRET_ABSTRACT,
        requests=[grants.RequestInput(gpu.id, 100 * HOUR, "Secret justification")],
    )
    upload = grants.upload_pdf(
        db, owner, application, question_key="plan", filename="secret-plan.pdf", content=b"%PDF-1.4 secret"
    )
    grants.submit(db, settings, owner, login_of(owner), application)
    grants.administrative_check(db, settings, manager, application, passed=True)
    review = grants.assign_reviewer(db, settings, manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, review.id, comment_to_applicant="Feasible.", feasible=True)
    grants.complete_technical_assessment(db, settings, manager, application)
    grants.decide_accept(db, settings, manager, application, awarded={gpu.id: 100 * HOUR}, first_tranche_percent=50)
    held = db.exec(select(Award).where(Award.application_id == application.id, Award.tranche == 2)).one()
    notice = db.exec(select(Notification).where(Notification.user_id == owner.id)).first()
    assert notice is not None
    return {
        "call": call,
        "application": application,
        "review": review,
        "upload": upload,
        "held_award": held,
        "notice": notice,
    }


def market_world(db: Session, settings, owner: User, org, project, allocation, gpu) -> dict[str, Any]:
    """A published offering and O's paid order of it for P, with its invoice (written as the webhook would)."""
    offering = market.create_offering(
        db, None, resource=gpu, title="Public H100 hours", price_cents=250, max_quantity=50, reason="test setup"
    )
    market.set_offering_state(db, None, offering, OfferingState.PUBLISHED, reason="test setup")
    order = Order(
        organisation_id=org.id,
        project_id=project.id,
        buyer_id=owner.id,
        offering_id=offering.id,
        quantity=10,
        unit_price_cents=250,
        net_cents=2_500,
        vat_basis_points=2_400,
        vat_cents=600,
        gross_cents=3_100,
        vat_scheme="oss",
        vat_country="EE",
        state=OrderState.PAID,
        allocation_id=allocation.id,
        payment_intent_id="pi_secret_order",
        paid_at=datetime.now(UTC),
    )
    db.add(order)
    db.flush()
    invoice = market.issue_invoice(db, settings, order, InvoiceKind.INVOICE, quantity=10, net_cents=2_500)
    db.commit()
    return {"offering": offering, "order": order, "invoice": invoice}


def values_for(world: SimpleNamespace, **overrides: Any) -> dict[str, Any]:
    values = {
        "project_id": world.project.id,
        "organisation_id": world.org.id,
        "invitation_id": world.invitation.id,
        "user_id": world.member.id,
        "allocation_id": world.allocation.id,
        "call_id": world.call.id,
        "application_id": world.application.id,
        "review_id": world.review.id,
        "file_id": world.upload.id,
        "award_id": world.held_award.id,
        "notification_id": world.notice.id,
        "offering_id": world.offering.id,
        "order_id": world.order.id,
        "invoice_id": world.invoice.id,
        "session_id": world.notebook.id,
        "course_id": world.course.id,
        "seat_id": world.seat.id,
        "output_id": world.output.id,
        "report_id": world.progress_report.id,
        "site_id": world.site.id,
        "outsider": world.outsider.id,
        "token": "guessed-" + "x" * 40,
        "role": "admin",
        "report": "top_projects",
    }
    values.update(overrides)
    return values


def snapshot(db: Session, world: SimpleNamespace) -> dict[str, Any]:
    """Everything an outsider might try to change about P and O (and the factory roles)."""
    db.expire_all()
    project = db.get(Project, world.project.id)
    org = db.get(Organisation, world.org.id)
    assert project is not None and org is not None
    return {
        "project": (project.title, project.description, project.archived_at, project.organisation_id),
        "organisation": (org.name, org.registry_id, org.vat_number, org.verified_at),
        "projects of O": sorted(db.exec(select(Project.id).where(Project.organisation_id == org.id)).all()),
        "members": sorted(
            (m.user_id, m.role)
            for m in db.exec(select(ProjectMembership).where(ProjectMembership.project_id == project.id))
        ),
        "organisation members": sorted(
            (m.user_id, m.role)
            for m in db.exec(select(OrganisationMembership).where(OrganisationMembership.organisation_id == org.id))
        ),
        "invitations": sorted(
            (i.id, i.email, i.role, i.accepted_at, i.revoked_at)
            for i in db.exec(select(Invitation).where(Invitation.project_id == project.id))
        ),
        "factory roles": sorted((g.user_id, g.role) for g in db.exec(select(RoleGrant))),
        "allocations": sorted(
            (a.id, a.balance, a.credited, a.reserved, a.state)
            for a in db.exec(select(Allocation).where(Allocation.project_id == project.id))
        ),
        "ledger entries": len(db.exec(select(LedgerEntry)).all()),
        "sites": sorted((s.id, s.code, s.name, s.city, s.country) for s in db.exec(select(Site))),
        "resources": len(db.exec(select(Resource)).all()),
        "calls": sorted((c.id, c.title, c.state) for c in db.exec(select(Call))),
        "call budgets": sorted((b.id, b.budget, b.awarded) for b in db.exec(select(CallBudget))),
        "applications": sorted(
            (a.id, a.state, a.title, a.abstract, repr(a.answers), a.version, a.decision_reason)
            for a in db.exec(select(Application))
        ),
        "reviews": sorted((r.id, r.state, r.feasible, r.comment_to_applicant) for r in db.exec(select(Review))),
        "replies": len(db.exec(select(Reply)).all()),
        "files": len(db.exec(select(ApplicationFile)).all()),
        "awards": sorted((a.id, a.amount, a.released_at) for a in db.exec(select(Award))),
        "notices read": sorted((n.id, n.read_at) for n in db.exec(select(Notification))),
        "offerings": sorted((o.id, o.state, o.price_cents) for o in db.exec(select(Offering))),
        "offering prices": len(db.exec(select(OfferingPrice)).all()),
        "orders": sorted((o.id, o.state, o.refunded_cents) for o in db.exec(select(Order))),
        "invoices": len(db.exec(select(Invoice)).all()),
        "audit events": len(db.exec(select(AuditEvent)).all()),
        "courses": sorted((c.id, c.state, c.seats_taken, c.returned) for c in db.exec(select(Course))),
        "seats": sorted((s.id, s.cap, s.removed_at) for s in db.exec(select(CourseSeat))),
        "outputs": sorted((o.id, o.citation) for o in db.exec(select(ResearchOutput))),
        "progress reports": sorted((r.id, r.text, r.submitted_at) for r in db.exec(select(ProgressReport))),
    }


def call(
    client: FlaskClient,
    route: Route,
    url: str,
    *,
    bearer: str | None = None,
    csrf: str | None = None,
    values: dict[str, Any] | None = None,
):
    data = {
        k: (str(values[v[1:-1]]) if values and isinstance(v, str) and v.startswith("<") else v)
        for k, v in (route.data or {}).items()
    }
    if route.api:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        if route.method == "GET":
            return client.get(url, headers=headers)
        return client.open(url, method=route.method, json=data, headers=headers)
    if route.method == "GET":
        return client.get(url)
    return client.post(url, data={"csrf_token": csrf or csrf_token(client), **data})


def scrub(body: str) -> str:
    """A page without what differs between two requests anyway (CSRF tokens, flashed messages)."""
    body = re.sub(r'<div class="flashes".*?</div>', "", body, flags=re.DOTALL)
    body = re.sub(r'name="csrf_token" value="[^"]*"', "", body)
    body = re.sub(r'name="next" value="[^"]*"', "", body)  # the language switch returns to the URL asked for
    return re.sub(r"\s+", " ", body)


# --- the table-driven test -------------------------------------------------------------------------------


@pytest.mark.usefixtures("oidc_provider")  # its logins start at the provider
def test_outsider_learns_and_changes_nothing(app: Flask, db: Session, world: SimpleNamespace) -> None:
    table = {(r.rule, r.method) for r in ROUTES}
    assert len(table) == len(ROUTES), "a route is listed twice"
    missing = object_routes(app) - table
    assert not missing, f"routes missing from ROUTES in {__name__}: {sorted(missing)}"
    stale = table - object_routes(app)
    assert not stale, f"ROUTES lists routes the app no longer has: {sorted(stale)}"

    adapter = app.url_map.bind("localhost")
    client, values = world.outsider_client, values_for(world)
    missing_values = values_for(
        world,
        project_id=MISSING_ID,
        organisation_id=MISSING_ID,
        invitation_id=MISSING_ID,
        user_id=MISSING_ID,
        allocation_id=MISSING_ID,
        call_id=MISSING_ID,
        application_id=MISSING_ID,
        review_id=MISSING_ID,
        file_id=MISSING_ID,
        award_id=MISSING_ID,
        notification_id=MISSING_ID,
        order_id=MISSING_ID,
        invoice_id=MISSING_ID,
        session_id=MISSING_ID,
        course_id=MISSING_ID,
        seat_id=MISSING_ID,
        output_id=MISSING_ID,
        report_id=MISSING_ID,
        # offering_id stays: a published offering is public, and the POST names the missing project
    )
    secrets_ = [
        SECRET_TITLE,
        SECRET_ORG,
        SECRET_EMAIL,
        "Quartermain",
        "Memberton",
        "Olga Owner",
        SECRET_APPLICATION,
        SECRET_ABSTRACT,
        "secret-plan.pdf",
        SECRET_COURSE,
        "Studentova",
        SECRET_CITATION,
    ]
    before = snapshot(db, world)
    failures: list[str] = []

    for route in ROUTES:
        url = route.url(values)
        matched, _args = adapter.match(url, method=route.method, return_rule=True)
        assert matched.rule == route.rule, f"{url} reaches {matched.rule}, not {route.rule}"
        response = call(client, route, url, bearer=world.outsider_token, values=values)
        body = response.get_data(as_text=True)
        where = f"{route.method} {route.rule}"
        if response.status_code != route.outsider:
            failures.append(f"{where}: {response.status_code}, expected {route.outsider}: {body[:300]}")
            continue
        if route.api and response.status_code >= 400:
            if response.mimetype != "application/problem+json":
                failures.append(f"{where}: {response.mimetype}, expected application/problem+json")
            elif response.json["status"] != route.outsider:
                failures.append(f"{where}: problem status {response.json['status']}")
        leaked = [s for s in secrets_ if s in body]
        if leaked:
            failures.append(f"{where}: the response shows {leaked}")
        if route.outsider == 404 and set(OBJECT_ARGUMENTS) & set(re.findall(r"<(?:[a-z]+:)?([a-z_]+)>", route.rule)):
            # a non-member cannot tell P from a project that does not exist
            other = call(client, route, route.url(missing_values), bearer=world.outsider_token, values=missing_values)
            if other.status_code != response.status_code or scrub(other.get_data(as_text=True)) != scrub(body):
                failures.append(f"{where}: answers differently for an existing and a missing object")

    # P's invitation or member reached through the outsider's own project, where the outsider is PI
    own_project = values_for(world, project_id=world.other_project.id)
    for route in ROUTES:
        if "<int:project_id>" in route.rule and ("<int:invitation_id>" in route.rule or "<int:user_id>" in route.rule):
            response = call(client, route, route.url(own_project), bearer=world.outsider_token, values=own_project)
            if response.status_code != 404:
                failures.append(f"{route.method} {route.rule} via own project: {response.status_code}")

    assert not failures, "\n".join(failures)
    assert snapshot(db, world) == before

    # the lists the outsider may see are theirs only
    db.expire_all()
    projects = world.outsider_client.get(
        "/api/v1/projects", headers={"Authorization": f"Bearer {world.outsider_token}"}
    ).json["projects"]
    assert [p["id"] for p in projects] == [world.other_project.id]
    dashboard = world.outsider_client.get("/").get_data(as_text=True)
    assert "Outsider&#39;s own project" in dashboard or "Outsider's own project" in dashboard


# --- members, managers, factory staff, anonymous callers ---------------------------------------------------


def test_plain_member_can_view_but_not_manage_members(app: Flask, db: Session, world: SimpleNamespace) -> None:
    client = world.member_client
    page = client.get(f"/projects/{world.project.id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert SECRET_TITLE in html and "Quartermain" in html and "Memberton" in html
    assert SECRET_EMAIL not in html  # pending invitations are for managers only
    assert "Send invitation" not in html

    _t, read_token = create_api_token(db, world.member, name="member", scopes=["read", "write"], ttl_days=5)
    auth = {"Authorization": f"Bearer {read_token}"}
    assert client.get(f"/api/v1/projects/{world.project.id}", headers=auth).status_code == 200
    members = client.get(f"/api/v1/projects/{world.project.id}/members", headers=auth).json
    assert {m["user_id"]: m["role"] for m in members} == {
        world.owner.id: "pi",
        world.member.id: "member",
        world.member2.id: "member",
    }

    before = snapshot(db, world)
    p = world.project.id
    refused = {
        f"/projects/{p}/invitations": {"email": "friend@example.eu", "role": "manager"},
        f"/projects/{p}/invitations/{world.invitation.id}/revoke": {},
        f"/projects/{p}/members/{world.member2.id}/role": {"role": "manager"},
        f"/projects/{p}/members/{world.member.id}/role": {"role": "manager"},  # promoting oneself
        f"/projects/{p}/members/{world.owner.id}/role": {"role": "member"},
        f"/projects/{p}/members/{world.member2.id}/remove": {},
        f"/projects/{p}/members/{world.owner.id}/remove": {},
        f"/projects/{p}/edit": {"title": "Renamed", "description": ""},
    }
    for path, data in refused.items():
        response = post_form(client, path, data)
        assert response.status_code == 403, (path, response.get_data(as_text=True)[:300])
        assert "Not allowed" in response.get_data(as_text=True)
    assert client.get(f"/projects/{p}/edit").status_code == 403

    response = client.post(f"/api/v1/projects/{p}/invitations", json={"email": "friend@example.eu"}, headers=auth)
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    assert response.json["status"] == 403
    assert snapshot(db, world) == before


def test_factory_admin_can_view_any_project(app: Flask, db: Session, world: SimpleNamespace, login) -> None:
    client = new_client(app)
    admin = login(client, given_name="Ada", family_name="Admin")
    assert client.get(f"/projects/{world.project.id}").status_code == 404  # not before the grant
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")

    page = client.get(f"/projects/{world.project.id}")
    assert page.status_code == 200
    assert SECRET_TITLE in page.get_data(as_text=True)
    assert "Quartermain" in page.get_data(as_text=True)
    org_page = client.get(f"/organisations/{world.org.id}")
    assert org_page.status_code == 200
    assert SECRET_TITLE in org_page.get_data(as_text=True)

    _t, token = create_api_token(db, admin, name="admin", scopes=["read"], ttl_days=5)
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/api/v1/projects/{world.project.id}", headers=auth).json["title"] == SECRET_TITLE
    assert client.get(f"/api/v1/organisations/{world.org.id}", headers=auth).json["name"] == SECRET_ORG
    assert len(client.get(f"/api/v1/projects/{world.project.id}/members", headers=auth).json) == 3


def anonymous_csrf_token(app: Flask, client: FlaskClient) -> str:
    """A CSRF token for a client that is not logged in (no page shows one): so that what refuses the
    POSTs below is the login requirement, not the CSRF check. Only the CSRF secret goes into the session."""
    with app.test_request_context():
        token = generate_csrf()
        raw = flask_session["csrf_token"]
    with client.session_transaction() as s:
        s["csrf_token"] = raw
    return token


def test_anonymous_callers_are_sent_to_login_or_get_401(app: Flask, db: Session, world: SimpleNamespace) -> None:
    client = new_client(app)
    csrf = anonymous_csrf_token(app, client)
    values = values_for(world)
    before = snapshot(db, world)
    for route in ROUTES:
        url = route.url(values)
        response = call(client, route, url, csrf=csrf, values=values)
        where = f"{route.method} {route.rule}"
        if route.api:
            assert response.status_code == 401, where
            assert response.mimetype == "application/problem+json", where
            assert response.json["status"] == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        elif route.rule == "/":
            assert response.status_code == 200  # the public welcome page
            assert SECRET_TITLE not in response.get_data(as_text=True)
        else:
            assert response.status_code == 302, (where, response.get_data(as_text=True)[:300])
            assert response.headers["Location"].startswith("/login?next="), where
    assert snapshot(db, world) == before


def test_manager_can_manage_members_but_not_hand_over_the_pi_role(
    app: Flask, db: Session, world: SimpleNamespace
) -> None:
    services.change_member_role(db, world.owner, world.project, world.member.id, ProjectRole.MANAGER)
    client = world.member_client
    p = world.project.id
    page = client.get(f"/projects/{p}").get_data(as_text=True)
    assert SECRET_EMAIL in page and "Send invitation" in page

    assert post_form(client, f"/projects/{p}/members/{world.member2.id}/role", {"role": "manager"}).status_code == 302
    assert post_form(client, f"/projects/{p}/members/{world.member.id}/role", {"role": "pi"}).status_code == 409
    assert post_form(client, f"/projects/{p}/members/{world.owner.id}/remove").status_code == 409
    db.expire_all()
    roles = {m.user_id: m.role for m in db.exec(select(ProjectMembership).where(ProjectMembership.project_id == p))}
    assert roles == {world.owner.id: "pi", world.member.id: "manager", world.member2.id: "manager"}


def test_a_payment_problem_and_upload_quotas_stay_with_whom_they_concern(
    app: Flask, db: Session, world: SimpleNamespace, settings, login
) -> None:
    """A payment that could not be booked is shown in detail to finance only (the buyer is told no hours were
    added, outsiders learn nothing); one user's uploads never count against another's quota."""
    import stripe

    pending = Order(
        **{k: v for k, v in world.order.model_dump().items() if k not in ("id", "state", "paid_at")},
        state=OrderState.PENDING,
    )
    pending.payment_intent_id, pending.checkout_session_id = None, "cs_secret_pending"
    db.add(pending)
    db.commit()
    data = {"id": "cs_secret_pending", "object": "checkout.session", "payment_status": "paid",
            "payment_intent": "pi_other", "amount_total": 1, "currency": "eur",
            "metadata": {"order_id": str(pending.id)}}  # fmt: skip
    event = stripe.Event.construct_from(
        {"id": "evt_secret", "object": "event", "type": "checkout.session.completed", "data": {"object": data}}, "k"
    )
    assert market.handle_stripe_event(db, settings, event) == "amount or currency differs: not credited"
    detail = "Stripe reports 1 cents EUR paid"
    finance_client = new_client(app)
    grant_role(db, None, login(finance_client), FactoryRole.FINANCE, reason="test setup")
    assert detail in finance_client.get("/finance/orders?problems=1").get_data(as_text=True)
    for client in (world.outsider_client, world.owner_client, world.member_client):
        assert client.get("/finance/orders?problems=1").status_code == 403
        assert client.get("/finance/orders.csv").status_code == 403
    buyer_page = world.owner_client.get(f"/market/orders/{pending.id}").get_data(as_text=True)
    assert "no hours were added" in buyer_page and detail not in buyer_page
    assert world.outsider_client.get(f"/market/orders/{pending.id}").status_code == 404

    # the owner's secret plan counts against the owner only: the outsider's tiny quota is untouched by it
    assert grants.uploaded_bytes(db, world.owner) == len(b"%PDF-1.4 secret")
    assert grants.uploaded_bytes(db, world.outsider) == 0


# --- sessions ended on the server (issue 15) ---------------------------------------------------------------


def test_the_owners_cookie_copied_before_logout_opens_no_route_afterwards(
    app: Flask, db: Session, world: SimpleNamespace
) -> None:
    """A copy of the owner's signed cookie (and a form token from before) is worth no more than no cookie at all
    once the owner has logged out: every page sends it to the login page and nothing changes."""
    copy = new_client(app)
    copy.set_cookie("portal_session", world.owner_client.get_cookie("portal_session").value)
    csrf = csrf_token(copy, "/account")
    values = values_for(world)
    assert post_form(world.owner_client, "/logout").status_code == 302
    before = snapshot(db, world)
    for route in ROUTES:
        if route.api:
            continue  # the API never took cookies
        response = call(copy, route, route.url(values), csrf=csrf, values=values)
        where = f"{route.method} {route.rule}"
        if route.rule == "/":
            assert SECRET_TITLE not in response.get_data(as_text=True), where
        else:
            assert response.status_code == 302, (where, response.status_code)
            assert response.headers["Location"].startswith("/login?next="), where
    assert snapshot(db, world) == before
