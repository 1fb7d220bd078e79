"""Inbox notices and e-mails reach each person in their own language: the one they chose with the switch (saved on
their account), English when they chose none. One event told to several people is told to each in theirs."""

from __future__ import annotations

from datetime import date

import time_machine
from sqlmodel import Session, select

from portal import formatting
from portal.grants import services as grants
from portal.grants.jobs import remind_due_reviews
from portal.grants.models import ReviewKind
from portal.identity.models import FactoryRole, User
from portal.ledger.models import ResourceKind
from portal.messages import N_, Amount, Message, Money, paragraphs, render
from portal.notifications.models import Notification
from portal.projects import services as projects
from portal.projects.models import ProjectMembership, ProjectRole
from tests.grants_world import complete_draft, login_of, mail_settings, make_grant_world, staff
from tests.ledger_world import HOUR, at

SETTINGS = mail_settings()


def speaks(db: Session, user: User, language: str | None) -> User:
    user.preferred_language = language
    db.add(user)
    db.commit()
    return user


def notices(db: Session, user: User) -> list[Notification]:
    return list(db.exec(select(Notification).where(Notification.user_id == user.id).order_by(Notification.id)))


def test_a_message_is_rendered_in_the_readers_language_with_its_figures_written_their_way() -> None:
    message = Message(N_("Decision on “%(title)s”: accepted"), title="Whisper for Estonian")
    assert str(message) == "Decision on “Whisper for Estonian”: accepted"
    assert render(message, "pl") == "Decyzja w sprawie „Whisper for Estonian”: przyjęty"
    assert render(message, "et") == "Otsus taotluse „Whisper for Estonian” kohta: rahuldatud"

    figures = Message(
        N_("Used: %(used)s of %(credited)s\nRemaining: %(balance)s\nEnds: %(ends)s"),
        used=Amount(5400, ResourceKind.GPU),
        credited=Amount(10 * HOUR, ResourceKind.GPU),
        balance=Amount(10 * HOUR - 5400, ResourceKind.GPU),
        ends=date(2027, 3, 3),
    )
    assert render(figures, "en") == "Used: 1.5 GPU-hours of 10.0 GPU-hours\nRemaining: 8.5 GPU-hours\nEnds: Mar 3, 2027"
    assert render(figures, "pl") == (
        f"Wykorzystano: 1,5 {formatting.unit_name(ResourceKind.GPU, locale='pl')} z "
        f"10,0 {formatting.unit_name(ResourceKind.GPU, locale='pl')}\n"
        f"Pozostało: 8,5 {formatting.unit_name(ResourceKind.GPU, locale='pl')}\n"
        f"Koniec: {formatting.date(date(2027, 3, 3), locale='pl')}"
    )
    assert Money(123_450, "EUR").render("lv") == formatting.money(123_450, "EUR", locale="lv")

    # parts join with a space, paragraphs with a blank line; missing parts leave no gap; what people wrote stays
    text = paragraphs(Message(N_("Reasons: %(reasons)s"), reasons="Out of scope."), None, "Kind regards")
    assert render(text, "lt") == "Priežastys: Out of scope.\n\nKind regards"
    sentence = Message(N_("Declare a conflict of interest if you have one.")) + None
    assert render(sentence, "lv") == "Ja jums ir interešu konflikts, paziņojiet par to."


def test_a_decision_reaches_each_member_in_their_language(db: Session, make_settings, mailbox) -> None:
    settings = make_settings(mail_backend="smtp", smtp_port=mailbox.port)
    g = make_grant_world(db)
    speaks(db, g.pi, "pl")
    colleague = speaks(db, staff(db, FactoryRole.SITE_OPERATOR, "Colleague"), "lv")
    db.add(ProjectMembership(project_id=g.project.id, user_id=colleague.id, role=ProjectRole.MEMBER))
    newcomer = staff(db, FactoryRole.SITE_OPERATOR, "Newcomer")  # chose no language: English
    db.add(ProjectMembership(project_id=g.project.id, user_id=newcomer.id, role=ProjectRole.MEMBER))
    db.commit()
    application = complete_draft(db, g)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)

    grants.decide_reject(db, settings, g.manager, application, reason="The plan needs no GPUs.")

    title = application.title
    assert notices(db, g.pi)[-1].subject == f"Decyzja w sprawie „{title}”: nieprzyjęty"
    assert notices(db, g.pi)[-1].body == (
        f"Twój wniosek w naborze „{g.call.title}” nie został przyjęty.\n\nUzasadnienie: The plan needs no GPUs."
    )
    assert notices(db, colleague)[-1].subject == f"Lēmums par “{title}”: noraidīts"
    assert notices(db, newcomer)[-1].subject == f"Decision on “{title}”: not accepted"
    mails = {m["To"]: m for m in mailbox.messages}
    assert mails[g.pi.email]["Subject"] == f"Decyzja w sprawie „{title}”: nieprzyjęty"
    assert "Uzasadnienie: The plan needs no GPUs." in mails[g.pi.email].get_content()
    assert mails[colleague.email]["Subject"] == f"Lēmums par “{title}”: noraidīts"
    assert mails[newcomer.email]["Subject"] == f"Decision on “{title}”: not accepted"
    # the manager, told of the submission, chose no language either
    assert notices(db, g.manager)[-1].subject == f"New application to {g.call.title}: {title}"


def test_a_reviewer_is_reminded_in_their_language_with_the_date_written_their_way(
    db: Session, make_settings, mailbox
) -> None:
    settings = make_settings(mail_backend="smtp", smtp_port=mailbox.port)
    g = make_grant_world(db)
    application = complete_draft(db, g)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    grants.administrative_check(db, SETTINGS, g.manager, application, passed=True)
    operator = speaks(db, staff(db, FactoryRole.SITE_OPERATOR, "Operator"), "et")
    due = date(2030, 3, 10)
    grants.assign_reviewer(db, SETTINGS, g.manager, application, operator, kind=ReviewKind.TECHNICAL, due_on=due)
    assert notices(db, operator)[-1].subject == f"Palutakse hinnata: {application.title}"
    assert notices(db, operator)[-1].body == (
        f"Teil palutakse tehniliselt hinnata taotlust „{application.title}” voorus „{g.call.title}” hiljemalt "
        f"{formatting.date(due, locale='et')}. Kui teil on huvide konflikt, deklareerige see."
    )
    with time_machine.travel(at(2030, 3, 11), tick=False):
        assert remind_due_reviews(db, settings) == 1
    (mail,) = mailbox.messages
    assert mail["Subject"] == f"Hindamine on hilinenud: {application.title}"
    assert f"oli {formatting.date(due, locale='et')}." in mail.get_content()


def test_an_invitation_is_written_in_the_invitees_language_else_in_the_inviters(
    db: Session, make_settings, mailbox
) -> None:
    settings = make_settings(mail_backend="smtp", smtp_port=mailbox.port)
    g = make_grant_world(db)
    speaks(db, g.pi, "lt")
    known = speaks(db, staff(db, FactoryRole.SITE_OPERATOR, "Known"), "pl")

    projects.invite_member(db, settings, g.pi, g.project, email=known.email or "", role="manager")
    projects.invite_member(db, settings, g.pi, g.project, email="stranger@example.eu", role="member")

    to_known, to_stranger = mailbox.messages
    assert to_known["Subject"] == f"Zaproszenie do projektu {g.project.title}"
    assert to_known.get_content().startswith(
        f"{g.pi.display_name} zaprasza Cię do projektu „{g.project.title}” w portalu Baltic AI Factory jako menedżera."
    )
    assert to_stranger["Subject"] == f"Kvietimas į projektą {g.project.title}"
    assert "Atidarykite šią nuorodą" in to_stranger.get_content()


def test_the_inbox_shows_a_notice_in_the_language_its_reader_has_now(app, db: Session, client, login) -> None:
    """A notice is e-mailed in the language of the day; the inbox (and the API) show it in today's."""
    from portal.identity.services import create_api_token

    reader = login(client, "notice-reader")
    speaks(db, reader, "pl")
    g = make_grant_world(db)
    db.add(ProjectMembership(project_id=g.project.id, user_id=reader.id, role=ProjectRole.MEMBER))
    db.commit()
    application = complete_draft(db, g)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    grants.decide_reject(db, SETTINGS, g.manager, application, reason="Out of scope.")
    (told,) = notices(db, db.get(User, reader.id))
    assert told.subject == f"Decyzja w sprawie „{application.title}”: nieprzyjęty"  # as e-mailed

    speaks(db, db.get(User, reader.id), "et")
    page = client.get("/inbox").get_data(as_text=True)
    assert f"Otsus taotluse „{application.title}” kohta: rahuldamata" in page
    assert "Põhjused: Out of scope." in page
    assert "Decyzja" not in page

    _token, plain = create_api_token(db, db.get(User, reader.id), name="n", scopes=["read"], ttl_days=1)
    listed = client.get(
        "/api/v1/notifications", headers={"Authorization": f"Bearer {plain}", "Accept-Language": "lv"}
    ).json
    assert listed["notifications"][0]["subject"] == f"Lēmums par “{application.title}”: noraidīts"


def test_a_text_kept_as_json_reads_the_same_in_every_language() -> None:
    import json

    from portal.messages import from_json, to_json

    text = paragraphs(
        Message(N_("Your application to “%(call)s” was not accepted."), call="Playground"),
        Message(
            N_("Used: %(used)s of %(credited)s\nRemaining: %(balance)s\nEnds: %(ends)s"),
            used=Amount(5400, ResourceKind.GPU),
            credited=Amount(10 * HOUR, ResourceKind.GPU),
            balance=Amount(10 * HOUR - 5400, ResourceKind.GPU),
            ends=date(2027, 3, 3),
        )
        + Message(N_("Reasons: %(reasons)s"), reasons=Money(12_345, "EUR")),
        "https://portal.example.eu/projects/1",
    )
    kept = from_json(json.loads(json.dumps(to_json(text))))
    for language in ("en", "pl", "lt", "lv", "et"):
        assert render(kept, language) == render(text, language)
