"""What the grants pages share: the blueprint, the number formats of the forms and the CSV, and the
application's page, which the applicant and the call manager both land on after a step."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from enum import StrEnum
from typing import Any

from flask import Blueprint, render_template
from flask_babel import get_locale, pgettext
from flask_babel import gettext as _
from flask_wtf import FlaskForm

from portal import formatting
from portal.db import get_db, utcnow
from portal.errors import DomainError
from portal.forms import ActionForm
from portal.grants import outputs, queries
from portal.grants import services as grants
from portal.grants.forms import (
    OUTPUT_KIND_LABELS,
    AssignReviewerForm,
    CheckFailForm,
    RejectForm,
    ReplyForm,
    accept_form,
)
from portal.grants.models import (
    AccessMode,
    ApplicationState,
    Call,
    CallState,
    OutputKind,
    ReportKind,
    ReviewKind,
    ReviewState,
)
from portal.ledger.models import UNITS, Resource, ResourceKind
from portal.web import actor

bp = Blueprint("grants", __name__)

S = ApplicationState


def hours_text(amount: int, kind: ResourceKind) -> str:
    """Base units as an editable number of display units: ``720000`` GPU-seconds -> ``"200"``."""
    value = (Decimal(amount) / Decimal(UNITS[ResourceKind(kind)][2])).normalize()
    return f"{value:f}"


def plain_amount(amount: int | None, kind: ResourceKind) -> str:
    """Display units with one decimal and no grouping, for CSV cells."""
    if amount is None:
        return ""
    value = (Decimal(amount) / Decimal(UNITS[ResourceKind(kind)][2])).quantize(Decimal("0.1"))
    return f"{value:f}"


#: What the pages call each state or kind of the grants' models, by model (two models share some values): each
#: word is looked up in the catalogue only when shown (a list shows one per row).
_WORDS: dict[type, dict[str, Callable[[], str]]] = {
    ApplicationState: {
        S.DRAFT: lambda: pgettext("application state", "draft"),
        S.SUBMITTED: lambda: pgettext("application state", "submitted"),
        S.TECHNICAL_ASSESSMENT: lambda: pgettext("application state", "technical assessment"),
        S.PEER_REVIEW: lambda: pgettext("application state", "peer review"),
        S.REPLY: lambda: pgettext("application state", "reply"),
        S.RANKED: lambda: pgettext("application state", "ranked"),
        S.ACCEPTED: lambda: pgettext("application state", "accepted"),
        S.REJECTED: lambda: pgettext("application state", "rejected"),
        S.WITHDRAWN: lambda: pgettext("application state", "withdrawn"),
    },
    CallState: {
        CallState.DRAFT: lambda: pgettext("call state", "draft"),
        CallState.OPEN: lambda: pgettext("call state", "open"),
        CallState.CLOSED: lambda: pgettext("call state", "closed"),
    },
    ReviewState: {
        ReviewState.ASSIGNED: lambda: pgettext("review state", "assigned"),
        ReviewState.CONFLICT: lambda: pgettext("review state", "conflict"),
        ReviewState.SUBMITTED: lambda: pgettext("review state", "submitted"),
    },
    ReviewKind: {ReviewKind.TECHNICAL: lambda: _("technical"), ReviewKind.SCIENTIFIC: lambda: _("scientific")},
    OutputKind: {kind: (lambda label=label: str(label)) for kind, label in OUTPUT_KIND_LABELS.items()},
    ReportKind: {ReportKind.PROGRESS: lambda: _("Progress report"), ReportKind.FINAL: lambda: _("Final report")},
    AccessMode: {mode: (lambda mode=mode: mode.label) for mode in AccessMode},  # as EuroHPC names them
}


@bp.app_template_filter("grants_label")
def grants_label(value: StrEnum) -> str:
    """What the pages call a state or kind of the grants' models, in the page's language. The models' own
    ``label`` stays English: the CLI, the CSV files, the audit log and the services' messages use it."""
    word = _WORDS.get(type(value), {}).get(value)
    return word() if word is not None else str(value)


def award_labels(requests: list[tuple[Any, Resource]]) -> list[tuple[int, str]]:
    """The accept form's field labels: one per resource the application asks for."""
    return [(resource.id, _("%(resource)s: hours to award", resource=resource.name)) for _r, resource in requests]


def plain_score(score: int) -> str:
    """A weighted score (0–500) on the 1–5 scale of the reviews, for CSV cells: ``430`` -> ``"4.30"``."""
    return f"{Decimal(score) / 100:.2f}"


@bp.app_template_filter("score")
def score_filter(score: int | None) -> str:
    """A weighted score on a page, the locale's way: ``430`` -> ``"4.30"`` (en), ``"4,30"`` (pl)."""
    if score is None:
        return "—"
    return formatting.number(Decimal(score) / 100, places=2, locale=str(get_locale() or formatting.DEFAULT_LOCALE))


@bp.app_template_global("call_dates")
def call_dates(call: Call) -> dict[str, Any]:
    """What the pages say about a call's days: its first and last day, in the call's time zone (named)."""
    return {
        "opens_on": grants.local_day(call.opens_at),
        "closes_on": grants.closing_day(call),
        "time_zone": grants.CALL_TIME_ZONE.key,
    }


def show_errors(form: FlaskForm, errors: dict[str, str], names: dict[str, str]) -> None:
    """Put service errors (``answers.nodes``) on the form's fields (``q_1``); others go to the top."""
    for key, message in errors.items():
        field = form._fields.get(names.get(key, key))
        if field is not None:
            field.errors = [*list(field.errors), message]
        else:
            form.form_errors.append(message)


def application_page(
    application_id: int,
    *,
    forms: dict[str, FlaskForm] | None = None,
    error: DomainError | None = None,
    status: int = 200,
):
    """The application's page with the forms of the steps its state allows (those given keep what was typed)."""
    db, me = get_db(), actor()
    page = queries.application_page(db, me, application_id)
    application, requests, reply = page["application"], page["requests"], page["reply"]
    forms = dict(forms or {})
    accept_class = accept_form(award_labels(requests))
    defaults: dict[str, FlaskForm] = {
        "reply": ReplyForm(formdata=None),
        "check": CheckFailForm(formdata=None),
        "assign": AssignReviewerForm(
            formdata=None,
            kind=ReviewKind.TECHNICAL.value
            if application.state == S.TECHNICAL_ASSESSMENT
            else ReviewKind.SCIENTIFIC.value,
        ),
        "accept": accept_class(
            formdata=None,
            data={f"award_{res.id}": hours_text(r.requested, res.kind) for r, res in requests},
        ),
        "reject": RejectForm(formdata=None),
    }
    if reply is not None and "reply" not in forms:
        defaults["reply"] = ReplyForm(formdata=None, data={"reply": reply.text})
    for name, form in defaults.items():
        forms.setdefault(name, form)
    undecided = application.state not in (S.DRAFT, S.ACCEPTED, S.REJECTED, S.WITHDRAWN)
    report_warnings = (
        outputs.report_warnings(
            db, page["project"], page["call"], today=utcnow().date(), exclude_application_id=application.id
        )
        if page["is_manager"] and undecided
        else []
    )
    return (
        render_template(
            "grants/application.html",
            **page,
            forms=forms,
            action_form=ActionForm(),
            error=error,
            report_warnings=report_warnings,
        ),
        status,
    )
