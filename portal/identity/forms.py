from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, SelectMultipleField, StringField, widgets
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, NumberRange

from portal.forms import reason_field
from portal.identity.models import ApiScope, FactoryRole


class TokenForm(FlaskForm):
    name = StringField("Name", validators=[InputRequired(), Length(max=100)])
    scopes = SelectMultipleField(
        "Scopes",
        choices=[
            SelectChoice(ApiScope.READ.value, "read: see your projects"),
            SelectChoice(ApiScope.WRITE.value, "write: change them"),
            SelectChoice(ApiScope.REPORTS_READ.value, "reports:read: the operators' dashboards (staff only)"),
        ],
        default=[ApiScope.READ.value],
        option_widget=widgets.CheckboxInput(),
        widget=widgets.ListWidget(prefix_label=False),
    )
    ttl_days = IntegerField("Valid for (days)", default=90, validators=[InputRequired(), NumberRange(1, 366)])


class GrantRoleForm(FlaskForm):
    role = SelectField("Role", choices=[SelectChoice(r.value, r.value.replace("_", " ")) for r in FactoryRole])
    reason = reason_field()
