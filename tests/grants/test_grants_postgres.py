"""Concurrent decisions on PostgreSQL: the awards of a call never exceed its budget."""

from __future__ import annotations

import pytest
from sqlmodel import Session, col, func, select

from portal.grants import services as grants
from portal.grants.models import Application, ApplicationState, CallBudget
from portal.ledger.models import Allocation
from portal.projects import services as projects
from tests.grants.test_grants import SETTINGS, through_review
from tests.grants_world import complete_draft, make_grant_world
from tests.ledger.test_ledger_postgres import all_at_once, engine  # noqa: F401  (the migrated PostgreSQL engine)
from tests.ledger_world import HOUR, person

pytestmark = pytest.mark.postgres
APPLICATIONS = 12


def test_concurrent_acceptances_never_award_more_than_the_budget(engine):  # noqa: F811
    with Session(engine, expire_on_commit=False) as db:
        g = make_grant_world(db, budget_hours=500, max_hours=400)
        ranked = []
        for i in range(APPLICATIONS):
            g.pi = person(db, f"Pi{i}")
            org = projects.create_organisation(db, g.pi, name=f"Uni {i}", kind="university", country="PL")
            g.project = projects.create_project(db, g.pi, org, title=f"Project {i}")
            application = complete_draft(db, g, hours=100)
            through_review(db, g, application)
            grants.request_reply(db, SETTINGS, g.manager, application)
            grants.rank(db, SETTINGS, g.manager, application)
            ranked.append(application.id)

    def accept(i: int):
        with Session(engine, expire_on_commit=False) as db:
            application = db.get(Application, ranked[i])
            return grants.decide_accept(db, SETTINGS, g.manager, application, awarded={g.ledger.gpu.id: 100 * HOUR})

    results = all_at_once(APPLICATIONS, accept)
    accepted = [r for r in results if isinstance(r, Application)]
    refused = [r for r in results if isinstance(r, grants.BudgetExhausted)]
    assert (len(accepted), len(refused)) == (5, APPLICATIONS - 5), results
    with Session(engine) as db:
        budget = db.exec(select(CallBudget).where(CallBudget.call_id == g.call.id)).one()
        assert budget.awarded == budget.budget == 500 * HOUR
        states = db.exec(
            select(Application.state, func.count()).where(col(Application.id).in_(ranked)).group_by(Application.state)
        ).all()
        assert dict(states) == {ApplicationState.ACCEPTED: 5, ApplicationState.RANKED: APPLICATIONS - 5}
        opened = db.exec(select(func.sum(Allocation.credited)).where(Allocation.resource_id == g.ledger.gpu.id)).one()
        assert opened == 500 * HOUR
