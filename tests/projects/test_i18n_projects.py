"""The dashboard, project, organisation, account, inbox, users, audit log and reports pages in Polish and Estonian:
each answers in the reader's language with no English message of theirs left, names roles, kinds, states and
levels in the reader's words (never the stored values) and writes dates the locale's way."""

from __future__ import annotations

import html
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session

from portal import formatting
from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.notifications.services import notify
from portal.projects import services as projects
from portal.projects.models import Invitation
from tests import i18n_checks
from tests.conftest import post_form

#: The files whose messages these pages show (babel.cfg lists them).
OWN_FILES = re.compile(
    r"^portal/((projects|identity|audit)/(views|forms)\.py|reports/(views|charts)\.py"
    r"|templates/(projects|notifications|audit|reports)/|templates/identity/(account|users|refused)\.html)"
)
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]")

WORDS = {
    "pl": {
        "your_projects": "Twoje projekty",
        "pi": "Kierownik projektu",
        "university": "Uczelnia lub instytut badawczy",
        "org_admin": "Administrator",
        "members": "Członkowie",
        "invite": "Zaproś członka",
        "manager": "Menedżer",
        "pending": "oczekuje",
        "registry": "Numer rejestrowy",
        "verified": "Zweryfikowano",
        "identities": "Powiązane tożsamości",
        "level": "średni",
        "lifetime": "Każde logowanie trwa najwyżej 12 godzin.",
        "inbox_hint": "Tu znajdziesz wszystko, co portal wysłał Ci e-mailem.",
        "mark_read": "Oznacz jako przeczytane",
        "role_granted": "Nadano rolę",
        "org_verified": "Zweryfikowano organizację",
        "users_object": "użytkownicy",
        "factory_admin": "administrator",
        "saved": "Projekt został zapisany.",
        "country": "Polska",
        "capacity_table": "Pula, przydziały i zużycie",
        "share_of_use": "Udział w zużyciu",
    },
    "et": {
        "your_projects": "Teie projektid",
        "pi": "Projektijuht",
        "university": "Ülikool või teadusasutus",
        "org_admin": "Administraator",
        "members": "Liikmed",
        "invite": "Kutsu liige",
        "manager": "Haldur",
        "pending": "ootel",
        "registry": "Registrikood",
        "verified": "Kinnitatud",
        "identities": "Seotud identiteedid",
        "level": "märkimisväärne",
        "lifetime": "Iga sisselogimine kestab kõige rohkem 12 tundi.",
        "inbox_hint": "Siin hoitakse kõike, mida portaal teile e-postiga teatas.",
        "mark_read": "Märgi loetuks",
        "role_granted": "Roll antud",
        "org_verified": "Organisatsioon kinnitatud",
        "users_object": "kasutajad",
        "factory_admin": "administraator",
        "saved": "Projekt on salvestatud.",
        "country": "Poola",
        "capacity_table": "Maht, eraldatud ja kasutatud",
        "share_of_use": "Osa kasutusest",
    },
}


def in_language(app: Flask, language: str) -> FlaskClient:
    """A browser whose ``Accept-Language`` asks for ``language`` (its user has chosen none on the account)."""
    browser = app.test_client()
    browser.environ_base["HTTP_ACCEPT_LANGUAGE"] = language
    return browser


def english_left(page: str, language: str) -> list[str]:
    return i18n_checks.english_left(page, language, OWN_FILES)


def page_in(browser: FlaskClient, path: str, language: str) -> str:
    response = browser.get(path)
    assert response.status_code == 200, (path, response.status_code)
    page = html.unescape(response.get_data(as_text=True))
    assert f'<html lang="{language}">' in page, path
    words = re.sub(r'\s(href|action|hx-[a-z]+|id|for|name|value|class|data-[a-z]+)="[^"]*"', "", page)  # not URLs, ids
    assert not english_left(words, language), (path, english_left(words, language))
    return page


@pytest.mark.parametrize("language", ["pl", "et"])
def test_a_pis_and_an_admins_pages_speak_the_readers_language(
    app: Flask, db: Session, login, settings, language: str
) -> None:
    words = WORDS[language]
    browser = in_language(app, language)
    me = login(browser, given_name="Paula", family_name="Principal")
    grant_role(db, None, me, FactoryRole.ADMIN, reason="test setup")
    org = projects.create_organisation(db, me, name="Baltic Speech Lab", kind="university", country="PL")
    projects.verify_organisation(db, me, org, reason="Registry and VAT number checked")
    project = projects.create_project(db, me, org, title="Speech models")
    invitation, _link = projects.invite_member(db, settings, me, project, email="guest@example.eu", role="manager")
    notify(db, settings, me, subject="Welcome aboard", body="Your project is ready.", link=f"/projects/{project.id}")
    db.commit()

    dashboard = page_in(browser, "/", language)
    assert words["your_projects"] in dashboard and words["pi"] in dashboard
    assert f"({words['university']}, PL) · {words['org_admin']}" in dashboard
    assert "· admin<" not in dashboard and "university" not in dashboard

    project_page = page_in(browser, f"/projects/{project.id}", language)
    assert words["members"] in project_page and words["invite"] in project_page
    expires = formatting.datetime(db.get(Invitation, invitation.id).expires_at, locale=language)
    row = re.search(r"<tr><td>guest@example\.eu</td>(.*?)</tr>", project_page, re.S)
    assert row, project_page
    assert words["manager"] in row.group(1) and words["pending"] in row.group(1) and expires in row.group(1)
    assert ">pending<" not in project_page and ">manager<" not in project_page

    organisation = page_in(browser, f"/organisations/{org.id}", language)
    assert words["registry"] in organisation and words["verified"] in organisation
    assert formatting.date(db.get(type(org), org.id).verified_at, locale=language) in organisation

    assert settings.session_lifetime_hours == 12  # the plural form below
    account = page_in(browser, "/account", language)
    assert words["identities"] in account and words["lifetime"] in account
    assert f">{words['level']}</strong>" in account and ">substantial<" not in account

    inbox = page_in(browser, "/inbox", language)
    assert words["inbox_hint"] in inbox and words["mark_read"] in inbox and "Welcome aboard" in inbox

    audit = page_in(browser, "/admin/audit", language)
    assert words["role_granted"] in audit and words["org_verified"] in audit and words["users_object"] in audit
    assert "Role granted" not in audit and "role_granted" not in audit.replace('value="role_granted"', "")

    users = page_in(browser, "/admin/users", language)
    assert f'<span class="role">{words["factory_admin"]}</span>' in users

    new_organisation = page_in(browser, "/organisations/new", language)
    assert f'<option value="PL">{words["country"]}</option>' in new_organisation

    saved = post_form(
        browser,
        f"/projects/{project.id}/edit",
        {"title": "Speech models II", "description": ""},
        page=f"/projects/{project.id}/edit",
        follow_redirects=True,
    )
    assert words["saved"] in html.unescape(saved.get_data(as_text=True))

    reports = page_in(browser, "/reports", language)
    assert words["capacity_table"] in reports and words["share_of_use"] in reports
