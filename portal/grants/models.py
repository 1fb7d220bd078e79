"""Calls for proposals, applications, reviews and awards of compute hours."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import StrEnumType, UTCDateTime, utcnow
from portal.messages import current_locale, from_json, render


class AccessMode(StrEnum):
    """Modelled on the EuroHPC AI Factories' access modes."""

    PLAYGROUND = "playground"
    FAST_LANE = "fast_lane"
    LARGE_SCALE = "large_scale"

    @property
    def label(self) -> str:
        return {"playground": "Playground", "fast_lane": "Fast Lane", "large_scale": "Large Scale"}[self.value]


class ReviewMode(StrEnum):
    #: Awarded automatically once the administrative (eligibility) check passes.
    AUTOMATIC = "automatic"
    #: Administrative check and technical assessment, then the call manager decides.
    TECHNICAL = "technical"
    #: Administrative check, technical assessment, scientific peer review, right to reply, ranking.
    PEER_REVIEW = "peer_review"


class CallState(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    CLOSED = "closed"


class Call(SQLModel, table=True):
    __tablename__ = "calls"
    __table_args__ = (
        sa.CheckConstraint("duration_months IN (3, 6, 12)", name="duration_3_6_12"),
        sa.CheckConstraint("closes_at > opens_at", name="dates_ordered"),
    )

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=200)
    description: str = Field(default="", max_length=20_000)
    access_mode: AccessMode = Field(sa_type=StrEnumType(AccessMode, 16))
    review_mode: ReviewMode = Field(sa_type=StrEnumType(ReviewMode, 16))
    state: CallState = Field(default=CallState.DRAFT, sa_type=StrEnumType(CallState, 16))
    #: Organisation kinds that may apply (values of OrganisationKind).
    eligible_kinds: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    #: ISO country codes whose organisations may apply; empty means any country.
    eligible_countries: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    #: Smallest and largest request per application, in base units summed over resources of one kind.
    min_request: int = Field(default=0, sa_type=sa.BigInteger)
    max_request: int = Field(sa_type=sa.BigInteger)
    #: Months an awarded allocation runs.
    duration_months: int = Field(default=6)
    opens_at: datetime = Field(sa_type=UTCDateTime)
    closes_at: datetime = Field(sa_type=UTCDateTime)
    #: First cut-off; applications submitted by a cut-off are evaluated together.
    first_cutoff: date
    #: Days between cut-offs for recurring calls (14 = every two weeks); None for a single cut-off.
    cutoff_every_days: int | None = Field(default=None)
    #: Working days after a cut-off by which a decision is due (10 for Fast Lane).
    decision_within_working_days: int | None = Field(default=None)
    #: Typed questions of the application form (see ``portal.grants.forms_schema``).
    questions: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON)
    #: Scientific review criteria: [{"key", "label", "weight"}], weights summing to 100.
    criteria: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON)
    manager_id: int = Field(foreign_key="users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CallBudget(SQLModel, table=True):
    """Hours of one resource a call may award; ``awarded`` only grows through conditional updates."""

    __tablename__ = "call_budgets"
    __table_args__ = (
        sa.UniqueConstraint("call_id", "resource_id"),
        sa.CheckConstraint("awarded <= budget", name="awarded_within_budget"),
        sa.CheckConstraint("awarded >= 0", name="awarded_not_negative"),
    )

    id: int | None = Field(default=None, primary_key=True)
    call_id: int = Field(foreign_key="calls.id", index=True)
    resource_id: int = Field(foreign_key="resources.id")
    budget: int = Field(sa_type=sa.BigInteger)
    awarded: int = Field(default=0, sa_type=sa.BigInteger)


class ApplicationState(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    TECHNICAL_ASSESSMENT = "technical_assessment"
    PEER_REVIEW = "peer_review"
    REPLY = "reply"
    RANKED = "ranked"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


class Application(SQLModel, table=True):
    __tablename__ = "applications"

    id: int | None = Field(default=None, primary_key=True)
    call_id: int = Field(foreign_key="calls.id", index=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    #: The PI who applies.
    applicant_id: int = Field(foreign_key="users.id", index=True)
    state: ApplicationState = Field(default=ApplicationState.DRAFT, sa_type=StrEnumType(ApplicationState, 24))
    title: str = Field(max_length=200)
    abstract: str = Field(default="", max_length=5000)
    #: Question key -> answer (text, number, choice, or the id of an uploaded PDF).
    answers: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    #: E-mail addresses of co-applicants.
    co_applicants: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    #: Submitted versions so far; the latest is frozen in ``application_versions``.
    version: int = Field(default=0)
    #: Weighted score (0–500: 1–5 scale × 100 weight points), set when ranked.
    score: int | None = Field(default=None)
    #: Why it was accepted or rejected, as stored (the API, the audit log): in English where the portal decided (an
    #: automatic decision, a failed administrative check), as written where the call's manager did.
    decision_reason: str = Field(default="", max_length=5000)
    #: The portal's own reasons as ``portal.messages`` texts (``messages.to_json``), so that a page shows them in its
    #: reader's language; None where a person wrote them.
    decision_message: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    submitted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def shown_decision_reason(self) -> str:
        """The reasons in the language of the request that shows them (a page's, the API's ``Accept-Language``)."""
        if self.decision_message is None:
            return self.decision_reason
        return render(from_json(self.decision_message), current_locale())


class ResourceRequest(SQLModel, table=True):
    """Hours of one resource an application asks for, and (after the decision) what was awarded."""

    __tablename__ = "resource_requests"
    __table_args__ = (
        sa.UniqueConstraint("application_id", "resource_id"),
        sa.CheckConstraint("requested > 0", name="requested_positive"),
        sa.CheckConstraint("awarded IS NULL OR (awarded >= 0 AND awarded <= requested)", name="award_within_request"),
    )

    id: int | None = Field(default=None, primary_key=True)
    application_id: int = Field(foreign_key="applications.id", index=True)
    resource_id: int = Field(foreign_key="resources.id")
    requested: int = Field(sa_type=sa.BigInteger)
    justification: str = Field(default="", max_length=5000)
    awarded: int | None = Field(default=None, sa_type=sa.BigInteger)


class ApplicationVersion(SQLModel, table=True):
    """A submitted application as it was at submission: what the reviewers read."""

    __tablename__ = "application_versions"
    __table_args__ = (sa.UniqueConstraint("application_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    application_id: int = Field(foreign_key="applications.id", index=True)
    version: int
    content: dict[str, Any] = Field(sa_type=sa.JSON)
    submitted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ReviewKind(StrEnum):
    TECHNICAL = "technical"
    SCIENTIFIC = "scientific"


class ReviewState(StrEnum):
    ASSIGNED = "assigned"
    CONFLICT = "conflict"
    SUBMITTED = "submitted"


class Review(SQLModel, table=True):
    __tablename__ = "reviews"
    __table_args__ = (sa.UniqueConstraint("application_id", "reviewer_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    application_id: int = Field(foreign_key="applications.id", index=True)
    reviewer_id: int = Field(foreign_key="users.id", index=True)
    kind: ReviewKind = Field(sa_type=StrEnumType(ReviewKind, 16))
    state: ReviewState = Field(default=ReviewState.ASSIGNED, sa_type=StrEnumType(ReviewState, 16))
    due_on: date | None = Field(default=None)
    #: When the reviewer was last reminded that the review is due.
    reminded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    conflict_reason: str = Field(default="", max_length=1000)
    #: Technical assessment: feasible or not.
    feasible: bool | None = Field(default=None)
    #: Scientific review: criterion key -> score 1..5.
    scores: dict[str, int] = Field(default_factory=dict, sa_type=sa.JSON)
    comment_to_applicant: str = Field(default="", max_length=10_000)
    comment_to_panel: str = Field(default="", max_length=10_000)
    assigned_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    submitted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Reply(SQLModel, table=True):
    """The applicant's answer to the reviews, before ranking."""

    __tablename__ = "replies"

    id: int | None = Field(default=None, primary_key=True)
    application_id: int = Field(foreign_key="applications.id", unique=True)
    text: str = Field(max_length=10_000)
    submitted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Award(SQLModel, table=True):
    """A tranche of an accepted application: opened now, or later after a progress report."""

    __tablename__ = "awards"

    id: int | None = Field(default=None, primary_key=True)
    application_id: int = Field(foreign_key="applications.id", index=True)
    resource_id: int = Field(foreign_key="resources.id")
    tranche: int = Field(default=1)
    amount: int = Field(sa_type=sa.BigInteger)
    #: The allocation it opened or credited; None while the tranche waits for its progress report.
    allocation_id: int | None = Field(default=None, foreign_key="allocations.id")
    released_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApplicationFile(SQLModel, table=True):
    """A PDF uploaded as the answer to a question; kept in the database with the application it belongs to."""

    __tablename__ = "application_files"

    id: int | None = Field(default=None, primary_key=True)
    application_id: int = Field(foreign_key="applications.id", index=True)
    question_key: str = Field(max_length=64)
    filename: str = Field(max_length=255)
    size: int
    sha256: str = Field(max_length=64)
    content: bytes = Field(sa_type=sa.LargeBinary)
    uploaded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    #: Who uploaded it: their files count against their upload quota (``PORTAL_UPLOAD_QUOTA_BYTES``).
    uploaded_by_id: int | None = Field(default=None, foreign_key="users.id", index=True)


class OutputKind(StrEnum):
    """What a project produced with its hours, as EuroHPC-style access reports count it."""

    PUBLICATION = "publication"
    DATASET = "dataset"
    SOFTWARE = "software"

    @property
    def label(self) -> str:
        return {"publication": "Publication", "dataset": "Dataset", "software": "Software"}[self.value]


class ResearchOutput(SQLModel, table=True):
    """A publication, data set or piece of software a project lists as a result of its work.

    Nothing is looked up online: the DOI and the citation are kept as the project entered them, the DOI only
    checked for the syntax of the DOI Handbook (``10.<registrant>/<suffix>``)."""

    __tablename__ = "research_outputs"
    __table_args__ = (sa.CheckConstraint("year BETWEEN 1900 AND 2999", name="year_plausible"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    kind: OutputKind = Field(sa_type=StrEnumType(OutputKind, 16))
    #: The DOI without a resolver prefix (``10.5281/zenodo.123``), in the case it was entered; None if it has none.
    doi: str | None = Field(default=None, max_length=300)
    #: The citation exactly as the project wrote it.
    citation: str = Field(max_length=2000)
    #: Where to read or download it, when it has no DOI or a better landing page (http or https).
    url: str | None = Field(default=None, max_length=500)
    #: Year of publication or release.
    year: int
    added_by_id: int = Field(foreign_key="users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ReportKind(StrEnum):
    #: Asked for at the middle of an awarded allocation's period.
    PROGRESS = "progress"
    #: Asked for at its end.
    FINAL = "final"

    @property
    def label(self) -> str:
        return {"progress": "Progress report", "final": "Final report"}[self.value]


class ProgressReport(SQLModel, table=True):
    """A report the worker asks an awarded application's project for (``grants.jobs.request_award_reports``).

    One of each kind per accepted application: its allocations (one per resource) share their dates. The state
    (requested, submitted, overdue) follows from the dates, see ``state``."""

    __tablename__ = "progress_reports"
    __table_args__ = (sa.UniqueConstraint("application_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    application_id: int = Field(foreign_key="applications.id", index=True)
    kind: ReportKind = Field(sa_type=StrEnumType(ReportKind, 16))
    #: The last day the report is on time.
    due_on: date
    requested_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    #: The report's text, as the project submitted it.
    text: str = Field(default="", max_length=20_000)
    submitted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    submitted_by_id: int | None = Field(default=None, foreign_key="users.id")
    #: When the PI was reminded that it is due soon (once).
    reminded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: When the PI was told that it is overdue (once).
    overdue_notified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    def state(self, today: date) -> str:
        """``submitted``; ``overdue`` once ``due_on`` has passed without it; ``requested`` before."""
        if self.submitted_at is not None:
            return "submitted"
        if today > self.due_on:
            return "overdue"
        return "requested"
