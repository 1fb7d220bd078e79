"""Courses and notebooks in Latvian and Estonian: the join page, a teacher's course page, the student's page, the
notebook start form and a session page answer in the reader's language, with no English message of theirs left,
and their figures, dates and reasons written the locale's way, never as the database keeps them."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from portal_standin.devstack import free_port
from sqlmodel import Session

from portal import create_app, formatting
from portal.classroom import services as classroom
from portal.compute.services import check_spawn, hub_username
from portal.config import Settings
from portal.db import utcnow
from portal.ledger import services as ledger
from portal.ledger.models import ResourceKind
from portal.notebook_models import NotebookSession
from portal.projects.models import ProjectMembership, ProjectRole
from tests import i18n_checks
from tests.conftest import post_form
from tests.factories import cpu_project, open_now, plan_capacity_around_now, running_course
from tests.ledger_world import HOUR, make_world

#: The files whose messages these pages show (babel.cfg lists them).
OWN_FILES = re.compile(r"^portal/(classroom/(views|forms)\.py|compute/views\.py|templates/(classroom|compute)/)")
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]")

WORDS = {
    "lv": {
        "course_title": "Kursa nosaukums",
        "attending": "Kursi, kurus apmeklēju",
        "join_page": "Pievienoties un palaist piezīmju grāmatiņu",
        "join_hint": "Kodu vai saiti jums iedod pasniedzējs.",
        "code_label": "Kursa kods",
        "required": "Šis lauks ir obligāts.",
        "joined": "Jūs pievienojāties kursam.",
        "start": "Palaist piezīmju grāmatiņu",
        "hours_label": "Maksimālais ilgums (stundas)",
        "my_cap": "Mans limits",
        "state_open": "atvērts",
        "close": "Slēgt kursu",
        "student_row": "Sten Student",
        "active": "aktīvs",
        "used": "Izmantots",
        "cap": "Limits",
        "stopped_label": "apturēta: sasniegts jūsu kursa limits",
        "stopped": "Šī piezīmju grāmatiņa ir apturēta.",
        "cap_words": "Jūs izmantojāt visas kursa piešķirtās stundas, tāpēc portāls to apturēja.",
        "recently_stopped": "Nesen apturētās",
        "no_profile": "Šeit ar šo piešķīrumu nevar palaist nevienu profilu.",
        "needs_gpu": "Profilam 1 × H100, 8 cores, 64 GB vajag 1 H100 GPU, bet JupyterHub šeit palaiž",
        "no_gpu": "(tā GPU: nav)",
        "left": "atlikums {amount}",
        "no_answer": "Piezīmju grāmatiņu pakalpojums pašlaik neatbild; šī lapa netiks atjaunināta.",
        "starting": "tiek palaista",
        "running_for": "Darbības ilgums",
        "unavailable": "Piezīmju grāmatiņas nav pieejamas",
    },
    "et": {
        "course_title": "Kursuse pealkiri",
        "attending": "Kursused, kus osalen",
        "join_page": "Liitu ja käivita märkmik",
        "join_hint": "Koodi või lingi annab teile õpetaja.",
        "code_label": "Kursuse kood",
        "required": "See väli on kohustuslik.",
        "joined": "Liitusite kursusega.",
        "start": "Käivita märkmik",
        "hours_label": "Suurim kestus (tunnid)",
        "my_cap": "Minu piirang",
        "state_open": "avatud",
        "close": "Sulge kursus",
        "student_row": "Sten Student",
        "active": "aktiivne",
        "used": "Kasutatud",
        "cap": "Piirang",
        "stopped_label": "peatatud: teie kursuse piirang on täis",
        "stopped": "See märkmik on peatatud.",
        "cap_words": "Kasutasite ära kõik kursuse antud tunnid, seega portaal peatas selle.",
        "recently_stopped": "Hiljuti peatatud",
        "no_profile": "Selle eraldisega ei saa siin ühtegi profiili käivitada.",
        "needs_gpu": "Profiil 1 × H100, 8 cores, 64 GB vajab 1 H100 GPU, kuid JupyterHub käivitab siin",
        "no_gpu": "(selle GPU-d: puuduvad)",
        "left": "alles {amount}",
        "no_answer": "Märkmikuteenus praegu ei vasta; see leht ei uuene.",
        "starting": "käivitub",
        "running_for": "Töötanud",
        "unavailable": "Märkmikud pole saadaval",
    },
}
LANGUAGES = sorted(WORDS)


def in_language(app: Flask, language: str) -> FlaskClient:
    """A browser whose ``Accept-Language`` asks for ``language`` (its user has chosen none on the account)."""
    browser = app.test_client()
    browser.environ_base["HTTP_ACCEPT_LANGUAGE"] = language
    return browser


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def english_left(page: str, language: str) -> list[str]:
    return i18n_checks.english_left(page, language, OWN_FILES)


def assert_translated(page: str, language: str) -> None:
    assert f'<html lang="{language}">' in page
    assert not english_left(page, language), english_left(page, language)


def chart_of(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="course-usage-data">(.*?)</script>', page, re.S)
    assert found, "no chart data on the teacher's page"
    return json.loads(found.group(1))


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_course_from_the_join_page_to_a_stopped_notebook_speaks_the_readers_language(
    app: Flask, db: Session, settings: Settings, login, language: str
) -> None:
    words = WORDS[language]
    teacher_browser = in_language(app, language)
    teacher = login(teacher_browser, given_name="Tiina", family_name="Teacher")
    _world, _project, parent = cpu_project(db, teacher, hours=500, title="Teaching")
    form = text_of(teacher_browser.get("/courses/new"))
    left = words["left"].format(amount=formatting.quantity(500 * HOUR, ResourceKind.CPU, locale=language))
    assert words["course_title"] in form and f"Teaching · {parent.title} · {left}" in form
    assert_translated(form, language)
    course = running_course(db, settings, teacher, parent.id, title="Parallel Python")

    # the join page, and its form refusing an empty code
    student_browser = in_language(app, language)
    student = login(student_browser, given_name="Sten", family_name="Student")
    join = text_of(student_browser.get(f"/courses/join?code={course.join_code}"))
    assert words["join_page"] in join and words["join_hint"] in join and f">{words['code_label']}</label>" in join
    assert_translated(join, language)
    empty = post_form(student_browser, "/courses/join", {"code": ""}, page="/courses/join")
    assert empty.status_code == 422 and words["required"] in text_of(empty)
    assert_translated(text_of(empty), language)

    # the student's page, straight after joining
    joined = post_form(
        student_browser, "/courses/join", {"code": course.join_code}, page="/courses/join", follow_redirects=True
    )
    mine = text_of(joined)
    cap = formatting.quantity(10 * HOUR, ResourceKind.CPU, locale=language)
    assert words["joined"] in mine and words["start"] in mine and words["hours_label"] in mine
    assert f"<dt>{words['my_cap']}</dt><dd>{cap}</dd>" in mine
    assert formatting.date(course.starts_at, locale=language) in mine
    assert_translated(mine, language)
    courses = text_of(student_browser.get("/courses"))
    assert words["attending"] in courses and formatting.date(course.ends_at, locale=language) in courses
    assert_translated(courses, language)

    # the teacher's page: states, dates, figures and the chart's labels in the language
    teaching = text_of(teacher_browser.get(f"/courses/{course.id}"))
    assert f'<span class="state state-open">{words["state_open"]}</span>' in teaching
    assert formatting.date(course.ends_at, locale=language) in teaching
    assert words["student_row"] in teaching and f"<td>{words['active']}</td>" in teaching
    assert f">{words['close']}</button>" in teaching and "1 / 3" in teaching
    unit = formatting.unit_name(ResourceKind.CPU, locale=language)
    chart = chart_of(teacher_browser.get(f"/courses/{course.id}").get_data(as_text=True))
    assert chart["unit"] == unit
    assert (chart["used_label"], chart["cap_label"]) == (f"{words['used']} ({unit})", f"{words['cap']} ({unit})")
    assert_translated(teaching, language)

    # a notebook the portal stopped at the cap: the reason in words, never as the database keeps it
    options = {"allocation": course.allocation_id, "profile": "cpu", "hours": 1}
    session = check_spawn(db, settings, hub_username(student), "n1", options).session
    session.started_at = utcnow() - timedelta(minutes=30)
    session.stopped_at, session.stop_reason = utcnow(), classroom.CAP_REACHED
    db.add(session)
    db.commit()
    listed = text_of(student_browser.get(f"/courses/{course.id}"))
    assert f"<td>{words['stopped_label']}</td>" in listed and classroom.CAP_REACHED not in listed
    assert_translated(listed, language)

    followed = text_of(student_browser.get(f"/notebooks/{session.id}"))
    assert words["stopped"] in followed and words["cap_words"] in followed
    assert_translated(followed, language)
    polled = text_of(student_browser.get(f"/notebooks/{session.id}", headers={"HX-Request": "true"}))
    assert polled.startswith('<div id="session-state"') and words["cap_words"] in polled
    assert not english_left(polled, language)

    sessions = text_of(student_browser.get("/notebooks"))
    assert words["recently_stopped"] in sessions and words["cap_words"] in sessions
    assert formatting.datetime(session.stopped_at, locale=language) in sessions
    assert_translated(sessions, language)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_notebook_start_form_and_a_starting_session_speak_the_readers_language(
    make_settings, db: Session, login, language: str
) -> None:
    words = WORDS[language]
    # the demo's hub: no GPU on its machine, and not answering at the moment
    app = create_app(make_settings(hub_local_gpus=[], hub_url=f"http://127.0.0.1:{free_port()}"))
    world = make_world(db)
    plan_capacity_around_now(db, world.gpu, 100_000 * HOUR)
    cpu = ledger.create_resource(
        db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    plan_capacity_around_now(db, cpu, 100_000 * HOUR)
    gpu_allocation = open_now(db, world.project, world.gpu, 100)
    cpu_allocation = open_now(db, world.project, cpu, 10)
    browser = in_language(app, language)
    member = login(browser, given_name="Ilze")
    db.add(ProjectMembership(project_id=world.project.id, user_id=member.id, role=ProjectRole.MEMBER))
    db.commit()
    start_form = f"/projects/{world.project.id}/notebooks"

    gpu_form = text_of(browser.get(f"{start_form}?allocation_id={gpu_allocation.id}"))
    assert words["no_profile"] in gpu_form
    assert words["needs_gpu"] in gpu_form and words["no_gpu"] in gpu_form
    assert_translated(gpu_form, language)
    field = text_of(browser.get(f"{start_form}/profiles?allocation_id={gpu_allocation.id}"))
    assert field.startswith('<div class="field" id="profile-field">') and words["no_gpu"] in field
    assert not english_left(field, language)

    cpu_form = text_of(browser.get(f"{start_form}?allocation_id={cpu_allocation.id}"))
    left = words["left"].format(amount=formatting.quantity(10 * HOUR, ResourceKind.CPU, locale=language))
    assert '<option value="cpu" selected>' in cpu_form and left in cpu_form and words["hours_label"] in cpu_form
    assert_translated(cpu_form, language)
    refused = post_form(
        browser, start_form, {"allocation_id": cpu_allocation.id, "profile": "cpu", "hours": "1"}, page=start_form
    )
    assert refused.status_code == 503 and f"<h1>{words['unavailable']}</h1>" in text_of(refused)
    assert_translated(text_of(refused), language)

    # a notebook the hub was asked for, while the hub does not answer: the page says so
    options = {"allocation": cpu_allocation.id, "profile": "cpu", "hours": 1}
    session = check_spawn(db, app.extensions["portal.settings"], hub_username(member), "n1", options).session
    followed = text_of(browser.get(f"/notebooks/{session.id}"))
    assert words["no_answer"] in followed
    assert_translated(followed, language)
    running = text_of(browser.get("/notebooks"))
    assert f'<td data-label="{words["running_for"]}">{words["starting"]}</td>' in running
    assert_translated(running, language)
    assert db.get(NotebookSession, session.id).stopped_at is None
    app.extensions["portal.engine"].dispose()
