"""E-mail built from what users typed: a line break in a title or a name never reaches a header, and one
unusable address stops nobody else's mail (invitations, application notices, the worker's cap notices)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask
from sqlmodel import Session, select

from portal import create_app
from portal.classroom import services as classroom
from portal.config import Settings
from portal.db import utcnow
from portal.grants import services as grants
from portal.identity.models import User
from portal.mail import MailNotSent, send_mail, send_mail_to_each
from portal.notifications.models import Notification
from portal.projects import services as projects
from tests.classroom.test_classroom import Classroom, enrol, open_course, room, run_for, spawn_as  # noqa: F401 (room)
from tests.conftest import Mailbox, post_form
from tests.factories import open_now
from tests.grants.test_grants_pages import open_call
from tests.grants_world import login_of, plan_capacity_from_today
from tests.ledger_world import make_world

#: LF, CR, NEL (U+0085), LINE SEPARATOR (U+2028): each ends a line somewhere.
BREAKS = ["\n", "\r\n", "\x85", "\u2028"]
INJECTED = "Bcc: spy@example.eu"


@pytest.fixture
def smtp_settings(make_settings, mailbox: Mailbox) -> Settings:
    return make_settings(mail_backend="smtp", smtp_port=mailbox.port)


@pytest.fixture
def mail_app(smtp_settings: Settings) -> Iterator[Flask]:
    """An app on the same database as ``db`` that sends its mail over SMTP to ``mailbox``."""
    application = create_app(smtp_settings)
    yield application
    application.extensions["portal.engine"].dispose()


def subject(message) -> str:
    """The subject as a mail client shows it (Python folds a long one right after ``Subject:``)."""
    return str(message["Subject"]).strip()


def only_one_line(message) -> None:
    """No header of the message was added or split by what a user typed."""
    assert message["Bcc"] is None
    for name, value in message.items():
        assert "\n" not in str(value) and "\r" not in str(value), (name, value)


@pytest.mark.parametrize("line_break", BREAKS, ids=["LF", "CRLF", "NEL", "LS"])
def test_an_invitation_to_a_project_with_a_line_break_in_its_title_is_sent_on_one_line(
    mail_app, mailbox, db, login, line_break
):
    client = mail_app.test_client()
    owner = login(client, given_name=f"Petra{line_break}{INJECTED}", family_name="Principal")
    org = projects.create_organisation(db, owner, name="Riga Lab", kind="university", country="LV")
    project = projects.create_project(db, owner, org, title=f"Baltic LLM{line_break}{INJECTED}")

    response = post_form(client, f"/projects/{project.id}/invitations", {"email": "ieva@example.eu", "role": "member"})

    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    message = mailbox.wait_for("ieva@example.eu")
    assert subject(message) == f"Invitation to the project Baltic LLM {INJECTED}"
    only_one_line(message)
    assert len(mailbox.messages) == 1  # nothing went to the injected address


def test_submitting_an_application_with_a_broken_title_and_applicant_address_still_tells_the_manager(
    mail_app, mailbox, db, login
):
    pi_client = mail_app.test_client()
    pi = login(
        pi_client,
        given_name="Paula\u2028Pietarinen",
        family_name=f"\x85{INJECTED}",
        email=f"paula@example.eu\r\n{INJECTED}",  # an address no mail can go to
    )
    manager = login(mail_app.test_client(), given_name="Mona", family_name="Manager")
    world = make_world(db)
    plan_capacity_from_today(db, world.gpu)
    call = open_call(db, manager, world.gpu.id)
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    project = projects.create_project(db, pi, org, title="Baltic speech")
    title = "Speech models\u2028for\nBaltic\x85languages"
    application = grants.start_application(db, pi, login_of(pi), call=call, project=project, title=title)
    grants.save_draft(
        db,
        pi,
        application,
        abstract="Train ASR models.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(world.gpu.id, 100 * 3600, "Fine-tuning")],
    )

    response = post_form(pi_client, f"/applications/{application.id}/submit", page=f"/applications/{application.id}")

    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    assert manager.email is not None
    message = mailbox.wait_for(manager.email)
    assert subject(message) == f"New application to {call.title}: Speech models for Baltic languages"
    only_one_line(message)
    assert [m["To"] for m in mailbox.messages] == [manager.email]
    # the applicant, whose address is unusable, has the notice in the portal's inbox
    db.expire_all()
    notices = db.exec(select(Notification).where(Notification.user_id == pi.id)).all()
    assert [n.subject for n in notices] == ["Application submitted: Speech models for Baltic languages"]


def test_the_workers_cap_notices_reach_every_teacher_though_one_address_is_unusable(
    db: Session,
    settings: Settings,
    smtp_settings: Settings,
    mailbox: Mailbox,
    room: Classroom,  # noqa: F811
) -> None:
    world = room.world
    # two teachers, two courses; one teacher's identity provider asserted an address no mail can go to
    broken = db.get(User, world.pi.id)
    assert broken is not None
    broken.email = f"pi@example.eu\n{INJECTED}"
    db.add(broken)
    db.commit()
    other_parent = open_now(db, world.other_project, room.cpu, 1000)
    first = open_course(db, settings, room, student_cap=2 * 3600)
    now = utcnow()
    second = classroom.create_course(
        db,
        settings,
        world.other_pi,
        parent_allocation_id=other_parent.id,
        title="Speech\u2028lab",
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=20),
        student_cap=2 * 3600,
        max_seats=3,
        profiles=["cpu"],
    )
    for course, name in ((first, f"Eve{INJECTED}\nMallory"), (second, "Sam\x85Student")):
        student, _seat = enrol(db, course, name)
        run_for(db, spawn_as(db, settings, student, course, hours=1).session, 3600)  # 2 cores × 1 h = the cap

    assert classroom.notify_capped_students(db, smtp_settings) == 2

    assert world.other_pi.email is not None
    message = mailbox.wait_for(world.other_pi.email)
    assert subject(message) == "Sam Student reached the cap in “Speech lab”"
    only_one_line(message)
    assert len(mailbox.messages) == 1
    told = db.exec(select(Notification).where(Notification.user_id == world.pi.id)).one()
    assert told.subject.startswith("Eve") and "reached the cap" in told.subject
    assert classroom.notify_capped_students(db, smtp_settings) == 0  # each teacher is told once


def test_send_mail_refuses_an_unusable_address_and_the_others_still_get_theirs(
    smtp_settings: Settings, mailbox: Mailbox
) -> None:
    with pytest.raises(MailNotSent):
        send_mail(smtp_settings, to=f"a@example.eu\n{INJECTED}", subject="x", body="y")
    failed = send_mail_to_each(
        smtp_settings,
        ["one@example.eu", "not an address", "two@example.eu, three@example.eu", "four@example.eu"],
        subject="Ledger\u2028check",
        body="z",
    )
    assert failed == ["not an address", "two@example.eu, three@example.eu"]
    assert sorted(m["To"] for m in mailbox.messages) == ["four@example.eu", "one@example.eu"]
    assert {subject(m) for m in mailbox.messages} == {"Ledger check"}
