"""A call for proposals end to end, in real browsers: a PI applies (the draft saves itself as she types),
the call manager runs the administrative check and assigns a site operator and two reviewers, each reviews
in their own browser, the manager asks for the reply, ranks and accepts, and the allocation is on the
project page. axe-core checks the draft editor, the review form and the manager's dashboard.

Same harness as ``tests/journeys/test_browser.py``: the portal served over HTTP in a thread, logins through the
local OIDC provider's page, e-mail over SMTP. Setup that is not the point (organisations, roles, the call
itself, capacity) goes through the services on the served portal's database.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from portal_standin.devstack import OIDCProviderProcess, free_port
from sqlmodel import Session, select
from werkzeug.serving import make_server

from portal import create_app
from portal.grants import services as grants
from portal.grants.models import AccessMode, Application, CallState, ReviewMode
from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.ledger.models import Allocation
from portal.projects import services as projects
from tests.conftest import Mailbox
from tests.grants_world import CRITERIA, QUESTIONS
from tests.journeys import test_browser as harness
from tests.journeys.test_browser import ARTIFACTS, EIDAS, add_person, assert_accessible, log_in, portal_errors
from tests.ledger_world import HOUR, make_world

pytestmark = pytest.mark.browser

# The harness's fixtures (not its tests): one Chromium per module, a fresh context per person.
browser = harness.browser
new_page = harness.new_page


@pytest.fixture
def portal(make_settings, mailbox: Mailbox) -> Iterator[SimpleNamespace]:
    """The real portal in a background thread (as ``portal_url`` in test_browser.py), with its engine so
    that the test can set things up through the services."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(make_settings(base_url=url, mail_backend="smtp", smtp_host="127.0.0.1", smtp_port=mailbox.port))
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    engine = app.extensions["portal.engine"]
    with Session(engine, expire_on_commit=False) as db:
        yield SimpleNamespace(url=url, app=app, db=db, settings=app.extensions["portal.settings"])
    server.shutdown()
    thread.join(timeout=5)
    engine.dispose()


def person_in_browser(
    portal: SimpleNamespace, provider: OIDCProviderProcess, new_page, given: str, family: str, **claims: Any
) -> tuple[Any, User, list[str]]:
    """A person logged in through the provider's page in a browser context of their own."""
    sub, email = add_person(provider, given, family, acr=EIDAS + "substantial", **claims)
    page = new_page()
    errors = portal_errors(page, portal.url)
    log_in(page, portal.url, provider, "eIDAS", sub)
    portal.db.expire_all()
    user = portal.db.exec(select(User).where(User.email == email)).one()
    return page, user, errors


def submit_and_see(page: Any, button: Any, flash: str) -> None:
    """Press a form's button and wait for the page that flashes ``flash``."""
    button.click()
    page.locator(".flashes").filter(has_text=flash).wait_for()


def test_a_call_from_application_to_allocation(portal, oidc_provider, new_page, mailbox):
    db, url = portal.db, portal.url
    pi_page, pi, pi_errors = person_in_browser(portal, oidc_provider, new_page, "Anna", "Tamm")
    manager_page, manager, manager_errors = person_in_browser(portal, oidc_provider, new_page, "Mona", "Manager")
    operator_page, operator, operator_errors = person_in_browser(portal, oidc_provider, new_page, "Olev", "Operaator")
    reviewers = [
        person_in_browser(portal, oidc_provider, new_page, "Rasa", "Reviewer"),
        person_in_browser(portal, oidc_provider, new_page, "Rutger", "Referee"),
    ]

    # --- setup through the services: roles, the PI's project, capacity and an open peer-review call ----
    grant_role(db, None, operator, FactoryRole.SITE_OPERATOR, reason="test setup")
    for _page, reviewer, _errors in reviewers:
        grant_role(db, None, reviewer, FactoryRole.REVIEWER, reason="test setup")
    org = projects.create_organisation(db, pi, name="Tartu Ülikool", kind="university", country="EE")
    project = projects.create_project(db, pi, org, title="Estonian speech models")
    world = make_world(db)
    start = date.today()
    for _ in range(3):
        q_start, q_end = ledger.quarter_of(start)
        ledger.set_capacity(
            db, None, world.gpu, starts_on=q_start, ends_on=q_end, capacity=10_000 * HOUR, reason="test setup"
        )
        start = q_end
    now = datetime.now(UTC)
    call = grants.create_call(
        db,
        None,
        title="Large Scale spring call",
        access_mode=AccessMode.LARGE_SCALE,
        review_mode=ReviewMode.PEER_REVIEW,
        manager=manager,
        budgets={world.gpu.id: 1000 * HOUR},
        max_request=400 * HOUR,
        min_request=HOUR,
        opens_at=now - timedelta(days=1),
        closes_at=now + timedelta(days=60),
        first_cutoff=date.today() + timedelta(days=14),
        cutoff_every_days=14,
        decision_within_working_days=10,
        questions=QUESTIONS,
        criteria=CRITERIA,
        duration_months=3,
        reason="test setup",
    )
    grants.set_call_state(db, manager, call, CallState.OPEN, reason="test setup")

    # --- the PI applies -----------------------------------------------------------------------------------
    pi_page.get_by_role("link", name="Calls", exact=True).click()
    pi_page.get_by_role("link", name="Large Scale spring call").click()
    pi_page.get_by_label("Project").select_option(label="Estonian speech models (Tartu Ülikool)")
    pi_page.get_by_label("Title of the application").fill("Whisper for Estonian")
    pi_page.get_by_role("button", name="Start an application").click()
    pi_page.wait_for_url(re.compile(r".*/applications/\d+/edit$"))
    application_id = int(re.search(r"/applications/(\d+)/edit", pi_page.url).group(1))

    # She fills the draft; it saves itself (htmx) without a button being pressed.
    pi_page.get_by_label("Abstract").fill("Fine-tuning Whisper on Estonian broadcast archives.")
    pi_page.get_by_label("Software stack").fill("PyTorch, DeepSpeed")
    pi_page.get_by_label("Largest job (GPUs)").fill("16")
    pi_page.get_by_label("Field (optional)").select_option("NLP")
    pi_page.get_by_label("H100 GPU-hours, Test Centre").fill("200")
    pi_page.get_by_label("Why H100 GPU-hours at Test Centre").fill("Three fine-tuning runs of 64 GPU-hours each.")
    status = pi_page.locator("#save-status")
    status.locator(".saved").wait_for()
    assert re.fullmatch(r"Saved \d\d:\d\d UTC", status.inner_text().strip())
    db.expire_all()
    saved = db.get(Application, application_id)
    assert saved is not None and saved.state == "draft"
    assert saved.abstract == "Fine-tuning Whisper on Estonian broadcast archives."
    assert saved.answers == {"software": "PyTorch, DeepSpeed", "nodes": 16, "field": "NLP"}
    assert_accessible(pi_page, "draft editor")
    ARTIFACTS.mkdir(exist_ok=True)
    pi_page.screenshot(path=str(ARTIFACTS / "grants-draft-editor.png"), full_page=True)

    submit_and_see(pi_page, pi_page.get_by_role("button", name="Submit the application"), "is submitted (version 1)")
    assert pi_page.url == f"{url}/applications/{application_id}"
    assert pi_page.locator("#application-state").inner_text() == "submitted"
    assert "Inbox (1)" in pi_page.get_by_role("navigation", name="Main").inner_text()

    # --- the manager: administrative check, a site operator for the technical assessment -------------------
    manager_page.goto(f"{url}/calls/{call.id}/manage")
    manager_page.get_by_role("link", name="Whisper for Estonian").click()
    submit_and_see(
        manager_page, manager_page.get_by_role("button", name="Pass the administrative check"), "check passed"
    )

    def assign(email: str, kind: str, flash: str) -> None:
        manager_page.get_by_label("Reviewer's e-mail address").fill(email)
        manager_page.get_by_label("Kind of review").select_option(kind)
        manager_page.get_by_label("Due on").fill((date.today() + timedelta(days=10)).isoformat())
        submit_and_see(manager_page, manager_page.get_by_role("button", name="Assign"), flash)

    assign(operator.email, "technical", "is asked for a technical review")
    mail = mailbox.wait_for(operator.email)
    assert mail["Subject"] == "Review requested: Whisper for Estonian"

    # --- the site operator's technical assessment ------------------------------------------------------------
    operator_page.reload()
    operator_page.get_by_role("link", name="Reviews", exact=True).click()
    operator_page.get_by_role("link", name="Whisper for Estonian").click()
    operator_page.get_by_label("Yes, feasible").check()
    operator_page.get_by_label("Comment to the applicant (shown without your name)").fill(
        "Fits the H100 nodes; use the scratch file system for the audio."
    )
    submit_and_see(operator_page, operator_page.get_by_role("button", name="Submit the review"), "review is submitted")

    manager_page.reload()
    submit_and_see(
        manager_page,
        manager_page.get_by_role("button", name="Complete the technical assessment"),
        "technical assessment is complete",
    )
    for _page, reviewer, _errors in reviewers:
        assign(reviewer.email, "scientific", "is asked for a scientific review")
    reviews_table = manager_page.locator("#reviews").inner_text()
    assert "Olev Operaator" in reviews_table and "feasible" in reviews_table and "Rutger Referee" in reviews_table
    assert_accessible(manager_page, "application page of the call manager")
    manager_page.screenshot(path=str(ARTIFACTS / "grants-application-manager.png"), full_page=True)

    # --- two scientific reviews, each in the reviewer's own browser ------------------------------------------
    for n, ((page, _reviewer, _errors), scores, comment) in enumerate(
        [
            (reviewers[0], ("5", "4", "4"), "A clear plan with a strong team."),
            (reviewers[1], ("4", "4", "3"), "Good; the evaluation could be broader."),
        ]
    ):
        page.goto(f"{url}/reviews")
        page.get_by_role("link", name="Whisper for Estonian").click()
        assert page.get_by_role("heading", name="Review: Whisper for Estonian").is_visible()
        assert "Fine-tuning Whisper on Estonian broadcast archives." in page.locator("#version").inner_text()
        for criterion, score in zip(CRITERIA, scores, strict=True):
            group = page.get_by_role("group", name=f"{criterion['label']} (weight {criterion['weight']} %)")
            group.get_by_label(score, exact=True).check()
        page.get_by_label("Comment to the applicant (shown without your name)").fill(comment)
        page.get_by_label("Private comment to the panel (the applicant does not see it)").fill("Fund it.")
        if n == 0:
            assert page.get_by_role("button", name="Declare a conflict of interest").is_visible()
            assert_accessible(page, "review form")
            page.screenshot(path=str(ARTIFACTS / "grants-review-form.png"), full_page=True)
        submit_and_see(page, page.get_by_role("button", name="Submit the review"), "review is submitted")

    # --- the manager asks for the reply; the PI answers; ranking and the award ---------------------------------
    manager_page.reload()
    submit_and_see(
        manager_page,
        manager_page.get_by_role("button", name="Ask the applicant to reply to the reviews"),
        "asked for a reply",
    )
    pi_page.get_by_role("link", name=re.compile(r"Inbox \(\d+\)")).click()
    notice = pi_page.get_by_role("listitem").filter(has=pi_page.get_by_role("heading", name=re.compile("your reply$")))
    assert notice.locator(".tag.new").is_visible()
    notice.get_by_role("button", name=re.compile("^Open")).click()
    pi_page.wait_for_url(f"{url}/applications/{application_id}")
    comments = pi_page.locator("#comments").inner_text()
    assert "A clear plan with a strong team." in comments and "Fits the H100 nodes" in comments
    assert "Rasa" not in comments and "Fund it." not in comments
    pi_page.get_by_label("Your reply to the reviews").fill("We will add a dialect test set.")
    submit_and_see(pi_page, pi_page.get_by_role("button", name="Send the reply"), "reply is sent")

    manager_page.reload()
    assert "We will add a dialect test set." in manager_page.locator("#reply-section").inner_text()
    submit_and_see(manager_page, manager_page.get_by_role("button", name="Rank the application"), "is ranked")
    award = manager_page.get_by_label("H100 GPU-hours: hours to award")
    assert award.input_value() == "200"
    award.fill("180")
    manager_page.get_by_label("Message to the applicant (optional)").fill("Congratulations.")
    submit_and_see(
        manager_page, manager_page.get_by_role("button", name="Accept and open the allocations"), "is accepted"
    )
    assert manager_page.locator("#application-state").inner_text() == "accepted"

    manager_page.goto(f"{url}/calls/{call.id}/manage")
    budget = manager_page.locator(f"#budget-{world.gpu.id}").get_by_role("cell").all_inner_texts()
    assert budget == ["1,000.0 GPU-hours", "200.0 GPU-hours", "180.0 GPU-hours", "820.0 GPU-hours", "20 %"]
    ranking = manager_page.locator("#ranking").get_by_role("row").nth(1).get_by_role("cell").all_inner_texts()
    assert ranking[:3] == ["1", "Whisper for Estonian", "4.15"]
    assert_accessible(manager_page, "manager dashboard")
    manager_page.screenshot(path=str(ARTIFACTS / "grants-manager-dashboard.png"), full_page=True)

    # --- the allocation is on the project page -----------------------------------------------------------------
    pi_page.goto(f"{url}/projects/{project.id}")
    row = pi_page.locator("#allocations").get_by_role("row", name=re.compile("Large Scale: Whisper for Estonian"))
    assert "180.0 GPU-hours" in row.inner_text()
    db.expire_all()
    allocation = db.exec(select(Allocation).where(Allocation.project_id == project.id)).one()
    assert allocation.balance == 180 * HOUR

    everyone = pi_errors + manager_errors + operator_errors + [e for _p, _u, errors in reviewers for e in errors]
    assert everyone == []
