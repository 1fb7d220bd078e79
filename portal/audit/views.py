"""``/admin/audit``: the audit log for admins, searchable, paginated, and exported as CSV."""

from __future__ import annotations

from flask import Blueprint, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import login_required

from portal.audit import services
from portal.audit.forms import ACTIONS, OBJECTS, AuditSearchForm
from portal.audit.models import AuditAction
from portal.authz import Action, require
from portal.db import get_db
from portal.errors import InvalidInput
from portal.web import actor, csv_response

bp = Blueprint("audit", __name__)


@bp.app_template_filter("audit_action")
def audit_action_label(action: str) -> str:
    """An audited action as the page names it, in the reader's language."""
    return str(ACTIONS[AuditAction(action)])


@bp.app_template_filter("audited_object")
def audited_object_label(object_type: str) -> str:
    """The kind of object an action acted on (``object_type``), in the reader's language."""
    return str(OBJECTS.get(object_type, object_type.replace("_", " ")))


def _search_arguments() -> dict[str, str]:
    """The request's filters, without the page cursor: for the next page's and the CSV's links."""
    return {k: v for k, v in request.args.items() if k != "before" and v}


def _search_form() -> AuditSearchForm:
    """The request's search, read only for admins: nobody else learns even whether a search is valid."""
    require(get_db(), actor(), Action.VIEW_AUDIT)
    return AuditSearchForm(formdata=request.args)


@bp.get("/admin/audit")
@login_required
def log():
    db, me, form = get_db(), actor(), _search_form()
    if not form.validate():
        return render_template("audit/log.html", form=form, page=None, next_url=None, csv_url=None), 422
    page = services.search(db, me, form.filters(), before=request.args.get("before", type=int))
    arguments = _search_arguments()
    next_url = url_for("audit.log", **arguments, before=page.next_before) if page.next_before else None
    return render_template(
        "audit/log.html", form=form, page=page, next_url=next_url, csv_url=url_for("audit.export", **arguments)
    )


@bp.get("/admin/audit.csv")
@login_required
def export():
    form = _search_form()
    if not form.validate():
        raise InvalidInput(_("The search is not valid."), errors={k: " ".join(v) for k, v in form.errors.items()})
    rows = services.export_rows(get_db(), actor(), form.filters())
    return csv_response("audit-log.csv", services.CSV_COLUMNS, rows)
