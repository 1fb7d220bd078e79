"""The portal on PostgreSQL, the production database: a whole flow, and races that only a real server shows."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlmodel import Session, func, select

from portal import create_app
from portal.config import OIDCProvider
from portal.errors import DomainError
from portal.identity.models import User
from portal.identity.services import provision_user
from portal.migrations import upgrade
from portal.projects import services as projects
from portal.projects.models import Organisation, ProjectMembership
from tests.conftest import post_form

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def migrated_postgres(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture
def pg_app(make_settings, migrated_postgres):
    app = create_app(make_settings(database_url=migrated_postgres))
    yield app
    app.extensions["portal.engine"].dispose()


def test_login_organisation_project_and_invitation_on_postgresql(pg_app, login):
    anna, bob = pg_app.test_client(), pg_app.test_client()
    login(anna)
    response = post_form(
        anna,
        "/organisations/new",
        {
            "name": f"Uni {uuid.uuid4().hex[:6]}",
            "kind": "university",
            "country": "PL",
            "registry_id": "",
            "vat_number": "",
        },
    )
    assert response.status_code == 302
    org_id = int(response.headers["Location"].rsplit("/", 1)[1])
    response = post_form(anna, f"/organisations/{org_id}/projects/new", {"title": "LLM", "description": ""})
    assert response.status_code == 302
    project_path = response.headers["Location"]
    response = post_form(
        anna, f"{project_path}/invitations", {"email": "bob@example.eu", "role": "member"}, page=project_path
    )
    assert response.status_code == 302
    with anna.session_transaction() as flask_session:
        link = flask_session["new_invitation_link"]
    login(bob, email="bob@example.eu")  # the invitation is bound to the invited address
    token_path = link.split("127.0.0.1:5000", 1)[1]
    response = post_form(bob, token_path, page=token_path)
    assert response.status_code == 302
    assert "LLM" in bob.get("/").get_data(as_text=True)


EIDAS_PROVIDER = OIDCProvider(name="eidas", label="eIDAS", discovery_url="https://x", client_id="c")


def _people(db: Session, n: int) -> list[User]:
    return [
        provision_user(
            db,
            provider=EIDAS_PROVIDER,
            subject=f"race-{uuid.uuid4().hex}",
            display_name=f"P{i}",
            email=f"p{i}-{uuid.uuid4().hex[:8]}@example.eu",
        )
        for i in range(n)
    ]


def run_together(*calls):
    """Start the calls at the same moment in threads; return each one's result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def runner(i, call):
        barrier.wait()
        try:
            results[i] = call()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=runner, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_simultaneous_registrations_of_one_registry_number_make_one_organisation(pg_app):
    engine = pg_app.extensions["portal.engine"]
    with Session(engine, expire_on_commit=False) as db:
        a, b = _people(db, 2)
    registry = "14532901"

    def register(user):
        with Session(engine, expire_on_commit=False) as db:
            return projects.create_organisation(
                db, user, name="Race OÜ", kind="sme", country="EE", registry_id=registry
            )

    results = run_together(lambda: register(a), lambda: register(b))
    created = [r for r in results if isinstance(r, Organisation)]
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(created) == 1 and len(refused) == 1, results
    with Session(engine) as db:
        count = db.exec(
            select(func.count()).select_from(Organisation).where(Organisation.registry_id == registry)
        ).one()
    assert count == 1


def test_an_invitation_link_used_by_two_people_at_once_admits_only_one(pg_app):
    engine = pg_app.extensions["portal.engine"]
    settings = pg_app.extensions["portal.settings"]
    with Session(engine, expire_on_commit=False) as db:
        pi, x = _people(db, 2)
        org = projects.create_organisation(db, pi, name="Race Uni", kind="university", country="LT")

    def accept(user, token):
        with Session(engine, expire_on_commit=False) as db:
            return projects.accept_invitation(db, user, token)

    for round_number in range(10):  # a race shows only sometimes: try it repeatedly
        with Session(engine, expire_on_commit=False) as db:
            project = projects.create_project(db, pi, org, title=f"Race project {round_number}")
            _inv, link = projects.invite_member(db, settings, pi, project, email=x.email, role="member")
        token = link.rsplit("/", 1)[1]
        # the invitee in two windows at once (anyone else holding the link is refused: tests/projects/test_projects.py)
        results = run_together(lambda t=token: accept(x, t), lambda t=token: accept(x, t))
        assert sum(isinstance(r, DomainError) for r in results) == 1, results
        with Session(engine) as db:
            members = db.exec(
                select(func.count()).select_from(ProjectMembership).where(ProjectMembership.project_id == project.id)
            ).one()
        assert members == 2  # the PI and the invitee, once
