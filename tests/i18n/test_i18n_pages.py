"""Thirty-odd pages of the portal in each of its five languages, in a real browser: every page answers in the
language chosen on the account (``<html lang>``), axe finds no serious or critical problem in any of them, and long
Lithuanian, Latvian and Estonian words do not push a page sideways on a laptop's screen.

The world is tests/projects/test_authorisation.py's (a project with allocations, a notebook, an award with its review, a
course, a paid order with its invoice, a research output and a progress report), seen by its owner, who is also
a factory admin and finance officer here so that the operators' pages are among those checked."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from portal_standin.devstack import patience
from sqlmodel import Session, select

from portal.identity.models import ExternalIdentity, FactoryRole, User
from portal.identity.services import grant_role
from portal.projects import services as projects
from tests.journeys.test_browser import AXE, TIMEOUT_MS, browser, log_in, portal_url
from tests.projects.test_authorisation import SECRET_ABSTRACT, SECRET_APPLICATION, SECRET_CITATION, SECRET_COURSE, world

__all__ = ["browser", "portal_url", "world"]  # fixtures used by name

pytestmark = pytest.mark.browser

LANGUAGES = ("en", "pl", "lt", "lv", "et")
#: What the people of the world wrote (it stays as written in every language).
WRITTEN_BY_PEOPLE = [
    "Nobody else may read this.",
    "Open call for everyone",
    "Secret justification",
    "Feasible.",
    "Work plan",
    "Public H100 hours",
    "Secret GPU hours",
    "Second GPU hours",
    "Outsider's own project",
    "Hours of",
    SECRET_ABSTRACT,
    SECRET_APPLICATION,
    SECRET_CITATION,
    SECRET_COURSE,
]


def pages_of(w: SimpleNamespace, draft_id: int) -> list[str]:
    p, o = w.project.id, w.org.id
    return [
        "/",
        "/account",
        "/inbox",
        "/calls",
        f"/calls/{w.call.id}",
        f"/calls/{w.call.id}/manage",
        f"/applications/{w.application.id}",
        f"/applications/{draft_id}/edit",
        "/reviews",
        f"/progress-reports/{w.progress_report.id}",
        "/admin/calls/new",
        f"/organisations/{o}",
        "/organisations/new",
        f"/organisations/{o}/billing",
        f"/projects/{p}",
        f"/projects/{p}/edit",
        f"/projects/{p}/outputs/new",
        f"/projects/{p}/allocations/{w.allocation.id}",
        f"/projects/{p}/allocations/{w.allocation.id}/entries",
        f"/projects/{p}/notebooks",
        f"/notebooks/{w.notebook.id}",
        "/notebooks",
        "/market",
        f"/market/offerings/{w.offering.id}/order",
        f"/market/orders/{w.order.id}",
        "/market/purchases",
        f"/admin/offerings/{w.offering.id}",
        "/courses",
        "/courses/new",
        f"/courses/{w.course.id}",
        "/courses/join",
        "/admin/audit",
        "/reports",
        "/reports/revenue",
        "/reports/calls",
    ]


def axe_problems(page: Any, where: str) -> list[str]:
    """tests/journeys/test_browser.py's ``assert_accessible`` (the same rules), asking axe for its violations only: the
    details of what passed are not collected, which makes a run several times faster."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    result = page.evaluate(
        "axe.run(document, {resultTypes: ['violations'], runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa',"
        " 'wcag21a', 'wcag21aa', 'best-practice']}})"
    )
    return [
        f"{where}: {v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


#: English words that a sentence of the portal's own almost always has, and a translated one never.
# ("to" and "is" are left out: Polish and Latvian "to", Lithuanian "iš" and the like would read as English.)
ENGLISH = re.compile(r"\b(?:the|your|you|this|with|from|which|will|have|has|are|of|and)\b", re.IGNORECASE)


def english_left(page: Any, where: str, written_by_people: list[str]) -> list[str]:
    """Lines of the page's visible text that read as English sentences, once what people wrote (titles, names,
    descriptions of the world) is taken out."""
    text = page.inner_text("body")
    for written in written_by_people:
        text = text.replace(written, " ")
    found = []
    for line in text.splitlines():
        words = ENGLISH.findall(line)
        if len(words) >= 2:
            found.append(f"{where}: English left: {line.strip()[:160]!r}")
    return found


#: The innermost elements that reach past the window's right edge (what makes a page scroll sideways).
WIDEST = """
[...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
  .filter(e => ![...e.children].some(c => c.getBoundingClientRect().right > window.innerWidth + 1))
  .slice(0, 3)
  .map(e => e.tagName.toLowerCase() + (e.className ? '.' + String(e.className).split(' ').join('.') : '')
            + ' "' + (e.textContent || '').trim().slice(0, 40) + '"')
  .join('; ')
"""


def speak(db: Session, user: User, language: str) -> None:
    db.expire_all()
    fresh = db.get(User, user.id)
    assert fresh is not None
    fresh.preferred_language = language
    db.add(fresh)
    db.commit()


def test_thirty_pages_in_five_languages_are_accessible_and_fit_the_screen(
    portal_url: str, browser: Any, oidc_provider, db: Session, world: SimpleNamespace
) -> None:
    owner = world.owner
    for role in (FactoryRole.ADMIN, FactoryRole.FINANCE):
        grant_role(db, None, owner, role, reason="test setup")
    projects.verify_organisation(db, owner, world.org, reason="test setup")
    draft_project = projects.create_project(db, owner, world.org, title="Draft in five languages")
    from portal.grants import services as grants
    from tests.grants_world import login_of

    draft = grants.start_application(
        db, owner, login_of(owner), call=world.call, project=draft_project, title="Ilgas lietuviškas pavadinimas"
    )
    identity = db.exec(select(ExternalIdentity).where(ExternalIdentity.user_id == owner.id)).one()
    pages = pages_of(world, draft.id)
    assert len(pages) >= 30

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(patience(TIMEOUT_MS))
    context.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())
    page = context.new_page()
    problems: list[str] = []
    try:
        log_in(page, portal_url, oidc_provider, "eIDAS", identity.subject)
        for language in LANGUAGES:
            speak(db, owner, language)
            for path in pages:
                response = page.goto(f"{portal_url}{path}")
                where = f"{language} {path}"
                if response is None or response.status != 200:
                    problems.append(f"{where}: {response.status if response else 'no answer'}")
                    continue
                if page.locator("html").get_attribute("lang") != language:
                    problems.append(f"{where}: <html lang={page.locator('html').get_attribute('lang')!r}>")
                wide = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                if wide > 0:
                    problems.append(f"{where}: {wide} px wider than the window, by {page.evaluate(WIDEST)}")
                problems += axe_problems(page, where)
                if language != "en":
                    problems += english_left(page, where, WRITTEN_BY_PEOPLE)
    finally:
        context.close()
    assert not problems, f"{len(problems)} problems on {len(pages) * len(LANGUAGES)} pages:\n" + "\n".join(problems)
