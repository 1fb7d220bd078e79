"""Organisations, projects, invitations by e-mail, members and the PI role, through the portal's pages."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, func, select

from portal import create_app
from portal.config import Settings
from portal.identity.models import User
from portal.projects import services
from portal.projects.jobs import purge_stale_invitations
from portal.projects.models import (
    Invitation,
    Organisation,
    OrganisationMembership,
    Project,
    ProjectMembership,
    ProjectRole,
)
from tests.conftest import Mailbox, post_form

ORG_FORM = {"name": "Warsaw AI Lab", "kind": "university", "country": "PL", "registry_id": "", "vat_number": ""}


def count(db: Session, model: type) -> int:
    db.expire_all()
    return db.exec(select(func.count()).select_from(model)).one()


def members(db: Session, project: Project) -> dict[int, str]:
    db.expire_all()
    rows = db.exec(select(ProjectMembership).where(ProjectMembership.project_id == project.id))
    return {m.user_id: m.role for m in rows}


def page(response) -> str:
    return response.get_data(as_text=True)


# --- organisations -------------------------------------------------------------------------------------


def test_organisation_with_valid_vat_and_regon_is_registered_and_its_creator_is_admin(client, login, db):
    user = login(client)
    response = post_form(
        client, "/organisations/new", {**ORG_FORM, "registry_id": "192598184", "vat_number": "PL 526-025-02-74"}
    )
    assert response.status_code == 302
    org = db.exec(select(Organisation).where(Organisation.name == "Warsaw AI Lab")).one()
    assert response.headers["Location"] == f"/organisations/{org.id}"
    assert (org.country, org.registry_id, org.vat_number) == ("PL", "192598184", "PL5260250274")
    assert org.verified_at is None
    membership = db.exec(select(OrganisationMembership).where(OrganisationMembership.organisation_id == org.id)).one()
    assert (membership.user_id, membership.role) == (user.id, "admin")
    shown = page(client.get(response.headers["Location"]))
    assert "Warsaw AI Lab" in shown and "PL5260250274" in shown and "is registered" in shown


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"vat_number": "PL5260250275"}, "vat_number", "its check digit is wrong"),
        ({"vat_number": "LT119511515"}, "vat_number", "belongs to LT, but the organisation is in PL"),
        ({"vat_number": "X"}, "vat_number", "not a valid PL VAT number"),
        ({"registry_id": "192598185"}, "registry_id", "not a valid PL REGON"),
        ({"country": "EE", "registry_id": "14532902"}, "registry_id", "not a valid EE registry code (registrikood)"),
        ({"country": "LT", "registry_id": "3045#67890"}, "registry_id", "only letters, digits"),
    ],
    ids=["pl-vat-checksum", "lt-vat-for-pl", "vat-garbage", "pl-regon-checksum", "ee-registry-code", "lt-bad-chars"],
)
def test_invalid_numbers_are_refused_with_the_reason_next_to_the_field(client, login, db, fields, field, reason):
    login(client)
    response = post_form(client, "/organisations/new", {**ORG_FORM, **fields})
    assert response.status_code == 422
    html = page(response)
    error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', html)
    assert error, html
    assert reason in error.group(1)
    assert 'value="Warsaw AI Lab"' in html  # the form keeps what was typed
    assert count(db, Organisation) == 0
    assert count(db, OrganisationMembership) == 0


def test_vat_number_without_country_prefix_gets_the_organisations_prefix(client, login, db):
    login(client)
    assert post_form(client, "/organisations/new", {**ORG_FORM, "vat_number": "5260250274"}).status_code == 302
    assert db.exec(select(Organisation.vat_number)).one() == "PL5260250274"


def test_estonian_registry_code_is_validated_and_lithuanian_is_accepted_as_typed(client, login, db):
    login(client)
    estonian = {**ORG_FORM, "name": "Tallinn Robotics OU", "country": "EE", "registry_id": "1453 2901"}
    assert post_form(client, "/organisations/new", estonian).status_code == 302
    # python-stdnum has no validator for Lithuanian company codes: accepted, only normalised
    lithuanian = {**ORG_FORM, "name": "Vilnius Vision UAB", "country": "LT", "registry_id": "304 567 890"}
    assert post_form(client, "/organisations/new", lithuanian).status_code == 302
    rows = dict(db.exec(select(Organisation.country, Organisation.registry_id)).all())
    assert rows == {"EE": "14532901", "LT": "304567890"}


def test_duplicate_registry_number_is_refused(client, login, db):
    login(client)
    estonian = {**ORG_FORM, "name": "Tallinn Robotics OU", "country": "EE", "registry_id": "14532901"}
    assert post_form(client, "/organisations/new", estonian).status_code == 302

    other = login(client.application.test_client())
    response = post_form(client, "/organisations/new", {**estonian, "name": "Copycat OU", "registry_id": "14532901 "})
    assert response.status_code == 422
    assert "already registered" in page(response)
    assert count(db, Organisation) == 1
    # the same number in another country is another organisation
    services.create_organisation(db, other, name="Vilnius Twin UAB", kind="sme", country="LT", registry_id="14532901")
    assert count(db, Organisation) == 2


# --- projects ------------------------------------------------------------------------------------------


@pytest.fixture
def team(app: Flask, db: Session, login, settings: Settings) -> SimpleNamespace:
    """A PI with a project, and a helper to add members through invitations."""
    owner_client = app.test_client()
    owner = login(owner_client, given_name="Petra", family_name="Principal")
    org = services.create_organisation(db, owner, name="Riga Lab", kind="university", country="LV")
    project = services.create_project(db, owner, org, title="Baltic LLM")

    def add(role: str, **claims: Any) -> tuple[User, FlaskClient]:
        client = app.test_client()
        user = login(client, **claims)
        _inv, link = services.invite_member(db, settings, owner, project, email=user.email or "", role=role)
        services.accept_invitation(db, user, link.rsplit("/", 1)[1])
        return user, client

    return SimpleNamespace(owner=owner, owner_client=owner_client, org=org, project=project, add=add)


def test_creator_of_a_project_becomes_its_pi_and_the_dashboard_lists_projects_with_roles(app, db, team):
    client = team.owner_client
    response = post_form(
        client, f"/organisations/{team.org.id}/projects/new", {"title": "  Speech for Latvian ", "description": "ASR"}
    )
    assert response.status_code == 302
    project = db.exec(select(Project).where(Project.title == "Speech for Latvian")).one()
    assert response.headers["Location"] == f"/projects/{project.id}"
    assert members(db, project) == {team.owner.id: "pi"}

    _member, member_client = team.add("member")
    dashboard = page(client.get("/"))
    rows = re.findall(r"<tr>(.*?)</tr>", dashboard, flags=re.DOTALL)
    cells = [re.sub(r"<[^>]+>", "", r).split() for r in rows]
    assert any("Baltic" in c and "Principal" in c and c[-1] == "2" for c in cells), cells  # 2 members
    assert any("Speech" in c and "Principal" in c and c[-1] == "1" for c in cells), cells
    theirs = page(member_client.get("/"))
    assert "Baltic LLM" in theirs and "Member" in theirs
    assert "Speech for Latvian" not in theirs

    # a project member who is not in the organisation sees it, but cannot create projects for it
    assert member_client.get(f"/organisations/{team.org.id}").status_code == 200
    refused = post_form(member_client, f"/organisations/{team.org.id}/projects/new", {"title": "Side project"})
    assert refused.status_code == 403
    assert count(db, Project) == 2


def test_project_title_is_required(team, db):
    response = post_form(team.owner_client, f"/organisations/{team.org.id}/projects/new", {"title": "   "})
    assert response.status_code == 422
    assert "Enter a title." in page(response)
    assert count(db, Project) == 1


# --- invitations ---------------------------------------------------------------------------------------


@pytest.fixture
def make_mail_app(make_settings, mailbox: Mailbox) -> Iterator[Callable[..., Flask]]:
    """An app on the same database as ``app`` that sends its mail over SMTP to ``mailbox``."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        application = create_app(make_settings(mail_backend="smtp", smtp_port=mailbox.port, **overrides))
        apps.append(application)
        return application

    yield factory
    for application in apps:
        application.extensions["portal.engine"].dispose()


@pytest.fixture
def mail_team(make_mail_app, db: Session, login) -> SimpleNamespace:
    mail_app = make_mail_app(invitation_ttl_hours=1)
    owner_client = mail_app.test_client()
    owner = login(owner_client, given_name="Petra", family_name="Principal")
    org = services.create_organisation(db, owner, name="Riga Lab", kind="university", country="LV")
    project = services.create_project(db, owner, org, title="Baltic LLM")
    return SimpleNamespace(app=mail_app, owner=owner, owner_client=owner_client, org=org, project=project)


def invite(team: SimpleNamespace, email: str, role: str = "member"):
    return post_form(team.owner_client, f"/projects/{team.project.id}/invitations", {"email": email, "role": role})


def test_an_address_the_mail_server_refuses_is_told_and_no_invitation_is_left(mail_team, mailbox, db):
    response = invite(mail_team, "nobody@example.eu")
    assert response.status_code == 422
    assert "The mail server does not take mail for nobody@example.eu" in page(response)
    assert mailbox.messages == []
    assert db.exec(select(Invitation)).all() == []
    assert invite(mail_team, "somebody@example.eu").status_code == 302  # the next one goes out


def test_invitation_mail_link_works_once(mail_team, mailbox, db, login):
    response = invite(mail_team, "Ieva.Invitee@Example.EU", "manager")
    assert response.status_code == 302
    assert len(mailbox.messages) == 1
    message = mailbox.messages[0]
    assert message["To"] == "Ieva.Invitee@example.eu"
    assert "Baltic LLM" in message["Subject"]
    assert "Petra Principal" in message.get_content()
    link = mailbox.link(message)
    # the PI sees the link once, and the pending invitation in the list
    project_page = page(mail_team.owner_client.get(f"/projects/{mail_team.project.id}"))
    assert link in project_page and "Ieva.Invitee@example.eu" in project_page and "pending" in project_page
    invitation = db.exec(select(Invitation)).one()
    assert link.rsplit("/", 1)[1] not in invitation.digest  # only a digest is stored

    # someone else holding the link is not let in: it is bound to the invited address
    holder_client = mail_team.app.test_client()
    holder = login(holder_client)
    held = holder_client.get(link)
    assert held.status_code == 200 and "This invitation was sent to I…@example.eu" in page(held)
    assert "Accept and join" not in page(held)
    stolen = post_form(holder_client, link)
    assert stolen.status_code == 403 and "This invitation was sent to I…@example.eu" in page(stolen)
    assert holder.id not in members(db, mail_team.project)

    invitee_client = mail_team.app.test_client()
    invitee = login(invitee_client, email="ieva.invitee@example.eu")  # verified by the provider; case does not matter
    shown = invitee_client.get(link)
    assert shown.status_code == 200
    assert "Join Baltic LLM" in page(shown)
    accepted = post_form(invitee_client, link)
    assert accepted.status_code == 302
    assert accepted.headers["Location"] == f"/projects/{mail_team.project.id}"
    assert members(db, mail_team.project) == {mail_team.owner.id: "pi", invitee.id: "manager"}

    again = post_form(invitee_client, link)
    assert again.status_code == 410
    assert "already been accepted" in page(again)
    someone_else = mail_team.app.test_client()
    other = login(someone_else)
    refused = someone_else.get(link)
    assert refused.status_code == 410
    assert "already been accepted" in page(refused)
    assert post_form(someone_else, link).status_code == 410
    assert other.id not in members(db, mail_team.project)
    assert someone_else.get("/invitations/not-a-real-token").status_code == 404


def test_expired_invitation_is_refused_with_a_clear_page(mail_team, mailbox, db, login):
    assert invite(mail_team, "late@example.eu").status_code == 302
    link = mailbox.link(mailbox.messages[0])
    invitee_client = mail_team.app.test_client()
    invitee = login(invitee_client)
    csrf_page = page(invitee_client.get("/account"))
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', csrf_page).group(1)

    with time_machine.travel(datetime.now(UTC) + timedelta(hours=2), tick=False):  # the link lived 1 hour
        shown = invitee_client.get(link)
        assert shown.status_code == 410
        assert "Invitation no longer valid" in page(shown)
        assert "has expired; ask the project for a new one" in page(shown)
        refused = invitee_client.post(link, data={"csrf_token": csrf})
        assert refused.status_code == 410
        assert "has expired" in page(refused)
        assert "expired" in page(mail_team.owner_client.get(f"/projects/{mail_team.project.id}"))
    assert invitee.id not in members(db, mail_team.project)
    assert db.exec(select(Invitation)).one().accepted_at is None


def test_revoked_invitation_is_refused(mail_team, mailbox, db, login):
    assert invite(mail_team, "withdrawn@example.eu").status_code == 302
    link = mailbox.link(mailbox.messages[0])
    invitation = db.exec(select(Invitation)).one()
    revoked = post_form(mail_team.owner_client, f"/projects/{mail_team.project.id}/invitations/{invitation.id}/revoke")
    assert revoked.status_code == 302
    invitee_client = mail_team.app.test_client()
    invitee = login(invitee_client)
    shown = invitee_client.get(link)
    assert shown.status_code == 410
    assert "withdrawn by the project" in page(shown)
    assert post_form(invitee_client, link).status_code == 410
    assert invitee.id not in members(db, mail_team.project)


def test_invalid_invitation_is_refused_and_sends_nothing(mail_team, mailbox, db):
    response = invite(mail_team, "not an address")
    assert response.status_code == 422
    assert re.search(r'<p class="error" id="email-error">[^<]+</p>', page(response))
    assert invite(mail_team, "boss@example.eu", "pi").status_code == 422  # the PI role is handed over, not invited
    assert mailbox.messages == []
    assert count(db, Invitation) == 0


# --- members, leaving and the PI role ------------------------------------------------------------------


def test_a_member_can_leave_but_the_pi_cannot(team, db):
    _member, member_client = team.add("member")
    response = post_form(member_client, f"/projects/{team.project.id}/leave", page=f"/projects/{team.project.id}")
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert members(db, team.project) == {team.owner.id: "pi"}
    assert member_client.get(f"/projects/{team.project.id}").status_code == 404

    refused = post_form(team.owner_client, f"/projects/{team.project.id}/leave")
    assert refused.status_code == 409
    assert "hand the PI role to another member first" in page(refused)
    # nor through the remove button on oneself
    assert (
        post_form(team.owner_client, f"/projects/{team.project.id}/members/{team.owner.id}/remove").status_code == 409
    )
    assert members(db, team.project) == {team.owner.id: "pi"}


def test_managers_and_the_pi_remove_members_but_nobody_removes_the_pi(team, db):
    manager, manager_client = team.add("manager")
    member, _ = team.add("member")
    other, _ = team.add("member")
    p = team.project.id
    assert post_form(manager_client, f"/projects/{p}/members/{team.owner.id}/remove").status_code == 409
    assert post_form(manager_client, f"/projects/{p}/members/{member.id}/remove").status_code == 302
    assert post_form(team.owner_client, f"/projects/{p}/members/{other.id}/remove").status_code == 302
    assert post_form(team.owner_client, f"/projects/{p}/members/{other.id}/remove").status_code == 404  # gone
    assert members(db, team.project) == {team.owner.id: "pi", manager.id: "manager"}


def test_handing_over_the_pi_role(team, db):
    member, member_client = team.add("member")
    p = team.project.id
    assert (
        post_form(team.owner_client, f"/projects/{p}/members/{team.owner.id}/role", {"role": "member"}).status_code
        == 409
    )
    response = post_form(team.owner_client, f"/projects/{p}/members/{member.id}/role", {"role": "pi"})
    assert response.status_code == 302
    assert members(db, team.project) == {team.owner.id: "manager", member.id: "pi"}
    # the former PI, now a manager, may leave; the new PI may not
    assert post_form(member_client, f"/projects/{p}/leave").status_code == 409
    assert post_form(team.owner_client, f"/projects/{p}/leave").status_code == 302
    assert members(db, team.project) == {member.id: "pi"}


def test_htmx_role_change_and_removal_answer_with_the_members_partial(team, db):
    member, _ = team.add("member", given_name="Marta", family_name="Member")
    p = team.project.id
    htmx = {"HX-Request": "true"}
    changed = post_form(team.owner_client, f"/projects/{p}/members/{member.id}/role", {"role": "manager"}, headers=htmx)
    assert changed.status_code == 200
    html = page(changed).strip()
    assert html.startswith('<div id="members-table">'), html[:200]
    assert "<html" not in html and "<nav" not in html
    assert "The member&#39;s role is changed." in html or "The member's role is changed." in html
    assert re.search(r"Marta Member</td>\s*<td[^>]*>Manager</td>", html), html
    assert members(db, team.project)[member.id] == "manager"

    removed = post_form(team.owner_client, f"/projects/{p}/members/{member.id}/remove", headers=htmx)
    assert removed.status_code == 200
    html = page(removed).strip()
    assert html.startswith('<div id="members-table">') and "<html" not in html
    assert "Marta Member" not in html and "Petra Principal" in html
    assert members(db, team.project) == {team.owner.id: "pi"}


# --- the worker ----------------------------------------------------------------------------------------


def test_purge_deletes_only_unaccepted_invitations_expired_over_90_days(db, login, settings, team):
    now = datetime.now(UTC)
    ttl = timedelta(hours=settings.invitation_ttl_hours)

    def invite_at(expiry_age: timedelta, email: str) -> tuple[Invitation, str]:
        """An invitation whose expiry lies ``expiry_age`` in the past."""
        with time_machine.travel(now - expiry_age - ttl, tick=False):
            invitation, link = services.invite_member(
                db, settings, team.owner, team.project, email=email, role="member"
            )
        return invitation, link.rsplit("/", 1)[1]

    invite_at(timedelta(days=91), "stale@example.eu")
    stale_revoked, _ = invite_at(timedelta(days=120), "revoked@example.eu")
    with time_machine.travel(now - timedelta(days=120), tick=False):
        services.revoke_invitation(db, team.owner, team.project, stale_revoked.id)
    invite_at(timedelta(days=89), "recent@example.eu")
    joiner, _ = team.add("member")  # (adds an accepted, unexpired invitation of its own)
    _accepted, token = invite_at(timedelta(days=200), joiner.email or "")
    with time_machine.travel(now - timedelta(days=200) - ttl / 2, tick=False):
        services.accept_invitation(db, joiner, token)
    services.invite_member(db, settings, team.owner, team.project, email="new@example.eu", role="member")

    assert purge_stale_invitations(db, settings) == 2
    db.expire_all()
    left = {i.email for i in db.exec(select(Invitation))}
    assert "stale@example.eu" not in left and "revoked@example.eu" not in left
    assert {"recent@example.eu", joiner.email, "new@example.eu"} <= left
    assert len(db.exec(select(Invitation)).all()) == 4  # and the joiner's own accepted invitation
    assert purge_stale_invitations(db, settings) == 0
    assert members(db, team.project)[joiner.id] == ProjectRole.MEMBER
