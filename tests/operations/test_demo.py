"""The demo's data: what a newcomer sees after ``scripts/demo``, seeded through the real services."""

from __future__ import annotations

import html
from pathlib import Path

import requests
import sqlalchemy as sa
from portal_standin.demo import DEMO_PROVIDERS, demo_settings, seed_demo_data
from portal_standin.devstack import free_port
from sqlmodel import Session, select

from portal.classroom.models import Course
from portal.db import make_engine
from portal.ledger.models import Allocation
from portal.ledger.services import balance_mismatches
from portal.market.models import Offering
from portal.migrations import upgrade
from portal.projects.models import Project


def test_the_demo_seeds_projects_allocations_offerings_and_a_course_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PORTAL_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("PORTAL_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    settings = demo_settings(5000, 9400)
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine, expire_on_commit=False) as db:
            seed_demo_data(db, settings)
            seed_demo_data(db, settings)  # a restarted demo keeps its data and adds nothing

            titles = set(db.exec(select(Project.title)).all())
            assert {"Polish LLM pre-training", "Lithuanian speech recognition", "Retail shelf vision"} <= titles
            assert db.exec(select(sa.func.count()).select_from(Allocation)).one() == 5  # four + the course's
            assert db.exec(select(sa.func.count()).select_from(Offering)).one() == 4
            course = db.exec(select(Course)).one()
            assert course.title == "Dask for data science (demo course)" and len(course.join_code) >= 8
            assert balance_mismatches(db) == []
    finally:
        engine.dispose()


def test_the_demo_providers_login_page_names_each_person_and_what_they_are(tmp_path: Path) -> None:
    """A newcomer on a provider's page picks a person by name and role, not by an opaque subject."""
    for provider in DEMO_PROVIDERS:
        process = provider.process(free_port(), tmp_path / f"oidc-{provider.name}.log").start()
        try:
            authorize = f"{process.url}/oauth2/authorize"
            query = {
                "client_id": "portal-demo",
                "redirect_uri": "http://127.0.0.1:5000/login/callback",
                "response_type": "code",
                "scope": "openid",
                "nonce": "n",
                "state": "s",
            }
            page = requests.get(authorize, params=query, timeout=10)
            assert page.status_code == 200
            text = html.unescape(page.text)
            for person in provider.people:
                claims = person.claims
                name = f"{claims['given_name']} {claims['family_name']}"
                row = text[text.index(f'value="{claims["sub"]}"') :].split("</tr>")[0]
                assert name in row and person.who in row and claims["sub"] in row
            first = provider.people[0].claims["sub"]
            chosen = requests.post(authorize, params=query, data={"sub": first}, allow_redirects=False, timeout=10)
            assert chosen.status_code == 302 and "code=" in chosen.headers["Location"]
        finally:
            process.stop()
    who = {person.who for provider in DEMO_PROVIDERS for person in provider.people}
    assert any(w.startswith("PI ") for w in who) and any(w.startswith("Factory admin") for w in who)
    assert any(w.startswith("Student") for w in who) and any(w.startswith("Startup founder") for w in who)
