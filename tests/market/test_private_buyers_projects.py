"""A private buyer's personal project elsewhere in the portal: its hours are theirs to compute on (the notebooks
pages and ``GET /api/v1/allocations`` list them), and it applies to no call for proposals (calls award hours to
organisations' projects): refused with a 422 that says why, through the service, the API and the page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlmodel import select

from portal.grants import services as grants
from portal.grants.models import Application, ApplicationState, ReviewMode
from portal.grants.services.access import PersonalProjectCannotApply
from portal.identity.models import User
from portal.identity.services import create_api_token
from portal.ledger import services as ledger
from portal.ledger.models import AllocationSource
from portal.projects import services as projects
from tests.conftest import post_form
from tests.grants_world import complete_draft, login_of, mail_settings, make_grant_world
from tests.ledger_world import HOUR


def personal_hours(db, world, buyer: User, hours: int = 20) -> SimpleNamespace:
    """``buyer``'s personal project (as their first purchase makes it) holding ``hours`` GPU-hours bought now."""
    project = projects.open_personal_project(db, buyer)
    now = datetime.now(UTC)
    allocation = ledger.open_allocation(
        db,
        None,
        project=project,
        resource=world.gpu,
        amount=hours * HOUR,
        starts_at=now - timedelta(days=1),
        ends_at=now + timedelta(days=60),
        source=AllocationSource.PURCHASE,
        title="Purchase: H100 hours",
    )
    return SimpleNamespace(project=project, allocation=allocation)


@pytest.fixture
def world(db):
    return make_grant_world(db, mode=ReviewMode.AUTOMATIC)


def bearer(db, user: User, *scopes: str, login=None) -> dict[str, str]:
    _row, token = create_api_token(db, user, name="mine", scopes=list(scopes), ttl_days=30, login=login)
    return {"Authorization": f"Bearer {token}"}


# --- computing on the hours bought ---------------------------------------------------------------------------


def test_a_private_buyers_allocation_is_listed_by_the_api_and_on_the_notebooks_pages(app, db, login, world):
    client = app.test_client()
    zofia = login(client)
    mine = personal_hours(db, world.ledger, zofia)

    listed = client.get("/api/v1/allocations", headers=bearer(db, zofia, "read"))
    assert listed.status_code == 200
    assert [(a["id"], a["project_id"]) for a in listed.json["allocations"]] == [(mine.allocation.id, mine.project.id)]

    sessions = client.get("/notebooks").get_data(as_text=True)
    assert f"/projects/{mine.project.id}/notebooks" in sessions and mine.project.title in sessions
    launch = client.get(f"/projects/{mine.project.id}/notebooks")
    assert launch.status_code == 200
    assert f'value="{mine.allocation.id}"' in launch.get_data(as_text=True)  # startable on the launch form


# --- no call for proposals -----------------------------------------------------------------------------------


def test_a_personal_project_is_refused_as_an_applicant_naming_why(db, world):
    buyer = world.pi
    mine = personal_hours(db, world.ledger, buyer)
    with pytest.raises(PersonalProjectCannotApply) as refused:
        grants.start_application(db, buyer, login_of(buyer), call=world.call, project=mine.project, title="Mine")
    assert refused.value.status == 422
    assert "is a personal project" in refused.value.detail and "organisation" in refused.value.detail
    assert db.exec(select(Application).where(Application.project_id == mine.project.id)).first() is None


@pytest.mark.parametrize("with_login", [False, True], ids=["token-alone", "token-of-a-substantial-login"])
def test_the_api_answers_422_naming_the_personal_project_never_500(app, db, login, world, with_login):
    client = app.test_client()
    zofia = login(client)
    mine = personal_hours(db, world.ledger, zofia)
    answer = client.post(
        "/api/v1/applications",
        json={"call_id": world.call.id, "project_id": mine.project.id, "title": "Mine"},
        headers=bearer(db, zofia, "read", "write", login=login_of(zofia) if with_login else None),
    )
    assert answer.status_code == 422, answer.get_data(as_text=True)
    assert "is a personal project" in answer.json["detail"]
    assert answer.json["type"].endswith("/personal-project-cannot-apply")
    assert db.exec(select(Application).where(Application.project_id == mine.project.id)).first() is None


def test_the_apply_page_refuses_a_personal_project_with_422(app, db, login, world):
    client = app.test_client()
    zofia = login(client)  # eIDAS substantial: enough to lead an application
    mine = personal_hours(db, world.ledger, zofia)
    page = client.get(f"/calls/{world.call.id}").get_data(as_text=True)
    assert f'value="{mine.project.id}"' not in page  # not offered as the applying project
    sent = post_form(
        client,
        f"/calls/{world.call.id}/apply",
        {"project_id": mine.project.id, "title": "Mine"},
        page=f"/calls/{world.call.id}",
    )
    assert sent.status_code == 422
    assert db.exec(select(Application).where(Application.project_id == mine.project.id)).first() is None


def test_an_earlier_draft_of_a_personal_project_is_rejected_as_ineligible_not_a_crash(db, world):
    """A draft written before the refusal existed: its submission (an automatic call) is rejected with the
    reason, and reviewers' conflicts of interest are still found."""
    buyer = world.pi
    mine = personal_hours(db, world.ledger, buyer)
    draft = complete_draft(db, world)
    draft.project_id = mine.project.id  # as such a draft was stored, on the personal project
    db.add(draft)
    db.commit()
    assert [str(problem) for problem in grants.eligibility_problems(db, world.call, mine.project)] == [
        f"{mine.project.title} is a personal project: calls for proposals award hours to projects of a university, "
        "research institute, public body or company, which answers for the work. Apply with a project of your "
        "organisation."
    ]
    stranger = projects.open_personal_project(db, world.manager)  # another person's personal project
    assert stranger.organisation_id is None
    assert grants.conflict_of_interest(db, world.manager, mine.project) is None
    assert grants.conflict_of_interest(db, buyer, mine.project) == "is a member of the project"

    grants.submit(db, mail_settings(), buyer, login_of(buyer), draft)
    db.refresh(draft)
    assert draft.state == ApplicationState.REJECTED
    assert "is a personal project" in draft.decision_reason
