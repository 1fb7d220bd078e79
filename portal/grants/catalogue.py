"""The factory's standing calls, modelled on the EuroHPC AI Factories' access modes: seed data for a new
installation and the demo.

* Playground: small requests, awarded automatically once the eligibility check passes, 3 months.
* Fast Lane: up to 50,000 GPU-hours, a technical assessment, a decision within 10 working days of a
  cut-off every 14 days, 6 months.
* Large Scale: from 50,000 GPU-hours, scientific peer review with weighted criteria and a right to reply,
  12 months.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from portal.db import utcnow
from portal.grants import services as grants
from portal.grants.models import AccessMode, Call, CallState, ReviewMode
from portal.identity.models import User
from portal.ledger.models import UNITS, Resource, ResourceKind


@dataclass(frozen=True)
class PlannedCall:
    title: str
    description: str
    access_mode: AccessMode
    review_mode: ReviewMode
    #: Per application, in GPU-hours (or core-hours; TB-months for storage calls).
    min_hours: int
    max_hours: int
    duration_months: int
    #: What the call may award of each of its resources, in display units per kind.
    budget: dict[ResourceKind, int]
    first_cutoff_in_days: int = 0
    cutoff_every_days: int | None = None
    decision_within_working_days: int | None = None
    questions: list[dict[str, Any]] = field(default_factory=list)
    criteria: list[dict[str, Any]] = field(default_factory=list)


SOFTWARE = {"key": "software", "label": "Software stack", "type": "text", "required": True, "max_length": 1000}
FIELD = {
    "key": "field",
    "label": "Field",
    "type": "choice",
    "required": False,
    "choices": ["Language models", "Computer vision", "Speech", "Science and engineering", "Health", "Other"],
}

CALLS: tuple[PlannedCall, ...] = (
    PlannedCall(
        title="Playground",
        description=(
            "Try out AI workloads on the factory's GPUs: small requests, decided automatically once your "
            "organisation's eligibility is checked. For startups, SMEs, researchers and the public sector."
        ),
        access_mode=AccessMode.PLAYGROUND,
        review_mode=ReviewMode.AUTOMATIC,
        min_hours=0,
        max_hours=2_000,
        duration_months=3,
        budget={ResourceKind.GPU: 50_000, ResourceKind.CPU: 500_000, ResourceKind.STORAGE: 100},
        questions=[
            {"key": "plan", "label": "What will you try?", "type": "text", "required": True, "max_length": 2000},
            {**SOFTWARE, "required": False},
            FIELD,
        ],
    ),
    PlannedCall(
        title="Fast Lane",
        description=(
            "Development, fine-tuning and inference at moderate scale. A site operator checks that the work "
            "runs as planned; the decision follows within 10 working days of each fortnightly cut-off."
        ),
        access_mode=AccessMode.FAST_LANE,
        review_mode=ReviewMode.TECHNICAL,
        min_hours=0,
        max_hours=50_000,
        duration_months=6,
        budget={ResourceKind.GPU: 1_000_000, ResourceKind.CPU: 5_000_000, ResourceKind.STORAGE: 2_000},
        first_cutoff_in_days=14,
        cutoff_every_days=14,
        decision_within_working_days=10,
        questions=[
            SOFTWARE,
            {
                "key": "largest_job",
                "label": "Largest job (GPUs)",
                "type": "number",
                "required": True,
                "min": 1,
                "max": 2048,
            },
            FIELD,
            {"key": "data_plan", "label": "Data management plan", "type": "pdf", "required": False},
        ],
    ),
    PlannedCall(
        title="Large Scale",
        description=(
            "Training and research needing more than 50,000 GPU-hours. Applications are assessed technically, "
            "reviewed by at least two scientific reviewers, answered by the applicant and ranked."
        ),
        access_mode=AccessMode.LARGE_SCALE,
        review_mode=ReviewMode.PEER_REVIEW,
        min_hours=50_000,
        max_hours=2_000_000,
        duration_months=12,
        budget={ResourceKind.GPU: 10_000_000, ResourceKind.CPU: 20_000_000, ResourceKind.STORAGE: 20_000},
        first_cutoff_in_days=60,
        cutoff_every_days=120,
        decision_within_working_days=40,
        questions=[
            {"key": "case", "label": "Scientific case", "type": "pdf", "required": True},
            SOFTWARE,
            {
                "key": "largest_job",
                "label": "Largest job (GPUs)",
                "type": "number",
                "required": True,
                "min": 8,
                "max": 4096,
            },
            {
                "key": "scaling",
                "label": "Evidence that the code scales",
                "type": "text",
                "required": True,
                "max_length": 3000,
            },
            FIELD,
        ],
        criteria=[
            {"key": "excellence", "label": "Scientific excellence", "weight": 40},
            {"key": "impact", "label": "Impact", "weight": 30},
            {"key": "readiness", "label": "Technical readiness", "weight": 20},
            {"key": "team", "label": "Team and management", "weight": 10},
        ],
    ),
)


def ensure_default_calls(
    db: Session, manager: User, resources: list[Resource], *, reason: str, now: datetime | None = None
) -> list[Call]:
    """Create and open the standing calls where no call of that title exists yet; open from today for a year.

    ``reason`` is what the audit log says for each call created and opened (the command or the demo).

    Each call gets a budget on each of ``resources`` (by the resource's kind). Calls that exist are left
    as they are, so running this again changes nothing.
    """
    if not resources:
        raise ValueError("The standing calls need at least one resource to award.")
    now = now or utcnow()
    today = grants.local_day(now)
    opens_at = grants.start_of_day(today)
    calls = []
    for planned in CALLS:
        existing = db.exec(select(Call).where(Call.title == planned.title)).first()
        if existing is not None:
            calls.append(existing)
            continue
        per_hour = UNITS[resources[0].kind][2]
        call = grants.create_call(
            db,
            None,
            title=planned.title,
            description=planned.description,
            access_mode=planned.access_mode,
            review_mode=planned.review_mode,
            manager=manager,
            budgets={r.id: planned.budget[r.kind] * UNITS[r.kind][2] for r in resources},
            min_request=planned.min_hours * per_hour,
            max_request=planned.max_hours * per_hour,
            duration_months=planned.duration_months,
            opens_at=opens_at,
            closes_at=grants.end_of_day(today + timedelta(days=365)),
            first_cutoff=today + timedelta(days=planned.first_cutoff_in_days),
            cutoff_every_days=planned.cutoff_every_days,
            decision_within_working_days=planned.decision_within_working_days,
            questions=planned.questions,
            criteria=planned.criteria,
            reason=reason,
        )
        calls.append(grants.set_call_state(db, manager, call, CallState.OPEN, reason=reason))
    return calls
