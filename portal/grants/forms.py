"""Forms of the calls, the application editor, the review pipeline and call creation.

The draft editor and the review form depend on the call (its questions, resources and criteria), so they
are built per call by ``draft_form`` and ``review_form``. Field checks stay in the services: the forms only
carry the values (and the CSRF token), so that a service's message shows next to its field.
"""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    DateField,
    EmailField,
    FieldList,
    Form,
    FormField,
    HiddenField,
    IntegerField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
    widgets,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, NumberRange, Optional

from portal.forms import reason_field
from portal.grants.models import AccessMode, Call, ReviewKind, ReviewMode
from portal.ledger.models import Resource, Site
from portal.projects.models import OrganisationKind

#: Questions whose answers may be longer than this get a text area.
LONG_TEXT = 300

REVIEW_MODE_LABELS = {
    ReviewMode.AUTOMATIC: "Automatic: awarded once the eligibility check passes",
    ReviewMode.TECHNICAL: "Technical assessment, then the call manager decides",
    ReviewMode.PEER_REVIEW: "Technical assessment, scientific peer review, right to reply, ranking",
}


def question_field_name(index: int) -> str:
    return f"q_{index}"


def hours_field_name(resource_id: int) -> str:
    return f"hours_{resource_id}"


def justification_field_name(resource_id: int) -> str:
    return f"justification_{resource_id}"


def score_field_name(index: int) -> str:
    return f"score_{index}"


# --- applying -------------------------------------------------------------------------------------------


class ApplyForm(FlaskForm):
    project_id = SelectField("Project", coerce=int)
    title = StringField("Title of the application", validators=[InputRequired(), Length(max=200)])


class DraftBase(FlaskForm):
    title = StringField("Title", validators=[Length(max=200)])
    abstract = TextAreaField("Abstract", validators=[Length(max=5000)])
    co_applicants = TextAreaField("Co-applicants' e-mail addresses", validators=[Length(max=5000)])


def draft_form(call: Call, resources: list[tuple[Resource, Site]]) -> type[DraftBase]:
    """The editor's form class for ``call``: one field per typed question (PDFs are uploaded apart) and
    hours plus a justification per resource of the call."""
    fields: dict[str, Any] = {}
    for i, question in enumerate(call.questions):
        label = question["label"] + ("" if question.get("required") else " (optional)")
        kind = question["type"]
        if kind == "text":
            limit = int(question.get("max_length", 5000))
            cls = TextAreaField if limit > LONG_TEXT else StringField
            fields[question_field_name(i)] = cls(label, render_kw={"maxlength": limit})
        elif kind == "number":
            fields[question_field_name(i)] = StringField(label, render_kw={"inputmode": "numeric"})
        elif kind == "choice":
            choices = [SelectChoice("", "Choose…"), *(SelectChoice(c, c) for c in question["choices"])]
            fields[question_field_name(i)] = SelectField(label, choices=choices, validate_choice=False)
    for resource, site in resources:
        fields[hours_field_name(resource.id)] = StringField(  # type: ignore[arg-type]
            f"{resource.name}, {site.name}", render_kw={"inputmode": "decimal"}
        )
        fields[justification_field_name(resource.id)] = TextAreaField(  # type: ignore[arg-type]
            f"Why {resource.name} at {site.name}", validators=[Length(max=5000)]
        )
    return type("DraftForm", (DraftBase,), fields)


class UploadForm(FlaskForm):
    question = HiddenField(validators=[InputRequired()])
    file = FileField("PDF file")


class ReplyForm(FlaskForm):
    reply = TextAreaField("Your reply to the reviews", validators=[InputRequired(), Length(max=10_000)])


# --- the call manager's steps ----------------------------------------------------------------------------


# Several of these forms share the application's page: their fields have names of their own.


class CheckFailForm(FlaskForm):
    """Failing the administrative check: the applicant reads the reasons."""

    fail_reason = TextAreaField(
        "Why the check fails (the applicant reads this)", validators=[InputRequired(), Length(max=5000)]
    )


class RejectForm(FlaskForm):
    reject_reason = TextAreaField("Reasons for the applicant", validators=[InputRequired(), Length(max=5000)])


class AssignReviewerForm(FlaskForm):
    email = EmailField("Reviewer's e-mail address", validators=[InputRequired(), Length(max=320)])
    kind = SelectField(
        "Kind of review",
        choices=[
            SelectChoice(ReviewKind.TECHNICAL.value, "Technical assessment (site operator)"),
            SelectChoice(ReviewKind.SCIENTIFIC.value, "Scientific review (reviewer)"),
        ],
    )
    due_on = DateField("Due on", validators=[Optional()])


class AcceptBase(FlaskForm):
    first_tranche_percent = IntegerField(
        "First tranche (% of the award, the rest after the progress report)",
        default=100,
        validators=[InputRequired(), NumberRange(1, 100)],
    )
    accept_reason = TextAreaField("Message to the applicant (optional)", validators=[Length(max=5000)])


def accept_form(requests: list[tuple[int, str]]) -> type[AcceptBase]:
    """``requests``: (resource id, label) of each resource the application asks for."""
    fields = {f"award_{rid}": StringField(label, render_kw={"inputmode": "decimal"}) for rid, label in requests}
    return type("AcceptForm", (AcceptBase,), fields)


# --- reviews ---------------------------------------------------------------------------------------------


class ReviewBase(FlaskForm):
    comment_to_applicant = TextAreaField(
        "Comment to the applicant (shown without your name)", validators=[Length(max=10_000)]
    )


def review_form(call: Call, kind: ReviewKind) -> type[ReviewBase]:
    fields: dict[str, Any] = {}
    if kind == ReviewKind.TECHNICAL:
        fields["feasible"] = RadioField(
            "Can the work run as planned on the requested resources?",
            choices=[SelectChoice("yes", "Yes, feasible"), SelectChoice("no", "No, not feasible")],
            validate_choice=False,
        )
    else:
        for i, criterion in enumerate(call.criteria):
            fields[score_field_name(i)] = RadioField(
                f"{criterion['label']} (weight {criterion['weight']} %)",
                choices=[SelectChoice(str(n), str(n)) for n in range(1, 6)],
                validate_choice=False,
            )
        fields["comment_to_panel"] = TextAreaField(
            "Private comment to the panel (the applicant does not see it)", validators=[Length(max=10_000)]
        )
    return type("ReviewForm", (ReviewBase,), fields)


class ConflictForm(FlaskForm):
    conflict_reason = TextAreaField("What is the conflict?", validators=[InputRequired(), Length(max=1000)])


# --- creating calls ---------------------------------------------------------------------------------------


class MultiCheckboxField(SelectMultipleField):
    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


class BudgetRow(Form):
    resource_id = SelectField("Resource", coerce=int, validate_choice=False)
    hours = StringField("Hours (TB-months for storage)", render_kw={"inputmode": "decimal"})


class CallForm(FlaskForm):
    title = StringField("Title", validators=[InputRequired(), Length(max=200)])
    description = TextAreaField("Description", validators=[Length(max=20_000)])
    access_mode = SelectField("Access mode", choices=[SelectChoice(m.value, m.label) for m in AccessMode])
    review_mode = SelectField("Review", choices=[SelectChoice(m.value, REVIEW_MODE_LABELS[m]) for m in ReviewMode])
    manager_email = EmailField("Call manager's e-mail address", validators=[InputRequired(), Length(max=320)])
    eligible_kinds = MultiCheckboxField(
        "Who may apply", choices=[SelectChoice(k.value, k.label) for k in OrganisationKind]
    )
    eligible_countries = StringField("Countries (ISO codes, comma-separated; empty for any)")
    min_request = StringField("Smallest request (hours)", default="0")
    max_request = StringField("Largest request (hours)", validators=[InputRequired()])
    duration_months = SelectField(
        "Allocations run", coerce=int, choices=[SelectChoice(n, f"{n} months") for n in (3, 6, 12)], default=6
    )
    opens_on = DateField("Opens on", validators=[InputRequired()])
    closes_on = DateField("Closes on", validators=[InputRequired()])
    first_cutoff = DateField("First cut-off", validators=[InputRequired()])
    cutoff_every_days = IntegerField(
        "Then a cut-off every … days (empty: one cut-off)", validators=[Optional(), NumberRange(1, 366)]
    )
    decision_within_working_days = IntegerField(
        "Decision within … working days of a cut-off (optional)", validators=[Optional(), NumberRange(1, 250)]
    )
    budgets = FieldList(FormField(BudgetRow), min_entries=3, max_entries=12)
    questions = TextAreaField("Questions (JSON)", default="[]")
    criteria = TextAreaField("Review criteria (JSON)", default="[]")
    reason = reason_field()


class CallStateForm(FlaskForm):
    state = HiddenField(validators=[InputRequired()])
    reason = reason_field()
