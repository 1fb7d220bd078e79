"""Calls for proposals: applying, the review pipeline with its named transitions, and awards."""

from __future__ import annotations

from datetime import date

import pytest
from sqlmodel import select

from portal.config import AssuranceLevel
from portal.errors import InvalidInput, NotAuthorised, NotFound
from portal.grants import services as grants
from portal.grants.models import (
    Application,
    ApplicationState,
    ApplicationVersion,
    Award,
    CallBudget,
    ReviewKind,
    ReviewMode,
    ReviewState,
)
from portal.identity.models import FactoryRole
from portal.ledger.models import Allocation
from portal.notifications.models import Notification
from portal.projects import services as projects
from tests.grants_world import complete_draft, login_of, mail_settings, make_grant_world, staff
from tests.ledger_world import HOUR, person

S = ApplicationState
SETTINGS = mail_settings()
SCORES = {"excellence": 5, "impact": 4, "readiness": 3}


def through_review(db, g, application, *, scores=SCORES, second_scores=None):
    """Submit, pass the administrative check, technical assessment, two scientific reviews."""
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    grants.administrative_check(db, SETTINGS, g.manager, application, passed=True)
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
    tech = grants.assign_reviewer(db, SETTINGS, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, tech.id, comment_to_applicant="Runs fine on H100.", feasible=True)
    grants.complete_technical_assessment(db, SETTINGS, g.manager, application)
    reviewers = [staff(db, FactoryRole.REVIEWER, f"Reviewer{i}") for i in range(2)]
    for reviewer, given in zip(reviewers, [scores, second_scores or scores], strict=True):
        review = grants.assign_reviewer(db, SETTINGS, g.manager, application, reviewer, kind=ReviewKind.SCIENTIFIC)
        grants.submit_review(
            db, reviewer, review.id, comment_to_applicant="Solid plan.", comment_to_panel="Fund it.", scores=given
        )
    return reviewers


def test_the_full_peer_review_path_ends_in_an_allocation(db):
    g = make_grant_world(db)
    application = complete_draft(db, g, hours=200)
    through_review(db, g, application)
    grants.request_reply(db, SETTINGS, g.manager, application)
    grants.submit_reply(db, g.pi, application, text="Thank you; we will use checkpoints.")
    grants.rank(db, SETTINGS, g.manager, application)
    assert application.state == S.RANKED
    assert application.score == 5 * 50 + 4 * 30 + 3 * 20
    grants.decide_accept(db, SETTINGS, g.manager, application, awarded={g.ledger.gpu.id: 150 * HOUR})
    assert application.state == S.ACCEPTED
    allocation = db.exec(select(Allocation).where(Allocation.project_id == g.project.id)).one()
    assert (allocation.balance, allocation.source) == (150 * HOUR, "award")
    budget = db.exec(select(CallBudget).where(CallBudget.call_id == g.call.id)).one()
    assert budget.awarded == 150 * HOUR
    subjects = [n.subject for n in db.exec(select(Notification).where(Notification.user_id == g.pi.id))]
    assert "Decision on “Speech models for Baltic languages”: accepted" in subjects


def test_every_illegal_step_is_refused_with_a_named_error(db):
    g = make_grant_world(db)
    application = complete_draft(db, g)
    for step in (
        lambda: grants.rank(db, SETTINGS, g.manager, application),
        lambda: grants.request_reply(db, SETTINGS, g.manager, application),
        lambda: grants.complete_technical_assessment(db, SETTINGS, g.manager, application),
        lambda: grants.administrative_check(db, SETTINGS, g.manager, application, passed=True),
        lambda: grants.decide_accept(db, SETTINGS, g.manager, application, awarded={g.ledger.gpu.id: HOUR}),
    ):
        with pytest.raises(grants.IllegalTransition):
            step()
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    with pytest.raises(grants.IllegalTransition):
        grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    with pytest.raises(grants.IllegalTransition):
        grants.save_draft(db, g.pi, application, title="Changed after submission")
    grants.withdraw(db, SETTINGS, g.pi, application)
    with pytest.raises(grants.IllegalTransition):
        grants.withdraw(db, SETTINGS, g.pi, application)
    assert application.state == S.WITHDRAWN


def test_the_transition_table_covers_each_state(db):
    steps = {step for (_state, step) in grants.TRANSITIONS}
    assert steps == {
        "submit",
        "pass_administrative_check",
        "complete_technical_assessment",
        "request_reply",
        "rank",
        "accept",
        "reject",
        "withdraw",
    }
    for state in (S.ACCEPTED, S.REJECTED, S.WITHDRAWN):
        assert not [k for k in grants.TRANSITIONS if k[0] == state], f"{state} is final"


def test_submitting_freezes_a_version_and_validates_first(db):
    g = make_grant_world(db)
    application = grants.start_application(db, g.pi, login_of(g.pi), call=g.call, project=g.project, title="T")
    with pytest.raises(InvalidInput) as refused:
        grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    assert set(refused.value.errors) == {"abstract", "answers.software", "answers.nodes", "requests"}
    assert application.state == S.DRAFT
    grants.save_draft(
        db,
        g.pi,
        application,
        abstract="A",
        answers={"software": "JAX", "nodes": "4"},
        requests=[grants.RequestInput(g.ledger.gpu.id, 500 * HOUR, "too much")],
    )
    with pytest.raises(InvalidInput, match="not complete") as too_big:
        grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    assert "between 1.0 GPU-hours and 400.0 GPU-hours" in too_big.value.errors["requests"]
    grants.save_draft(db, g.pi, application, requests=[grants.RequestInput(g.ledger.gpu.id, 100 * HOUR, "ok")])
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    (version,) = db.exec(select(ApplicationVersion).where(ApplicationVersion.application_id == application.id))
    assert version.content["answers"] == {"software": "JAX", "nodes": 4}
    assert version.content["requests"][0]["requested"] == 100 * HOUR


def test_drafts_check_types_and_lengths_as_they_are_saved(db):
    g = make_grant_world(db)
    application = complete_draft(db, g)
    with pytest.raises(InvalidInput) as refused:
        grants.save_draft(db, g.pi, application, answers={"nodes": "many", "field": "Astrology", "software": "x" * 501})
    assert refused.value.errors == {
        "answers.nodes": "Enter a whole number.",
        "answers.field": "Choose one of the options.",
        "answers.software": "At most 500 characters.",
    }
    db.refresh(application)
    assert application.answers == {"software": "PyTorch", "nodes": 8}


def test_only_an_affiliated_or_substantially_identified_pi_may_apply(db):
    g = make_grant_world(db)
    with pytest.raises(grants.NotEligible, match="substantial"):
        grants.start_application(
            db, g.pi, login_of(g.pi, level=AssuranceLevel.LOW), call=g.call, project=g.project, title="T"
        )
    grants.start_application(
        db, g.pi, login_of(g.pi, level=AssuranceLevel.LOW, affiliation=True), call=g.call, project=g.project, title="T"
    )
    member = person(db, "Member")
    _inv, link = projects.invite_member(db, SETTINGS, g.pi, g.project, email=member.email or "", role="manager")
    projects.accept_invitation(db, member, link.rsplit("/", 1)[1])
    with pytest.raises(NotAuthorised, match="PI"):
        grants.start_application(db, member, login_of(member), call=g.call, project=g.project, title="T")


@pytest.mark.parametrize(
    ("kinds", "countries", "reason"),
    [(["sme"], [], "this call is for sme"), (["university"], ["PL"], "is in LT; this call is for organisations in PL")],
)
def test_ineligible_organisations_fail_the_administrative_check(db, kinds, countries, reason):
    g = make_grant_world(db, kinds=kinds, countries=countries)
    application = complete_draft(db, g)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    with pytest.raises(grants.NotEligible, match=reason):
        grants.administrative_check(db, SETTINGS, g.manager, application, passed=True)
    grants.administrative_check(db, SETTINGS, g.manager, application, passed=False, reason="Not eligible.")
    assert application.state == S.REJECTED


def test_playground_applications_are_decided_at_once(db):
    g = make_grant_world(db, mode=ReviewMode.AUTOMATIC)
    application = complete_draft(db, g, hours=20)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    db.refresh(application)
    assert application.state == S.ACCEPTED
    assert db.exec(select(Allocation).where(Allocation.project_id == g.project.id)).one().balance == 20 * HOUR


def test_an_ineligible_playground_application_is_rejected_with_the_reason(db):
    g = make_grant_world(db, mode=ReviewMode.AUTOMATIC, kinds=["public_body"])
    application = complete_draft(db, g, hours=20)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    db.refresh(application)
    assert application.state == S.REJECTED
    assert "this call is for public body" in application.decision_reason


def test_fast_lane_goes_from_technical_assessment_to_the_decision(db):
    g = make_grant_world(db, mode=ReviewMode.TECHNICAL)
    application = complete_draft(db, g)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    grants.administrative_check(db, SETTINGS, g.manager, application, passed=True)
    with pytest.raises(grants.IllegalTransition, match="technical assessment must be submitted"):
        grants.complete_technical_assessment(db, SETTINGS, g.manager, application)
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
    review = grants.assign_reviewer(db, SETTINGS, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, review.id, comment_to_applicant="OK", feasible=True)
    grants.complete_technical_assessment(db, SETTINGS, g.manager, application)
    assert application.state == S.RANKED
    assert grants.decision_due(g.call, date(2026, 11, 27)) == date(2026, 12, 11)  # Friday + 10 working days


def test_peer_review_needs_two_reviews_before_the_reply(db):
    g = make_grant_world(db)
    application = complete_draft(db, g)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    grants.administrative_check(db, SETTINGS, g.manager, application, passed=True)
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
    tech = grants.assign_reviewer(db, SETTINGS, g.manager, application, operator, kind=ReviewKind.TECHNICAL)
    grants.submit_review(db, operator, tech.id, comment_to_applicant="OK", feasible=True)
    grants.complete_technical_assessment(db, SETTINGS, g.manager, application)
    reviewer = staff(db, FactoryRole.REVIEWER, "Solo")
    review = grants.assign_reviewer(db, SETTINGS, g.manager, application, reviewer, kind=ReviewKind.SCIENTIFIC)
    grants.submit_review(db, reviewer, review.id, comment_to_applicant="Good", scores=SCORES)
    with pytest.raises(grants.IllegalTransition, match="At least 2 scientific reviews are needed; 1 are in"):
        grants.request_reply(db, SETTINGS, g.manager, application)


def test_reviewers_from_the_applying_organisation_are_refused(db):
    g = make_grant_world(db)
    application = complete_draft(db, g)
    through_review(db, g, application)  # puts it into peer review
    colleague = staff(db, FactoryRole.REVIEWER, "Colleague")
    org = projects.get_organisation(db, g.pi, g.project.organisation_id)
    other = projects.create_project(db, g.pi, org, title="Other project of the same university")
    _inv, link = projects.invite_member(db, SETTINGS, g.pi, other, email=colleague.email or "", role="member")
    projects.accept_invitation(db, colleague, link.rsplit("/", 1)[1])
    with pytest.raises(grants.ConflictOfInterest, match="works in a project of the applying organisation"):
        grants.assign_reviewer(db, SETTINGS, g.manager, application, colleague, kind=ReviewKind.SCIENTIFIC)
    not_a_reviewer = person(db, "Random")
    with pytest.raises(InvalidInput, match="not a reviewer"):
        grants.assign_reviewer(db, SETTINGS, g.manager, application, not_a_reviewer, kind=ReviewKind.SCIENTIFIC)


def test_a_reviewer_declares_a_conflict_and_sees_others_only_after_submitting(db):
    g = make_grant_world(db)
    application = complete_draft(db, g)
    first, second = through_review(db, g, application)
    late = staff(db, FactoryRole.REVIEWER, "Late")
    late_review = grants.assign_reviewer(db, SETTINGS, g.manager, application, late, kind=ReviewKind.SCIENTIFIC)
    assert [r.reviewer_id for r in grants.reviews_visible_to(db, late, application)] == [late.id]
    conflicted = staff(db, FactoryRole.REVIEWER, "Conflicted")
    conflict = grants.assign_reviewer(db, SETTINGS, g.manager, application, conflicted, kind=ReviewKind.SCIENTIFIC)
    grants.declare_conflict(db, conflicted, conflict.id, reason="Former PhD supervisor of the PI")
    assert db.get(type(conflict), conflict.id).state == ReviewState.CONFLICT
    grants.submit_review(db, late, late_review.id, comment_to_applicant="Fine", scores=SCORES)
    seen = {(r.reviewer_id, r.kind) for r in grants.reviews_visible_to(db, late, application)}
    # every submitted review (the technical assessment too), never the declined one
    assert {(first.id, "scientific"), (second.id, "scientific"), (late.id, "scientific")} <= seen
    assert conflicted.id not in {reviewer for reviewer, _kind in seen}


def test_applicants_read_comments_without_reviewer_names_or_panel_notes(db):
    g = make_grant_world(db)
    application = complete_draft(db, g)
    through_review(db, g, application)
    comments = grants.comments_for_applicant(db, g.pi, application)
    assert ("scientific", "Solid plan.") in comments
    assert all("Fund it." not in text for _kind, text in comments)
    assert grants.reviews_visible_to(db, g.pi, application) == []


def test_ranking_orders_by_weighted_score_and_shows_ties(db):
    g = make_grant_world(db)
    apps = []
    for scores in (
        {"excellence": 3, "impact": 3, "readiness": 3},
        {"excellence": 5, "impact": 5, "readiness": 5},
        {"excellence": 3, "impact": 3, "readiness": 3},
    ):
        pi = person(db, "Pi")
        org = projects.create_organisation(db, pi, name="Uni", kind="university", country="EE")
        project = projects.create_project(db, pi, org, title="P")
        g.pi, g.project = pi, project
        application = complete_draft(db, g, hours=10)
        through_review(db, g, application, scores=scores)
        grants.request_reply(db, SETTINGS, g.manager, application)
        grants.rank(db, SETTINGS, g.manager, application)
        apps.append(application)
    rows = grants.ranking(db, g.manager, g.call)
    assert [(r.position, r.application.id, r.tied) for r in rows] == [
        (1, apps[1].id, False),
        (2, apps[0].id, True),
        (2, apps[2].id, True),
    ]
    with pytest.raises(NotAuthorised):
        grants.ranking(db, g.pi, g.call)


def _ranked(db, g, hours):
    application = complete_draft(db, g, hours=hours)
    through_review(db, g, application)
    grants.request_reply(db, SETTINGS, g.manager, application)
    grants.rank(db, SETTINGS, g.manager, application)
    return application


def test_awards_stay_within_the_request_and_the_budget(db):
    g = make_grant_world(db, budget_hours=300)
    application = _ranked(db, g, 200)
    with pytest.raises(InvalidInput, match="not valid"):
        grants.decide_accept(db, SETTINGS, g.manager, application, awarded={g.ledger.gpu.id: 201 * HOUR})
    grants.decide_accept(db, SETTINGS, g.manager, application, awarded={g.ledger.gpu.id: 200 * HOUR})
    g.pi = person(db, "Second")
    org = projects.create_organisation(db, g.pi, name="Uni2", kind="university", country="LV")
    g.project = projects.create_project(db, g.pi, org, title="Second")
    second = _ranked(db, g, 200)
    with pytest.raises(grants.BudgetExhausted, match=r"has 100\.0 GPU-hours left for H100 GPU-hours at"):
        grants.decide_accept(db, SETTINGS, g.manager, second, awarded={g.ledger.gpu.id: 150 * HOUR})
    db.refresh(second)
    assert second.state == S.RANKED  # nothing happened
    assert db.exec(select(Allocation).where(Allocation.project_id == g.project.id)).all() == []
    grants.decide_accept(db, SETTINGS, g.manager, second, awarded={g.ledger.gpu.id: 100 * HOUR})


def test_when_capacity_has_run_out_the_acceptance_fails_and_changes_nothing(db):
    g = make_grant_world(db, capacity_hours=50)
    application = _ranked(db, g, 100)
    with pytest.raises(Exception, match="not enough capacity"):
        grants.decide_accept(db, SETTINGS, g.manager, application, awarded={g.ledger.gpu.id: 100 * HOUR})
    db.refresh(application)
    assert application.state == S.RANKED
    assert db.exec(select(CallBudget).where(CallBudget.call_id == g.call.id)).one().awarded == 0
    assert db.exec(select(Allocation).where(Allocation.project_id == g.project.id)).all() == []


def test_an_award_in_two_tranches_releases_the_second_later(db):
    g = make_grant_world(db)
    application = _ranked(db, g, 200)
    grants.decide_accept(
        db, SETTINGS, g.manager, application, awarded={g.ledger.gpu.id: 200 * HOUR}, first_tranche_percent=50
    )
    allocation = db.exec(select(Allocation).where(Allocation.project_id == g.project.id)).one()
    assert allocation.balance == 100 * HOUR
    held = db.exec(select(Award).where(Award.application_id == application.id, Award.tranche == 2)).one()
    assert held.released_at is None
    grants.release_tranche(db, SETTINGS, g.manager, held.id)
    db.refresh(allocation)
    assert allocation.balance == 200 * HOUR
    with pytest.raises(grants.IllegalTransition):
        grants.release_tranche(db, SETTINGS, g.manager, held.id)


def test_only_the_call_manager_decides(db):
    g = make_grant_world(db)
    application = _ranked(db, g, 10)
    someone = person(db, "Someone")
    with pytest.raises(NotAuthorised):
        grants.decide_accept(db, SETTINGS, someone, application, awarded={g.ledger.gpu.id: 10 * HOUR})
    with pytest.raises(NotFound):
        grants.get_application(db, someone, application.id)
    assert db.get(Application, application.id).state == S.RANKED


def test_recurring_cutoffs_come_every_two_weeks(db):
    g = make_grant_world(db)
    first = g.call.first_cutoff
    from datetime import UTC, datetime, time, timedelta

    assert grants.next_cutoff(g.call, datetime.combine(first, time(12), tzinfo=UTC)) == first
    assert grants.next_cutoff(g.call, datetime.combine(first + timedelta(days=1), time(), tzinfo=UTC)) == (
        first + timedelta(days=14)
    )


def test_reviewers_are_reminded_once_a_day_when_a_review_is_due_or_late(db, make_settings, mailbox):
    import time_machine

    from portal.grants.jobs import remind_due_reviews
    from tests.ledger_world import at

    settings = make_settings(mail_backend="smtp", smtp_port=mailbox.port)
    g = make_grant_world(db)
    application = complete_draft(db, g)
    grants.submit(db, SETTINGS, g.pi, login_of(g.pi), application)
    grants.administrative_check(db, SETTINGS, g.manager, application, passed=True)
    operator = staff(db, FactoryRole.SITE_OPERATOR, "Operator")
    grants.assign_reviewer(
        db, SETTINGS, g.manager, application, operator, kind=ReviewKind.TECHNICAL, due_on=date(2030, 3, 10)
    )
    with time_machine.travel(at(2030, 3, 1), tick=False):
        assert remind_due_reviews(db, settings) == 0  # not due for nine days
    with time_machine.travel(at(2030, 3, 8), tick=False):
        assert remind_due_reviews(db, settings) == 1
        assert remind_due_reviews(db, settings) == 0  # once a day
    with time_machine.travel(at(2030, 3, 11), tick=False):
        assert remind_due_reviews(db, settings) == 1
    subjects = [m["Subject"] for m in mailbox.messages]
    assert subjects == [
        "Review due: Speech models for Baltic languages",
        "Review overdue: Speech models for Baltic languages",
    ]
    assert mailbox.messages[0]["To"] == operator.email
