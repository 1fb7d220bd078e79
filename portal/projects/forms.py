from __future__ import annotations

from flask_babel import get_locale, pgettext
from flask_babel import lazy_gettext as _
from flask_wtf import FlaskForm
from wtforms import EmailField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length

from portal.projects.models import OrganisationKind, OrganisationRole, ProjectRole
from portal.projects.services import countries

#: What the pages call each kind and role, in the reader's language (the models' English ``label`` is for
#: e-mails, the CLI and the audit log).
ORGANISATION_KINDS = {
    OrganisationKind.UNIVERSITY: _("University or research institute"),
    OrganisationKind.PUBLIC_BODY: _("Public body"),
    OrganisationKind.SME: _("SME or startup"),
    OrganisationKind.LARGE_COMPANY: _("Large company"),
}
PROJECT_ROLES = {
    ProjectRole.PI: _("Principal investigator"),
    ProjectRole.MANAGER: _("Manager"),
    ProjectRole.MEMBER: _("Member"),
}
ORGANISATION_ROLES = {
    OrganisationRole.ADMIN: _("Administrator"),
    OrganisationRole.BILLING: _("Billing"),
    OrganisationRole.MEMBER: _("Member"),
}


def country_choices() -> list[SelectChoice]:
    """The countries, named and sorted in the reader's language."""
    names = get_locale().territories
    named = sorted(((code, names.get(code, english)) for code, english in countries().items()), key=lambda c: c[1])
    return [SelectChoice("", pgettext("a country", "Choose…")), *(SelectChoice(c, n) for c, n in named)]


class OrganisationForm(FlaskForm):
    name = StringField(_("Name"), validators=[InputRequired(), Length(max=200)])
    kind = SelectField(_("Kind"), choices=[SelectChoice(k.value, label) for k, label in ORGANISATION_KINDS.items()])
    country = SelectField(_("Country"))
    registry_id = StringField(_("Registry number"), validators=[Length(max=64)])
    vat_number = StringField(_("EU VAT number"), validators=[Length(max=32)])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.country.choices = country_choices()


class ProjectForm(FlaskForm):
    title = StringField(_("Title"), validators=[InputRequired(), Length(max=200)])
    description = TextAreaField(_("Description"), validators=[Length(max=5000)])


class InviteForm(FlaskForm):
    email = EmailField(_("E-mail address"), validators=[InputRequired(), Length(max=320)])
    role = SelectField(
        _("Role"),
        choices=[SelectChoice(r.value, label) for r, label in PROJECT_ROLES.items() if r != ProjectRole.PI],
        default="member",
    )


class MemberRoleForm(FlaskForm):
    role = SelectField(_("Role"), choices=[SelectChoice(r.value, label) for r, label in PROJECT_ROLES.items()])
