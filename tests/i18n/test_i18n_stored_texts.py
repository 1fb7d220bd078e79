"""Issue 14, what the portal keeps in English: every reason it writes on a ledger entry and every title it gives an
allocation, whichever service writes it (the classroom's top-ups, transfers, a course's returned hours, awards,
metering), is written through ``portal.ledger.wording`` and read in the reader's language on the pages, in the
messages that name an allocation, and over the API (``title_shown``, ``reason_shown``, by ``Accept-Language``),
while what is stored stays English for the audit and the CSV files."""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from portal_standin.devstack import free_port
from sqlmodel import Session, col, select

from portal import create_app, formatting
from portal.classroom import services as classroom
from portal.compute.notebook_charges import EXHAUSTED
from portal.compute.services import nothing_runs_on
from portal.db import utcnow
from portal.grants import services as grants
from portal.grants.models import Application, ApplicationState, CallBudget, ReviewMode
from portal.identity.models import FactoryRole
from portal.identity.services import create_api_token
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import Allocation, AllocationSource, AllocationState, LedgerEntry, Resource, ResourceKind
from portal.messages import N_, Amount, Message, from_json, to_json
from portal.notebook_models import NotebookSession
from portal.projects import services as projects
from tests.factories import (
    cpu_project,
    login_of,
    make_call,
    make_world,
    open_now,
    person,
    plan_capacity_from_today,
    running_course,
    staff,
)
from tests.i18n.test_i18n_journeys import LANGUAGES, browser, english_left, read
from tests.ledger_world import HOUR

REPO = Path(__file__).resolve().parents[2]
#: The ledger's functions (and the classroom's one way into them) that store a text on an allocation or an entry.
LEDGER_WRITERS = frozenset(
    {
        "open_allocation",
        "credit",
        "_take_back_unused",
        "_move",
        "share_to_course",
        "top_up_course",
        "_fund_more",
        "hold_for_purchase",
        "fulfil_purchase",
        "refund_unused",
        "charge_usage",
        "UsageCharge",
    }
)
#: Texts written by hand that are names, not sentences: the access mode's name (EuroHPC's, kept in English in every
#: language, docs/glossary.md) before the application's title.
NAMES_ONLY = {("portal/grants/services/decisions.py", "title")}


def _written_by_hand(node: ast.expr) -> bool:
    """An f-string, a string literal that says something, or text glued together (``+``, ``%``, slicing one)."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value.strip() != ""
    if isinstance(node, ast.Subscript):
        return _written_by_hand(node.value)
    if isinstance(node, ast.BinOp):
        return _written_by_hand(node.left) or _written_by_hand(node.right)
    return False


def _called(node: ast.AST) -> str:
    if not isinstance(node, ast.Call):
        return ""
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def test_every_text_the_portal_stores_on_the_ledger_is_written_through_its_wording() -> None:
    """A reason or a title written by hand would be stored in English and shown in English on every page: each is a
    ``Wording`` (portal/ledger/wording.py), which the pages and the API render again in the reader's language."""
    found = []
    for path in sorted((REPO / "portal").rglob("*.py")):
        where = str(path.relative_to(REPO))
        if "migrations" in where or where == "portal/ledger/wording.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        writes = any(_called(node) in LEDGER_WRITERS for node in ast.walk(tree))
        for node in ast.walk(tree):
            if _called(node) in LEDGER_WRITERS:
                assert isinstance(node, ast.Call)
                texts = [(k.arg, k.value) for k in node.keywords if k.arg in ("reason", "title")]
                texts += [("positional", a) for a in node.args if isinstance(a, ast.JoinedStr)]
                found += [
                    f"{where}:{node.lineno} {_called(node)}({name}=...)"
                    for name, value in texts
                    if (where, name) not in NAMES_ONLY and _written_by_hand(value)
                ]
            elif writes and isinstance(node, ast.Assign) and _written_by_hand(node.value):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
                found += [f"{where}:{node.lineno} reason = ..." for name in names if name == "reason"]
    assert not found, "write these through portal.ledger.wording (Wording.english):\n" + "\n".join(found)


def test_every_wording_is_recognised_once_and_an_amount_in_it_is_read_back_exactly() -> None:
    for stored in wording.REASONS:
        values = {
            name: Amount(90 * HOUR + 1800, ResourceKind.CPU) if name in wording.AMOUNTS else str(17 + n)
            for n, name in enumerate(re.findall(r"%\((\w+)\)s", stored.message))
        }
        english = stored.english(**values)
        readers = [w for w in wording.REASONS if w.read(english) is not None]
        assert readers[0] is stored, (english, [w.message for w in readers])  # the most specific reads it first
        # one pattern for all of them finds the same wording as trying them one by one
        assert wording.shown(english, wording.REASONS, "pl") == wording.shown(english, (stored,), "pl") != english
    for person_wrote in ("", "Slurm jobs 12", "order 12b", "to allocation", "notebook x (cpu): 5 s extra"):
        assert all(w.read(person_wrote) is None for w in wording.REASONS)
        assert wording.shown(person_wrote, wording.REASONS, "pl") == person_wrote
    hours = 12_345 * HOUR // 10
    kept = wording.COURSE_HOURS_BACK_KEPT.english(allocation=7, kept=Amount(hours, ResourceKind.GPU))
    assert kept == "unused course hours back to allocation 7 (1,234.5 GPU-hours kept for running notebooks)"
    polish = formatting.quantity(hours, ResourceKind.GPU, locale="pl")
    assert polish.startswith("1\xa0234,5") and polish.endswith("godz. GPU")
    assert wording.shown(kept, wording.REASONS, "pl") == (
        f"niewykorzystane godziny kursu wróciły do przydziału 7 ({polish} zostaje dla wciąż działających notatników)"
    )


# --- the teacher's hours, moved by the classroom and the ledger ------------------------------------------------


def _entries(db: Session, allocation_id: int) -> list[LedgerEntry]:
    db.expire_all()
    return list(db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == allocation_id)))


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_hours_a_teacher_moves_are_read_in_the_teachers_language(
    app: Flask, db: Session, login, language: str
) -> None:
    teacher_client = browser(app, language)
    teacher = login(teacher_client, given_name="Tiina")
    _world, project, parent = cpu_project(db, teacher, hours=500, title="Teaching")
    cpu = db.get(Resource, parent.resource_id)
    spare = open_now(db, project, cpu, 50)
    course = running_course(db, app.extensions["portal.settings"], teacher, parent.id, title="Parallel Python")
    student = person(db, "Sten")
    seat = classroom.join_course(db, student, login_of(student), course.join_code)
    classroom.raise_cap(db, teacher, course, seat.id, 15 * HOUR)
    ledger.transfer(db, teacher, from_id=parent.id, to_id=spare.id, amount=5 * HOUR)
    ledger.release_to_pool(db, teacher, spare.id, HOUR)
    assert ledger.return_course_hours(db, course.allocation_id, parent.id, keep=2 * HOUR) > 0

    for allocation_id in (parent.id, spare.id, course.allocation_id):
        entries = [e for e in _entries(db, allocation_id) if e.reason]  # an opening entry says nothing
        page = read(teacher_client.get(f"/projects/{project.id}/allocations/{allocation_id}"), language)
        for entry in entries:
            shown = wording.entry_reason(entry, language)
            assert wording.shown(entry.reason, wording.REASONS, "en") == entry.reason  # stored in English
            assert shown != entry.reason and f"<td>{shown}</td>" in page, (entry.reason, shown)
    reasons = {e.reason for a in (parent.id, spare.id, course.allocation_id) for e in _entries(db, a)}
    kept = Amount(2 * HOUR, ResourceKind.CPU).render("en")
    assert {
        wording.CAP_RAISED.english(title="Parallel Python"),
        wording.TO_ALLOCATION.english(allocation=spare.id),
        wording.GIVEN_BACK.english(),
        wording.COURSE_HOURS_BACK_KEPT.english(allocation=parent.id, kept=Amount(2 * HOUR, ResourceKind.CPU)),
        f"unused hours of course allocation {course.allocation_id} ({kept} kept for running notebooks)",
    } <= reasons
    db.expire_all()
    course_allocation = db.get(Allocation, course.allocation_id)
    assert course_allocation.title == "Course: Parallel Python"  # as stored; the pages say it in the language
    title = wording.allocation_title(course_allocation, language)
    assert title != course_allocation.title and "Parallel Python" in title
    assert f"<h1>{title}</h1>" in read(
        teacher_client.get(f"/projects/{project.id}/allocations/{course.allocation_id}"), language
    )


# --- a message that names an allocation -------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_message_naming_an_allocation_says_its_title_in_the_readers_language(db: Session, language: str) -> None:
    owner = person(db, "Olga")
    _world, project, parent = cpu_project(db, owner, hours=10)
    course = Allocation(
        project_id=project.id,
        resource_id=parent.resource_id,
        source=AllocationSource.COURSE,
        state=AllocationState.EXHAUSTED,
        starts_at=parent.starts_at,
        ends_at=parent.ends_at,
        title=wording.COURSE_TITLE.english(title="Parallel Python"),
    )
    title = wording.allocation_title(course, language)
    assert title != course.title and "Parallel Python" in title
    refused = nothing_runs_on(course)
    assert f"'{title}'" in refused.render(language) and "Course: " not in refused.render(language)
    assert "'Course: Parallel Python'" in refused.render("en")
    # kept as JSON (an inbox notice), then read in the language its reader has then
    notice = Message(
        N_("%(project)s: the allocation “%(allocation)s” is used up"), project="P", allocation=wording.title_of(course)
    )
    assert from_json(to_json(notice)).render(language) == notice.render(language)
    assert title in notice.render(language) and "Course: " not in notice.render(language)
    assert wording.title_of(parent) == parent.title  # what a person wrote stays as written
    assert wording.title_of(parent, quoted=True) == repr(parent.title)


# --- the API ---------------------------------------------------------------------------------------------------


def _bearer(db: Session, user) -> dict[str, str]:
    _row, plain = create_api_token(db, user, name="script", scopes=["read"], ttl_days=30)
    return {"Authorization": f"Bearer {plain}"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_api_gives_the_stored_english_and_the_text_in_the_callers_language(
    client, db: Session, language: str
) -> None:
    teacher = person(db, "Tiina")
    _world, project, parent = cpu_project(db, teacher, hours=100)
    course = running_course(
        db, client.application.extensions["portal.settings"], teacher, parent.id, title="Parallel Python", max_seats=2
    )
    auth = _bearer(db, teacher)
    asked = {**auth, "Accept-Language": language}

    listed = client.get(f"/api/v1/allocations?project_id={project.id}", headers=asked)
    assert listed.status_code == 200, listed.get_data(as_text=True)
    assert listed.headers["Content-Language"] == language and "Accept-Language" in listed.headers["Vary"]
    by_id = {a["id"]: a for a in listed.json["allocations"]}
    course_allocation = db.get(Allocation, course.allocation_id)
    assert by_id[course.allocation_id]["title"] == "Course: Parallel Python"
    assert by_id[course.allocation_id]["title_shown"] == wording.allocation_title(course_allocation, language)
    assert by_id[course.allocation_id]["title_shown"] != "Course: Parallel Python"
    assert by_id[parent.id]["title_shown"] == by_id[parent.id]["title"] == parent.title  # a person's words

    one = client.get(f"/api/v1/allocations/{course.allocation_id}", headers=asked)
    english = client.get(f"/api/v1/allocations/{course.allocation_id}", headers={**auth, "Accept-Language": "en"})
    assert one.json["title_shown"] == by_id[course.allocation_id]["title_shown"]
    assert english.json["title_shown"] == english.json["title"] == "Course: Parallel Python"
    assert one.headers["ETag"] != english.headers["ETag"]  # another text, another ETag
    again = client.get(
        f"/api/v1/allocations/{course.allocation_id}", headers={**asked, "If-None-Match": one.headers["ETag"]}
    )
    assert again.status_code == 304

    entries = client.get(f"/api/v1/allocations/{parent.id}/entries", headers=asked).json["entries"]
    moved = next(e for e in entries if e["kind"] == "transfer_out")
    assert moved["reason"] == wording.TO_COURSE.english(allocation=course.allocation_id)
    assert moved["reason_shown"] == wording.shown(moved["reason"], wording.REASONS, language) != moved["reason"]
    assert str(course.allocation_id) in moved["reason_shown"]
    # stored English is what the audit log and the CSV files say; the database keeps it so
    stored = db.exec(select(LedgerEntry.reason).where(col(LedgerEntry.allocation_id) == parent.id)).all()
    assert moved["reason"] in stored


# --- the API's problems ----------------------------------------------------------------------------------------


def _problem_in(
    client, language: str, status: int, path: str, method: str = "GET", *, detail: str | None = None, **kwargs
) -> dict[str, str]:
    """The problem ``path`` answers in ``language``, checked against the one it answers in English: another title
    and another detail, the catalogue's translations of the English ones, and no English message left in them.
    (The schema's refusals list pydantic's own messages under ``errors``, with their ``loc`` and ``type``.)"""
    answers = {}
    for asked in ("en", language):
        headers = {**kwargs.get("headers", {}), "Accept-Language": asked}
        response = client.open(path, method=method, **{**kwargs, "headers": headers})
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.mimetype == "application/problem+json"
        answers[asked] = response.get_json()
        assert response.headers["Content-Language"] == asked and "Accept-Language" in response.headers["Vary"]
    english, said = answers["en"], answers[language]
    assert not english_left(f"{said['title']} {said['detail']}", language), said
    catalogue = formatting.catalogue(language)
    expected = {"title": catalogue.gettext(english["title"]), "detail": detail or catalogue.gettext(english["detail"])}
    for part in ("title", "detail"):
        assert said[part] != english[part], (part, english[part])
        assert said[part] == expected[part], (part, english[part], said[part])
    return said


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_api_says_why_a_notebook_stopped_as_its_page_does_in_the_callers_language(
    client, db: Session, language: str
) -> None:
    owner = person(db, "Nora")
    _world, project, allocation = cpu_project(db, owner, hours=10)
    now = utcnow()
    common = {"user_id": owner.id, "project_id": project.id, "allocation_id": allocation.id, "hub_user": "nora"}
    common |= {"profile": "cpu", "gpus": 0, "cpus": 1, "max_seconds": HOUR, "requested_at": now - timedelta(hours=1)}
    stopped = NotebookSession(**common, server_name="a1", started_at=now - timedelta(hours=1), stopped_at=now,
                              stop_reason=EXHAUSTED)  # fmt: skip
    running = NotebookSession(**common, server_name="a2", started_at=now - timedelta(minutes=5))
    db.add_all([stopped, running])
    db.commit()
    auth = _bearer(db, owner)
    said = "The allocation ran out of hours, so the portal stopped it. Its running time up to then is charged."

    for asked, sentence in ((language, formatting.catalogue(language).gettext(said)), ("en", said)):
        headers = {**auth, "Accept-Language": asked}
        listed = {n["id"]: n for n in client.get("/api/v1/notebooks", headers=headers).json["notebooks"]}
        assert listed[stopped.id]["stop_reason"] == "allocation exhausted"  # the stored code, in any language
        assert listed[stopped.id]["stop_reason_shown"] == sentence
        assert listed[running.id]["stop_reason"] == listed[running.id]["stop_reason_shown"] == ""
        one = client.get(f"/api/v1/notebooks/{stopped.id}", headers=headers)
        assert one.json["stop_reason_shown"] == sentence and one.headers["Content-Language"] == asked
    assert not english_left(formatting.catalogue(language).gettext(said), language)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_apis_problems_are_said_in_the_language_of_accept_language(
    make_settings, db: Session, language: str
) -> None:
    app = create_app(make_settings(hub_url=f"http://127.0.0.1:{free_port()}"))  # a hub that does not answer
    client = app.test_client()
    with Session(app.extensions["portal.engine"], expire_on_commit=False) as session:
        owner = person(session, "Olga")
        _world, _project, allocation = cpu_project(session, owner, hours=10)
        finance = staff(session, FactoryRole.FINANCE, "Fenja")
        _row, plain = create_api_token(session, owner, name="script", scopes=["read", "write"], ttl_days=30)
        _row, reports = create_api_token(session, finance, name="reports", scopes=["reports:read"], ttl_days=30)
    auth = {"Authorization": f"Bearer {plain}"}

    _problem_in(client, language, 401, "/api/v1/projects")  # no token
    _problem_in(client, language, 422, "/api/v1/notebooks", "POST", headers=auth, data="allocation_id=1")  # no JSON
    _problem_in(client, language, 404, "/api/v1/allocations/999999", headers=auth)
    _problem_in(client, language, 404, "/api/v1/notebooks/999999", headers=auth)
    invalid = _problem_in(client, language, 422, "/api/v1/allocations?size=0", headers=auth)  # the schema's refusal
    assert invalid["errors"]
    launch = {"allocation_id": allocation.id, "profile": "cpu", "hours": 1}
    down = _problem_in(client, language, 503, "/api/v1/notebooks", "POST", headers=auth, json=launch)
    assert "127.0.0.1" not in down["detail"]  # what went wrong at the hub is for the operators' log
    staff_auth = {"Authorization": f"Bearer {reports}"}
    years = Message(
        N_("Choose a quarter like 2026-Q3, of a year from %(first)s to %(last)s."), first="2000", last="2999"
    ).render(language)
    path = "/api/v1/reports/capacity?quarter=1999-Q9"
    quarter = _problem_in(client, language, 422, path, headers=staff_auth, detail=years)
    assert quarter["errors"]["quarter"] == formatting.catalogue(language).gettext("A quarter like 2026-Q3.")
    _problem_in(client, language, 404, "/api/v1/reports/capacity?site=999999", headers=staff_auth)
    app.extensions["portal.engine"].dispose()


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_reports_over_the_api_head_their_tables_in_the_callers_language(client, db: Session, language: str) -> None:
    finance = staff(db, FactoryRole.FINANCE, "Fenja")
    _row, plain = create_api_token(db, finance, name="reports", scopes=["reports:read"], ttl_days=30)
    headers = {"Authorization": f"Bearer {plain}"}
    english = client.get("/api/v1/reports/capacity", headers={**headers, "Accept-Language": "en"}).json
    said = client.get("/api/v1/reports/capacity", headers={**headers, "Accept-Language": language}).json
    catalogue = formatting.catalogue(language)
    assert said["title"] == catalogue.gettext(english["title"]) != english["title"]
    assert [c["key"] for c in said["columns"]] == [c["key"] for c in english["columns"]]  # the keys stay
    assert [c["label"] for c in said["columns"]] == [catalogue.gettext(c["label"]) for c in english["columns"]]
    assert said["columns"][0]["label"] != english["columns"][0]["label"]


# --- the reasons of a decision the portal takes ------------------------------------------------------------------


def _submitted(db: Session, settings, pi, project, call) -> Application:
    draft = grants.start_application(db, pi, login_of(pi), call=call, project=project, title=f"Speech {call.id}")
    grants.save_draft(
        db,
        pi,
        draft,
        abstract="Train ASR models.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(call_resource(db, call), 200 * HOUR, "Three models, ten days each")],
    )
    return grants.submit(db, settings, pi, login_of(pi), draft)


def call_resource(db: Session, call) -> int:
    return db.exec(select(CallBudget.resource_id).where(CallBudget.call_id == call.id)).one()


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_reasons_the_portal_gives_for_a_rejection_are_read_in_the_applicants_language(
    app: Flask, db: Session, login, settings, language: str
) -> None:
    client = browser(app, language)
    pi = login(client, given_name="Paula")
    world = make_world(db)
    plan_capacity_from_today(db, world.gpu)
    manager = person(db, "Mona")
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    project = projects.create_project(db, pi, org, title="Baltic speech")
    elsewhere = make_call(db, world.gpu.id, manager, mode=ReviewMode.AUTOMATIC, kinds=["sme"], countries=["PL"])
    poor = make_call(db, world.gpu.id, manager, mode=ReviewMode.AUTOMATIC, budget_hours=100, title="Small call")
    checked = make_call(db, world.gpu.id, manager, mode=ReviewMode.TECHNICAL, title="Checked call")
    ineligible, unfunded, failed = (_submitted(db, settings, pi, project, c) for c in (elsewhere, poor, checked))
    grants.administrative_check(db, settings, manager, failed, passed=False)  # no reason given: the portal's words
    _row, plain = create_api_token(db, pi, name="script", scopes=["read"], ttl_days=30)

    for application in (ineligible, unfunded, failed):
        db.expire_all()
        decided = db.get(Application, application.id)
        assert decided.state == ApplicationState.REJECTED and decided.decision_message is not None
        with app.test_request_context("/", headers={"Accept-Language": language}):
            shown = decided.shown_decision_reason
        assert shown != decided.decision_reason
        assert not english_left(shown, language), shown
        page = read(client.get(f"/applications/{decided.id}"), language)
        assert shown in page and decided.decision_reason not in page
        headers = {"Authorization": f"Bearer {plain}", "Accept-Language": language}
        api = client.get(f"/api/v1/applications/{decided.id}", headers=headers).json
        assert (api["decision_reason"], api["decision_reason_shown"]) == (decided.decision_reason, shown)
    db.expire_all()
    assert db.get(Application, failed.id).decision_reason == "The administrative check failed."  # stored in English
    assert db.get(Application, unfunded.id).decision_reason.startswith("No hours could be awarded: The call has ")
    inbox = read(client.get("/inbox"), language)  # the notices of the three decisions
    for application in (ineligible, unfunded, failed):
        with app.test_request_context("/", headers={"Accept-Language": language}):
            assert db.get(Application, application.id).shown_decision_reason in inbox
