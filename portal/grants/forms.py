"""Forms of the calls, the application editor, the review pipeline and call creation.

The draft editor and the review form depend on the call (its questions, resources and criteria), so they
are built per call by ``draft_form`` and ``review_form``. Field checks stay in the services: the forms only
carry the values (and the CSRF token), so that a service's message shows next to its field.
"""

from __future__ import annotations

from typing import Any

# lazy: labels are made at import and shown in each request's language; pybabel's default keywords find `_`
from flask_babel import lazy_gettext as _
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
from portal.grants.models import AccessMode, Call, OutputKind, ReviewKind, ReviewMode
from portal.ledger.models import Resource, Site
from portal.projects.models import OrganisationKind

#: Questions whose answers may be longer than this get a text area.
LONG_TEXT = 300

REVIEW_MODE_LABELS = {
    ReviewMode.AUTOMATIC: _("Automatic: awarded once the eligibility check passes"),
    ReviewMode.TECHNICAL: _("Technical assessment, then the call manager decides"),
    ReviewMode.PEER_REVIEW: _("Technical assessment, scientific peer review, right to reply, ranking"),
}

#: The kinds of organisation as the call form offers them (``OrganisationKind.label`` stays English for the CLI).
ORGANISATION_KIND_LABELS = {
    OrganisationKind.UNIVERSITY: _("University or research institute"),
    OrganisationKind.PUBLIC_BODY: _("Public body"),
    OrganisationKind.SME: _("SME or startup"),
    OrganisationKind.LARGE_COMPANY: _("Large company"),
}

#: The kinds of research output as the output form offers them.
OUTPUT_KIND_LABELS = {
    OutputKind.PUBLICATION: _("Publication"),
    OutputKind.DATASET: _("Dataset"),
    OutputKind.SOFTWARE: _("Software"),
}


def at_most(limit: int) -> Length:
    """A text's length limit, with its message in the page's language."""
    return Length(max=limit, message=_("At most %(max)d characters."))


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
    project_id = SelectField(_("Project"), coerce=int)
    title = StringField(
        _("Title of the application"),
        validators=[InputRequired(_("Give the application a title.")), at_most(200)],
    )


class DraftBase(FlaskForm):
    title = StringField(_("Title"), validators=[at_most(200)])
    abstract = TextAreaField(_("Abstract"), validators=[at_most(5000)])
    co_applicants = TextAreaField(_("Co-applicants' e-mail addresses"), validators=[at_most(5000)])
    #: The resources the applicant asks for (``draft_form`` gives the choices): only their rows are shown.
    sites: SelectMultipleField


def draft_form(call: Call, resources: list[tuple[Resource, Site]]) -> type[DraftBase]:
    """The editor's form class for ``call``: one field per typed question (PDFs are uploaded apart), the
    resources to pick from, and hours plus a justification per resource of the call."""
    fields: dict[str, Any] = {}
    for i, question in enumerate(call.questions):
        label = question["label"] if question.get("required") else _("%(label)s (optional)", label=question["label"])
        kind = question["type"]
        if kind == "text":
            limit = int(question.get("max_length", 5000))
            cls = TextAreaField if limit > LONG_TEXT else StringField
            fields[question_field_name(i)] = cls(label, render_kw={"maxlength": limit})
        elif kind == "number":
            fields[question_field_name(i)] = StringField(label, render_kw={"inputmode": "numeric"})
        elif kind == "choice":
            choices = [SelectChoice("", _("Choose…")), *(SelectChoice(c, c) for c in question["choices"])]
            fields[question_field_name(i)] = SelectField(label, choices=choices, validate_choice=False)
    fields["sites"] = SelectMultipleField(
        _("Sites and resources you need"),
        choices=[
            SelectChoice(resource.id, _("%(site)s: %(resource)s", site=site.name, resource=resource.name))
            for resource, site in resources
        ],
        coerce=int,
        validate_choice=False,
        widget=widgets.ListWidget(prefix_label=False),
        option_widget=widgets.CheckboxInput(),
    )
    for resource, site in resources:
        fields[hours_field_name(resource.id)] = StringField(
            _("%(resource)s, %(site)s", resource=resource.name, site=site.name), render_kw={"inputmode": "decimal"}
        )
        fields[justification_field_name(resource.id)] = TextAreaField(
            _("Why %(resource)s at %(site)s", resource=resource.name, site=site.name), validators=[at_most(5000)]
        )
    return type("DraftForm", (DraftBase,), fields)


class UploadForm(FlaskForm):
    question = HiddenField(validators=[InputRequired()])
    file = FileField(_("PDF file"))


class ReplyForm(FlaskForm):
    reply = TextAreaField(
        _("Your reply to the reviews"),
        validators=[InputRequired(_("Write your reply to the reviews.")), at_most(10_000)],
    )


# --- the call manager's steps ----------------------------------------------------------------------------


# Several of these forms share the application's page: their fields have names of their own.


class CheckFailForm(FlaskForm):
    """Failing the administrative check: the applicant reads the reasons."""

    fail_reason = TextAreaField(
        _("Why the check fails (the applicant reads this)"),
        validators=[InputRequired(_("Say why the check fails.")), at_most(5000)],
    )


class RejectForm(FlaskForm):
    reject_reason = TextAreaField(
        _("Reasons for the applicant"), validators=[InputRequired(_("Give the applicant the reasons.")), at_most(5000)]
    )


class AssignReviewerForm(FlaskForm):
    email = EmailField(
        _("Reviewer's e-mail address"),
        validators=[InputRequired(_("Enter the reviewer's e-mail address.")), at_most(320)],
    )
    kind = SelectField(
        _("Kind of review"),
        choices=[
            SelectChoice(ReviewKind.TECHNICAL.value, _("Technical assessment (site operator)")),
            SelectChoice(ReviewKind.SCIENTIFIC.value, _("Scientific review (reviewer)")),
        ],
    )
    due_on = DateField(_("Due on"), validators=[Optional()])


class AcceptBase(FlaskForm):
    first_tranche_percent = IntegerField(
        _("First tranche (% of the award, the rest after the progress report)"),
        default=100,
        validators=[
            InputRequired(_("Enter the first tranche in per cent.")),
            NumberRange(1, 100, message=_("Enter a number between %(min)s and %(max)s.")),
        ],
    )
    accept_reason = TextAreaField(_("Message to the applicant (optional)"), validators=[at_most(5000)])


def accept_form(requests: list[tuple[int, str]]) -> type[AcceptBase]:
    """``requests``: (resource id, label) of each resource the application asks for."""
    fields = {f"award_{rid}": StringField(label, render_kw={"inputmode": "decimal"}) for rid, label in requests}
    return type("AcceptForm", (AcceptBase,), fields)


# --- reviews ---------------------------------------------------------------------------------------------


class ReviewBase(FlaskForm):
    comment_to_applicant = TextAreaField(
        _("Comment to the applicant (shown without your name)"), validators=[at_most(10_000)]
    )


def review_form(call: Call, kind: ReviewKind) -> type[ReviewBase]:
    fields: dict[str, Any] = {}
    if kind == ReviewKind.TECHNICAL:
        fields["feasible"] = RadioField(
            _("Can the work run as planned on the requested resources?"),
            choices=[SelectChoice("yes", _("Yes, feasible")), SelectChoice("no", _("No, not feasible"))],
            validate_choice=False,
        )
    else:
        for i, criterion in enumerate(call.criteria):
            fields[score_field_name(i)] = RadioField(
                _("%(criterion)s (weight %(weight)s %%)", criterion=criterion["label"], weight=criterion["weight"]),
                choices=[SelectChoice(str(n), str(n)) for n in range(1, 6)],
                validate_choice=False,
            )
        fields["comment_to_panel"] = TextAreaField(
            _("Private comment to the panel (the applicant does not see it)"), validators=[at_most(10_000)]
        )
    return type("ReviewForm", (ReviewBase,), fields)


class ConflictForm(FlaskForm):
    conflict_reason = TextAreaField(
        _("What is the conflict?"), validators=[InputRequired(_("Say what the conflict is.")), at_most(1000)]
    )


# --- creating calls ---------------------------------------------------------------------------------------


class MultiCheckboxField(SelectMultipleField):
    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


class BudgetRow(Form):
    resource_id = SelectField(_("Resource"), coerce=int, validate_choice=False)
    hours = StringField(_("Hours (TB-months for storage)"), render_kw={"inputmode": "decimal"})


class CallForm(FlaskForm):
    title = StringField(_("Title"), validators=[InputRequired(_("Give the call a title.")), at_most(200)])
    description = TextAreaField(_("Description"), validators=[at_most(20_000)])
    access_mode = SelectField(_("Access mode"), choices=[SelectChoice(m.value, m.label) for m in AccessMode])
    review_mode = SelectField(_("Review"), choices=[SelectChoice(m.value, REVIEW_MODE_LABELS[m]) for m in ReviewMode])
    manager_email = EmailField(
        _("Call manager's e-mail address"),
        validators=[InputRequired(_("Enter the call manager's e-mail address.")), at_most(320)],
    )
    eligible_kinds = MultiCheckboxField(
        _("Who may apply"), choices=[SelectChoice(k.value, ORGANISATION_KIND_LABELS[k]) for k in OrganisationKind]
    )
    eligible_countries = StringField(_("Countries (ISO codes, comma-separated; empty for any)"))
    min_request = StringField(_("Smallest request (hours)"), default="0")
    max_request = StringField(_("Largest request (hours)"), validators=[InputRequired(_("Enter the largest request."))])
    duration_months = SelectField(
        _("Allocations run"),
        coerce=int,
        choices=[SelectChoice(3, _("3 months")), SelectChoice(6, _("6 months")), SelectChoice(12, _("12 months"))],
        default=6,
    )
    opens_on = DateField(_("Opens on"), validators=[InputRequired(_("Enter the day the call opens."))])
    closes_on = DateField(_("Closes on"), validators=[InputRequired(_("Enter the day the call closes."))])
    first_cutoff = DateField(_("First cut-off"), validators=[InputRequired(_("Enter the day of the first cut-off."))])
    cutoff_every_days = IntegerField(
        _("Then a cut-off every … days (empty: one cut-off)"),
        validators=[Optional(), NumberRange(1, 366, message=_("Enter a number between %(min)s and %(max)s."))],
    )
    decision_within_working_days = IntegerField(
        _("Decision within … working days of a cut-off (optional)"),
        validators=[Optional(), NumberRange(1, 250, message=_("Enter a number between %(min)s and %(max)s."))],
    )
    budgets = FieldList(FormField(BudgetRow), min_entries=3, max_entries=12)
    questions = TextAreaField(_("Questions (JSON)"), default="[]")
    criteria = TextAreaField(_("Review criteria (JSON)"), default="[]")
    reason = reason_field(_("Why? (kept in the audit log)"))


class CallStateForm(FlaskForm):
    state = HiddenField(validators=[InputRequired()])
    reason = reason_field(_("Why? (kept in the audit log)"))


# --- research outputs and award reports ------------------------------------------------------------------------


class OutputForm(FlaskForm):
    """A publication, data set or software of a project; ``grants.outputs.add_output`` checks every field."""

    kind = SelectField(
        _("Kind"),
        choices=[SelectChoice(k.value, OUTPUT_KIND_LABELS[k]) for k in OutputKind],
        validate_choice=False,
        id="output-kind",
    )
    citation = TextAreaField(
        _("Citation"),
        description=_("As it should be cited: authors, title, journal or repository, year."),
        render_kw={"maxlength": 2000, "rows": 3},
        id="output-citation",
    )
    doi = StringField(
        _("DOI (optional)"),
        description=_("Like 10.5281/zenodo.1234567; a https://doi.org/ link works too."),
        id="output-doi",
    )
    url = StringField(_("Link (optional)"), render_kw={"type": "url", "maxlength": 500}, id="output-url")
    year = StringField(_("Year"), render_kw={"inputmode": "numeric", "maxlength": 4}, id="output-year")


class ProgressReportForm(FlaskForm):
    text = TextAreaField(
        _("Report"),
        description=_("What the hours were used for, what came of them, and what is next."),
        render_kw={"maxlength": 20_000, "rows": 12},
    )
