"""Permission checks read each role once per transaction (a page asks several questions about the same roles),
and never answer from what they read before a change: not after a write of the same session, flushed or not,
through a model or a statement, and not in the next transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from flask import Flask
from sqlmodel import Session, delete, update

from portal.authz import Action, allowed, factory_roles, organisation_role, project_role
from portal.identity.models import FactoryRole, RoleGrant
from portal.projects import services as projects
from portal.projects.models import OrganisationMembership, OrganisationRole, ProjectMembership, ProjectRole
from tests.factories import HOUR, Q1, at, make_site, open_allocation, person


@contextmanager
def sent_statements(app: Flask) -> Iterator[list[tuple[str, str]]]:
    """The SQL statements sent meanwhile, each with its parameters."""
    sent: list[tuple[str, str]] = []

    def record(_conn, _cursor, statement, parameters, *_args) -> None:
        sent.append((statement, repr(parameters)))

    engine = app.extensions["portal.engine"]
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_an_organisation_role_changed_in_the_same_session_is_seen_at_once(app: Flask, db: Session) -> None:
    owner, newcomer = person(db, "Olga"), person(db, "Oskar")
    org = projects.create_organisation(db, owner, name="Riga Roles", kind="university", country="LV")
    assert organisation_role(db, newcomer, org.id) is None
    assert not allowed(db, newcomer, Action.VIEW_ORGANISATION, org)

    membership = OrganisationMembership(organisation_id=org.id, user_id=newcomer.id, role=OrganisationRole.MEMBER)
    db.add(membership)  # neither flushed nor committed: the check flushes it, as its query would
    assert organisation_role(db, newcomer, org.id) == OrganisationRole.MEMBER
    assert allowed(db, newcomer, Action.CREATE_PROJECT, org)
    assert not allowed(db, newcomer, Action.MANAGE_ORGANISATION, org)

    membership.role = OrganisationRole.ADMIN
    assert allowed(db, newcomer, Action.MANAGE_ORGANISATION, org)

    db.execute(
        update(OrganisationMembership)
        .where(OrganisationMembership.id == membership.id)
        .values(role=OrganisationRole.BILLING)
    )
    assert organisation_role(db, newcomer, org.id) == OrganisationRole.BILLING
    assert not allowed(db, newcomer, Action.MANAGE_ORGANISATION, org)

    db.rollback()  # none of it happened
    assert organisation_role(db, newcomer, org.id) is None
    assert not allowed(db, newcomer, Action.VIEW_ORGANISATION, org)


def test_project_and_factory_roles_changed_in_the_same_session_are_seen_at_once(app: Flask, db: Session) -> None:
    pi, member = person(db, "Pia"), person(db, "Mart")
    org = projects.create_organisation(db, pi, name="Tartu Roles", kind="university", country="EE")
    project = projects.create_project(db, pi, org, title="Roles")
    assert project_role(db, member, project) is None and factory_roles(db, member) == set()

    db.add(ProjectMembership(project_id=project.id, user_id=member.id, role=ProjectRole.MEMBER))
    db.add(RoleGrant(user_id=member.id, role=FactoryRole.FINANCE))
    assert project_role(db, member, project) == ProjectRole.MEMBER
    assert factory_roles(db, member) == {FactoryRole.FINANCE}
    assert not allowed(db, member, Action.EDIT_PROJECT, project)
    db.commit()

    projects.change_member_role(db, pi, project, member.id, ProjectRole.MANAGER)  # a service, which commits
    assert allowed(db, member, Action.EDIT_PROJECT, project)
    db.execute(delete(RoleGrant).where(RoleGrant.user_id == member.id))
    assert factory_roles(db, member) == set()
    assert not allowed(db, member, Action.VIEW_REVENUE_REPORTS)


def test_another_sessions_change_is_seen_in_the_next_transaction(app: Flask, db: Session) -> None:
    owner, newcomer = person(db, "Ilze"), person(db, "Ivo")
    org = projects.create_organisation(db, owner, name="Vilnius Roles", kind="sme", country="LT")
    assert organisation_role(db, newcomer, org.id) is None
    with Session(app.extensions["portal.engine"]) as elsewhere:  # another request, say
        elsewhere.add(OrganisationMembership(organisation_id=org.id, user_id=newcomer.id, role=OrganisationRole.ADMIN))
        elsewhere.commit()
    db.commit()  # this request's transaction ends; the next one reads again
    assert organisation_role(db, newcomer, org.id) == OrganisationRole.ADMIN


def test_one_request_asks_the_database_each_role_once(app: Flask, db: Session) -> None:
    owner = person(db, "Olev")
    org = projects.create_organisation(db, owner, name="Once Lab", kind="university", country="EE")
    project = projects.create_project(db, owner, org, title="Once")
    db.commit()
    with sent_statements(app) as sent:
        for action in (Action.VIEW_ORGANISATION, Action.MANAGE_ORGANISATION, Action.CREATE_PROJECT):
            assert allowed(db, owner, action, org)
        for action in (Action.VIEW_PROJECT, Action.EDIT_PROJECT, Action.MANAGE_MEMBERS):
            assert allowed(db, owner, action, project)
    reads = Counter(" ".join(statement.split()).split(" WHERE ")[0] for statement, _parameters in sent)
    assert reads == {
        "SELECT role_grants.role FROM role_grants": 1,
        "SELECT organisation_memberships.role FROM organisation_memberships": 1,
        "SELECT project_memberships.role FROM project_memberships": 1,
    }, sent


def test_the_pages_of_an_organisation_project_and_allocation_send_no_statement_twice(
    app: Flask, db: Session, login
) -> None:
    client = app.test_client()
    pi = login(client, given_name="Dace", family_name="Once")
    org = projects.create_organisation(db, pi, name="Daugavpils Lab", kind="university", country="LV")
    project = projects.create_project(db, pi, org, title="Twice")
    site = make_site(db, [Q1], capacity=10_000 * HOUR, code="once")
    allocation = open_allocation(db, project, site.gpu, 100 * HOUR, at(2030, 1, 1), at(2030, 4, 1), "Q1 award")
    pages = {
        "organisation": f"/organisations/{org.id}",
        "project": f"/projects/{project.id}",
        "allocation": f"/projects/{project.id}/allocations/{allocation.id}",
    }
    sent_by_page = {}
    for name, path in pages.items():
        assert client.get(path).status_code == 200  # warm: templates compiled
        with sent_statements(app) as sent:
            assert client.get(path).status_code == 200
        sent_by_page[name] = sent
        twice = [statement for statement, count in Counter(sent).items() if count > 1]
        assert not twice, (name, twice)
    # before the roles were read once per transaction the organisation's page read its admin's role four times
    assert len(sent_by_page["organisation"]) <= ORGANISATION_PAGE_STATEMENTS, sent_by_page["organisation"]
    assert len(sent_by_page["allocation"]) <= ALLOCATION_PAGE_STATEMENTS, sent_by_page["allocation"]


#: Upper bounds for one request (measured on SQLite with the test above: 6 and 9).
ORGANISATION_PAGE_STATEMENTS = 6
ALLOCATION_PAGE_STATEMENTS = 9
