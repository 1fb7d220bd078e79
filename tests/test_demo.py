"""The demo's data: what a newcomer sees after ``scripts/demo``, seeded through the real services."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, select

from portal.classroom.models import Course
from portal.db import make_engine
from portal.demo import demo_settings, seed_demo_data
from portal.ledger.models import Allocation
from portal.ledger.services import balance_mismatches
from portal.market.models import Offering
from portal.migrations import upgrade
from portal.projects.models import Project


def test_the_demo_seeds_projects_allocations_offerings_and_a_course_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
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
