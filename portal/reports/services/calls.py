"""The tables of the calls page: applications per call (started, submitted, in review, decided) and the
research outputs per call, site and country.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from portal.grants.models import Application, ApplicationState, Award, Call, OutputKind, ResearchOutput
from portal.ledger.models import Resource, Site
from portal.projects.models import Organisation, Project
from portal.reports.services.scope import Scope
from portal.reports.services.table import SITE, Column, Table, percent

IN_REVIEW = (
    ApplicationState.SUBMITTED,
    ApplicationState.TECHNICAL_ASSESSMENT,
    ApplicationState.PEER_REVIEW,
    ApplicationState.REPLY,
    ApplicationState.RANKED,
)


def funnel_table(db: Session, scope: Scope) -> Table:
    """Per call, newest first: applications started, submitted (ever), in review, accepted, rejected,
    withdrawn, and the share of submitted ones accepted. Calls are not tied to sites: every call is listed."""
    calls = db.exec(select(Call).order_by(col(Call.opens_at).desc(), col(Call.id).desc())).all()
    by_state: dict[tuple[int, str], int] = {
        (int(c), str(s)): int(n)
        for c, s, n in db.exec(
            select(Application.call_id, Application.state, func.count()).group_by(
                Application.call_id, Application.state
            )
        ).all()
    }
    submitted = dict(
        db.exec(
            select(Application.call_id, func.count())
            .where(col(Application.submitted_at).is_not(None))
            .group_by(Application.call_id)
        ).all()
    )
    table = Table(
        "funnel",
        "Applications per call",
        [
            Column("call_id", "Call id", "int"),
            Column("call", "Call"),
            Column("call_state", "Call state"),
            Column("started", "Started", "int"),
            Column("submitted", "Submitted", "int"),
            Column("in_review", "In review", "int"),
            Column("accepted", "Accepted", "int"),
            Column("rejected", "Rejected", "int"),
            Column("withdrawn", "Withdrawn", "int"),
            Column("accepted_percent", "Accepted of submitted", "percent"),
        ],
    )
    for call in calls:
        count = _state_counter(by_state, call.id)
        accepted = count(ApplicationState.ACCEPTED)
        sent = int(submitted.get(call.id, 0))
        table.rows.append(
            {
                "call_id": call.id,
                "call": call.title,
                "call_state": str(call.state),
                "started": count(*ApplicationState),
                "submitted": sent,
                "in_review": count(*IN_REVIEW),
                "accepted": accepted,
                "rejected": count(ApplicationState.REJECTED),
                "withdrawn": count(ApplicationState.WITHDRAWN),
                "accepted_percent": percent(accepted, sent),
            }
        )
    return table


def outputs_table(db: Session, scope: Scope) -> Table:
    """Research outputs per call, site and country: an output of a project counts once for each call that
    awarded the project hours at a site in view, under the country of the project's organisation. All time, as
    the projects list them (the quarter does not apply: an output comes long after the hours)."""
    rows = db.exec(
        select(
            Call.id,
            Call.title,
            Site.name,
            Organisation.country,
            ResearchOutput.kind,
            func.count(sa.distinct(ResearchOutput.id)),
        )
        .join(Project, Project.id == ResearchOutput.project_id)
        .outerjoin(Organisation, Organisation.id == Project.organisation_id)
        .join(
            Application,
            sa.and_(Application.project_id == Project.id, Application.state == ApplicationState.ACCEPTED),
        )
        .join(Call, Call.id == Application.call_id)
        .join(Award, sa.and_(Award.application_id == Application.id, Award.tranche == 1))
        .join(Resource, Resource.id == Award.resource_id)
        .join(Site, Site.id == Resource.site_id)
        .where(col(Resource.id).in_(scope.resource_ids))
        .group_by(Call.id, Call.title, Site.name, Organisation.country, ResearchOutput.kind)
    ).all()
    counts: dict[tuple[int, str, str, str | None], dict[str, int]] = {}
    for call_id, title, site, country, kind, n in rows:
        counts.setdefault((int(call_id), title, site, country), {})[str(kind)] = int(n)
    kinds = [k.value for k in OutputKind]
    table = Table(
        "outputs",
        "Research outputs per call, site and country",
        [
            Column("call_id", "Call id", "int"),
            Column("call", "Call"),
            SITE,
            Column("country", "Country"),
            *(Column(f"{k}s", f"{OutputKind(k).label}s", "int") for k in kinds),
            Column("outputs", "All outputs", "int"),
        ],
    )
    for (call_id, title, site, country), by_kind in sorted(
        counts.items(), key=lambda i: (-i[0][0], i[0][2], i[0][3] or "")
    ):
        row: dict[str, Any] = {"call_id": call_id, "call": title, "site": site, "country": country}
        row.update({f"{k}s": by_kind.get(k, 0) for k in kinds})
        row["outputs"] = sum(by_kind.values())
        table.rows.append(row)
    return table


def _state_counter(by_state: dict[tuple[int, str], int], call_id: int) -> Callable[..., int]:
    def count(*states: ApplicationState) -> int:
        return sum(by_state.get((call_id, str(s)), 0) for s in states)

    return count
