from __future__ import annotations

from flask_babel import lazy_gettext as _
from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, SelectMultipleField, StringField, widgets
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, NumberRange

from portal.forms import reason_field
from portal.identity.models import ApiScope, FactoryRole

#: What the pages call each factory role, in the reader's language.
FACTORY_ROLES = {
    FactoryRole.ADMIN: _("admin"),
    FactoryRole.FINANCE: _("finance"),
    FactoryRole.SITE_OPERATOR: _("site operator"),
    FactoryRole.REVIEWER: _("reviewer"),
}


class TokenForm(FlaskForm):
    name = StringField(_("Name"), validators=[InputRequired(), Length(max=100)])
    scopes = SelectMultipleField(
        _("Scopes"),
        choices=[
            SelectChoice(ApiScope.READ.value, _("%(scope)s: see your projects", scope="read")),
            SelectChoice(ApiScope.WRITE.value, _("%(scope)s: change them", scope="write")),
            SelectChoice(
                ApiScope.REPORTS_READ.value,
                _("%(scope)s: the operators' dashboards (staff only)", scope="reports:read"),
            ),
            SelectChoice(
                ApiScope.OPERATE.value,
                _("%(scope)s: sites, resources, capacity and allocations (admins, site operators)", scope="operate"),
            ),
            SelectChoice(ApiScope.ADMIN.value, _("%(scope)s: users' factory roles (admins only)", scope="admin")),
        ],
        default=[ApiScope.READ.value],
        option_widget=widgets.CheckboxInput(),
        widget=widgets.ListWidget(prefix_label=False),
    )
    ttl_days = IntegerField(_("Valid for (days)"), default=90, validators=[InputRequired(), NumberRange(1, 366)])


class GrantRoleForm(FlaskForm):
    role = SelectField(_("Role"), choices=[SelectChoice(r.value, label) for r, label in FACTORY_ROLES.items()])
    reason = reason_field()
