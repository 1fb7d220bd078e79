"""The audit log's search form (a GET form: it changes nothing, so it carries no CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, NumberRange, Optional

from portal.audit.models import OBJECT_TYPES, AuditAction
from portal.audit.services import MAX_ID, AuditFilters
from portal.forms import stripped


class AuditSearchForm(FlaskForm):
    class Meta:
        csrf = False

    actor = StringField("Who (name, e-mail, cli, system, stripe)", validators=[Optional(), Length(max=200)])
    action = SelectField(
        "Action",
        choices=[SelectChoice("", "any")] + [SelectChoice(a.value, a.label) for a in AuditAction],
        validators=[Optional()],
        filters=[stripped],
    )
    object_type = SelectField(
        "Object",
        choices=[SelectChoice("", "any")] + [SelectChoice(t, t.replace("_", " ")) for t in OBJECT_TYPES],
        validators=[Optional()],
        filters=[stripped],
    )
    object_id = IntegerField("Object id", validators=[Optional(), NumberRange(min=1, max=MAX_ID)])
    since = DateField("From (UTC)", validators=[Optional()])
    until = DateField("To (UTC)", validators=[Optional()])
    q = StringField("Words in the summary or reason", validators=[Optional(), Length(max=200)])

    def filters(self) -> AuditFilters:
        return AuditFilters(
            actor=self.actor.data or "",
            action=AuditAction(self.action.data) if self.action.data else None,
            object_type=self.object_type.data or "",
            object_id=self.object_id.data,
            since=self.since.data,
            until=self.until.data,
            text=self.q.data or "",
        )
