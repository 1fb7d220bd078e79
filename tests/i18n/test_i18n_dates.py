"""Issue 14, dates: wherever a page (or a message a page shows) gives a day, it is written the reader's way
(``5 mar 2026`` in Polish, ``2026. gada 5. marts`` in Latvian, ``5. märts 2026`` in Estonian; Lithuanian's own
form is ISO's), never as the database keeps it: the calls' pages (open, closes, next cut-off, decision due), and
the warning that an earlier award owes its report."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flask import Flask
from sqlmodel import Session

from portal import formatting
from portal.grants import services as grants
from portal.messages import N_, Message
from portal.projects import services as projects
from tests.factories import login_of, person
from tests.grants.test_research_outputs import ended, period_of
from tests.grants_world import make_call, plan_capacity_from_today
from tests.i18n.test_i18n_journeys import LANGUAGES, browser, read
from tests.ledger_world import make_world

#: The fixture of tests/grants/test_research_outputs.py: an award that ended months ago, its PI logged in.
__all__ = ["ended"]


def _days_on(page: str, days, language: str) -> None:
    for day in days:
        shown = formatting.date(day, locale=language)
        assert shown in page, (day, shown)
        if shown != day.isoformat():  # Lithuanian writes a day as ISO does
            assert day.isoformat() not in page, day


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_calls_pages_write_their_days_the_readers_way(app: Flask, db: Session, login, language: str) -> None:
    world = make_world(db)
    plan_capacity_from_today(db, world.gpu)
    manager = person(db, "Mona")
    call = make_call(db, world.gpu.id, manager, title="Baltic spring call")
    client = browser(app, language)
    pi = login(client, given_name="Paula")
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    projects.create_project(db, pi, org, title="Baltic speech")

    cutoff = grants.next_cutoff(call, datetime.now(UTC))
    due = grants.decision_due(call, cutoff)
    days = [grants.local_day(call.opens_at), grants.closing_day(call), cutoff, due]
    _days_on(read(client.get("/calls"), language), days[1:], language)
    _days_on(read(client.get(f"/calls/{call.id}"), language), days, language)


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_report_owed_says_when_the_award_ended_the_readers_way(ended, db: Session, language: str) -> None:
    w = ended
    w.pi_client.environ_base["HTTP_ACCEPT_LANGUAGE"] = language
    again = grants.start_application(db, w.pi, login_of(w.pi), call=w.call, project=w.project, title="Second run")
    _starts, ends_at = period_of(db, w.application)
    editor = read(w.pi_client.get(f"/applications/{again.id}/edit"), language)
    missing = Message(
        N_("The final report on “%(title)s” is missing: its allocations ended on %(ended)s."),
        title=w.application.title,
        ended=ends_at.date(),
    )
    assert missing.render(language) in editor and missing.render(language) != missing.render("en")
    _days_on(editor, [ends_at.date()], language)
