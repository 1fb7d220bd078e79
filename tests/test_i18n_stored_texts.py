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
from sqlmodel import Session, select

from portal import formatting
from portal.classroom import services as classroom
from portal.compute.services import nothing_runs_on
from portal.db import utcnow
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import Allocation, AllocationSource, AllocationState, LedgerEntry, Resource, ResourceKind
from portal.messages import N_, Amount, Message, from_json, to_json
from tests.factories import login_of, person
from tests.ledger_world import HOUR
from tests.test_compute import cpu_project, open_now
from tests.test_i18n_journeys import LANGUAGES, browser, read

REPO = Path(__file__).resolve().parent.parent
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
    course = classroom.create_course(
        db,
        app.extensions["portal.settings"],
        teacher,
        parent_allocation_id=parent.id,
        title="Parallel Python",
        starts_at=utcnow() - timedelta(hours=1),
        ends_at=utcnow() + timedelta(days=20),
        student_cap=10 * HOUR,
        max_seats=3,
        profiles=["cpu"],
    )
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
