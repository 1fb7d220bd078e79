"""The audit log's search form (a GET form: it changes nothing, so it carries no CSRF token)."""

from __future__ import annotations

from flask_babel import lazy_gettext as _
from flask_babel import lazy_pgettext as pgettext
from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, NumberRange, Optional

from portal.audit.models import OBJECT_TYPES, AuditAction
from portal.audit.services import MAX_ID, AuditFilters
from portal.forms import stripped

#: What the page calls each action and each kind of object, in the reader's language (the events' summaries, the
#: CSV and the CLI stay English).
ACTIONS = {
    AuditAction.ROLE_GRANTED: _("Role granted"),
    AuditAction.ROLE_REVOKED: _("Role revoked"),
    AuditAction.USER_DEACTIVATED: _("User deactivated"),
    AuditAction.USER_ERASED: _("User erased"),
    AuditAction.AGENT_TOKEN_CREATED: _("Agent token created"),
    AuditAction.ORGANISATION_VERIFIED: _("Organisation verified"),
    AuditAction.OPERATOR_SITE_ASSIGNED: _("Operator site assigned"),
    AuditAction.SITE_CREATED: _("Site created"),
    AuditAction.SITE_UPDATED: _("Site updated"),
    AuditAction.RESOURCE_CREATED: _("Resource created"),
    AuditAction.CAPACITY_CHANGED: _("Capacity changed"),
    AuditAction.OVERBOOKING_CHANGED: _("Overbooking changed"),
    AuditAction.ALLOCATION_OPENED: _("Allocation opened"),
    AuditAction.ALLOCATION_ADJUSTED: _("Allocation adjusted"),
    AuditAction.ALLOCATION_SUSPENDED: _("Allocation suspended"),
    AuditAction.ALLOCATION_RESUMED: _("Allocation resumed"),
    AuditAction.SLURM_ACCOUNT_MAPPED: _("Slurm account mapped"),
    AuditAction.SLURM_USER_SET: _("Slurm user set"),
    AuditAction.CALL_CREATED: _("Call created"),
    AuditAction.CALL_STATE_CHANGED: _("Call state changed"),
    AuditAction.APPLICATION_ACCEPTED: _("Application accepted"),
    AuditAction.APPLICATION_REJECTED: _("Application rejected"),
    AuditAction.TRANCHE_RELEASED: _("Tranche released"),
    AuditAction.OFFERING_CREATED: _("Offering created"),
    AuditAction.OFFERING_UPDATED: _("Offering updated"),
    AuditAction.OFFERING_STATE_CHANGED: _("Offering state changed"),
    AuditAction.PRICE_CHANGED: _("Price changed"),
    AuditAction.REFUND_ISSUED: _("Refund issued"),
}
OBJECTS = {
    "allocations": pgettext("audited object", "allocations"),
    "api_tokens": pgettext("audited object", "api tokens"),
    "applications": pgettext("audited object", "applications"),
    "awards": pgettext("audited object", "awards"),
    "calls": pgettext("audited object", "calls"),
    "capacity_periods": pgettext("audited object", "capacity periods"),
    "offerings": pgettext("audited object", "offerings"),
    "orders": pgettext("audited object", "orders"),
    "organisations": pgettext("audited object", "organisations"),
    "resources": pgettext("audited object", "resources"),
    "sites": pgettext("audited object", "sites"),
    "slurm_accounts": pgettext("audited object", "slurm accounts"),
    "slurm_users": pgettext("audited object", "slurm users"),
    "users": pgettext("audited object", "users"),
}


class AuditSearchForm(FlaskForm):
    class Meta:
        csrf = False

    actor = StringField(_("Who (name, e-mail, cli, system, stripe)"), validators=[Optional(), Length(max=200)])
    action = SelectField(
        _("Action"),
        choices=[SelectChoice("", _("any")), *(SelectChoice(a.value, label) for a, label in ACTIONS.items())],
        validators=[Optional()],
        filters=[stripped],
    )
    object_type = SelectField(
        _("Object"),
        choices=[SelectChoice("", _("any")), *(SelectChoice(t, OBJECTS[t]) for t in OBJECT_TYPES)],
        validators=[Optional()],
        filters=[stripped],
    )
    object_id = IntegerField(_("Object id"), validators=[Optional(), NumberRange(min=1, max=MAX_ID)])
    since = DateField(_("From (UTC)"), validators=[Optional()])
    until = DateField(_("To (UTC)"), validators=[Optional()])
    q = StringField(_("Words in the summary or reason"), validators=[Optional(), Length(max=200)])

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
